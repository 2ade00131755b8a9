"""Gen-1 claim check (issue 21) on the styled-shapes world: 8 frames at 16x16, 6 styles, known depth.

Protocol (``cfg.claim``, fixed in the committed config before the comparison was run).

0. *Judges* (committed, ``shared.metrics.shapes_judge``): the depth estimator (MiDaS's stand-in; also the structure
   encoder's estimator) and the style judge. Before any model, this run records that they separate what the claim
   compares: the depth error between two renderings of the same structure in different styles vs between different
   structures, and the style judge's accuracy on real reference renderings.
1. *Autoencoder* (the frozen first stage, like SD's VAE: trained once per run, ``autoencoder_seed``): KL, 16x16x3
   frames -> 4x8x8 latents.
2. *Gen-1* per seed (Sec. 3.2-3.3): the latent video U-Net with temporal layers, structure (estimated depth at a
   random level ``t_s`` in ``0..max_level``, concatenated) and content (content-encoder embedding of a random frame of
   the clip, cross-attention), each dropped with p = 0.1; a quarter of the clips trained as images (joint training).

Evaluation per seed, ``num_samples`` test videos as inputs, the same initial noise for every variant:

* references: each input gets a frame of *another* test structure rendered in a style other than its own
  (``ref_style``), so content and structure come from different sources ("out-of-structure content");
* ``depth_err_*``: RMSE between the judge's depth of the output and of the input (all pixels, per frame);
* ``style_acc_*``: share of output frames the judge gives the reference's style; ``input_style_acc_*``: share given
  the input's own style (structure leaking content);
* variants: ``main`` (structure at ``t_s`` = 0 + content), ``content_only`` (structure dropped), ``uncond``
  (content guidance 0: the unconditional branch), ``ts{k}`` (structure at level k), ``wt`` (temporal guidance
  ``ω_t`` = ``temporal_scale``; ``consistency_*`` = mean cosine similarity of consecutive frames), ``edit`` (DDIM
  inversion of the input under its own content, resampled with the reference's).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import finish, fit_first_stage, fit_variant, summarise, world_items
from shared.engine.video_io import save_labelled_columns
from shared.metrics.shapes_judge import (
    depth_rmse,
    estimate_depth,
    load_shapes_judge,
    shapes_judge_sha256,
    style_accuracy,
)
from shared.metrics.video import frame_consistency


def test_set(cfg: DictConfig) -> dict:
    """Inputs, references (a frame of another structure in another style) and their styles."""
    c = cfg.claim
    n = int(c.num_samples)
    x, styles, x_styles = world_items(cfg, 2 * n, int(c.real_seed), keys=("x", "style", "x_styles"),
                                      with_styles=True)
    k = x_styles.shape[1]
    inputs, in_style = x[:n], styles[:n]
    ref_style = (in_style + 1 + torch.arange(n) % (k - 1)) % k                 # never the input's own style
    ref_videos = x_styles[n:][torch.arange(n), ref_style]                      # another structure, that style
    same_structure = x_styles[:n][torch.arange(n), ref_style]                  # the input's structure, that style
    return {"inputs": inputs, "in_style": in_style, "ref_style": ref_style, "ref_videos": ref_videos,
            "refs": ref_videos[:, :, 0].contiguous(), "same_structure": same_structure}


def depth_image(depth: torch.Tensor, lo: float = 0.3, hi: float = 1.0) -> torch.Tensor:
    """(B, T, H, W) depth -> (B, 1, T, H, W) in [-1, 1], near bright (for the GIFs)."""
    return (1 - 2 * (depth - lo) / (hi - lo)).clamp(-1, 1)[:, None]


def seed_job(cfg: DictConfig, seed: int, judge, data: dict, ae_file: Path) -> tuple[dict, dict]:
    c = cfg.claim
    over = {"module.latent.autoencoder.weights_path": str(ae_file)}
    ts = time.time()
    module = fit_variant(cfg, f"gen1_seed{seed}", over, seed)
    out: dict = {"train_time_s": time.time() - ts}
    n = int(c.num_samples)
    x_T = torch.randn((n, *module.sample_shape), generator=torch.Generator().manual_seed(int(c.sample_seed) + seed))
    structure = module.conditions[str(c.structure_key)]
    base_sampler = OmegaConf.to_container(c.sampler, resolve=True)
    inputs, refs = data["inputs"], data["refs"]
    est_in = estimate_depth(inputs, judge)

    def draw(cond: dict, level: int = 0, **sampler) -> torch.Tensor:
        with structure.at_level(level):
            return module.sample(x_T=x_T.clone(), cond=cond, sampler={**base_sampler, **sampler},
                                 generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)

    ts = time.time()
    both = {str(c.structure_key): inputs, "content": refs}
    samples = {"main": draw(both), "content_only": draw({"content": refs}),
               "uncond": draw({"content": refs}, guidance_scale=0.0)}
    for k in range(1, int(c.max_level) + 1):
        samples[f"ts{k}"] = draw(both, level=k)
    samples["wt"] = draw(both, temporal_scale=float(c.temporal_scale))
    with structure.at_level(0):
        own = {str(c.structure_key): inputs, "content": inputs[:, :, 0].contiguous()}
        samples["edit"] = module.edit(inputs, own, both, sampler=base_sampler).clamp(-1, 1)
    out["sample_time_s"] = time.time() - ts
    for name, x in samples.items():
        out[f"depth_err_{name}"] = depth_rmse(estimate_depth(x, judge), est_in)
        out[f"style_acc_{name}"] = style_accuracy(x, data["ref_style"], judge)
        out[f"input_style_acc_{name}"] = style_accuracy(x, data["in_style"], judge)
        out[f"consistency_{name}"] = frame_consistency(x)
    out["depth_err_ts0"], out["style_acc_ts0"] = out["depth_err_main"], out["style_acc_main"]
    out["consistency_wt1"] = out["consistency_main"]
    out["ratio_depth_err_main_to_content_only"] = out["depth_err_main"] / out["depth_err_content_only"]
    out["ratio_depth_err_main_to_uncond"] = out["depth_err_main"] / out["depth_err_uncond"]
    return out, samples


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = load_shapes_judge(c.judge_path)
    data = test_set(cfg)
    est_in = estimate_depth(data["inputs"], judge)
    metrics: dict = {   # the judges' separations on real videos (before any model)
        "judge_depth_err_same_structure_other_style": depth_rmse(estimate_depth(data["same_structure"], judge),
                                                                 est_in),
        "judge_depth_err_other_structure": depth_rmse(estimate_depth(data["ref_videos"], judge), est_in),
        "judge_style_acc_real_references": style_accuracy(data["ref_videos"], data["ref_style"], judge),
        "judge_style_acc_real_same_structure": style_accuracy(data["same_structure"], data["ref_style"], judge),
        "consistency_real": frame_consistency(data["inputs"]),
    }
    metrics["judge_depth_separation"] = (metrics["judge_depth_err_other_structure"]
                                         / metrics["judge_depth_err_same_structure_other_style"])
    # the frozen first stage, trained once per run
    ae_file, rec, metrics["autoencoder_time_s"] = fit_first_stage(cfg, data["inputs"])
    metrics["judge_style_acc_reconstructions"] = style_accuracy(rec, data["in_style"], judge)
    metrics["judge_depth_err_reconstructions"] = depth_rmse(estimate_depth(rec, judge), est_in)
    per_seed, gifs = [], None
    for seed in c.seeds:
        res, samples = seed_job(cfg, int(seed), judge, data, ae_file)
        per_seed.append(res)
        if gifs is None:
            gifs = samples
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    k = int(c.gif_videos)
    if k > 0:
        cols = [("input", data["inputs"][:k]), ("depth", depth_image(est_in[:k])),
                ("reference", data["refs"][:k]), ("output", gifs["main"][:k]),
                ("no structure", gifs["content_only"][:k]),
                (f"t_s={int(c.max_level)}", gifs[f"ts{int(c.max_level)}"][:k]),
                ("edit", gifs["edit"][:k])]
        save_labelled_columns(cols, Path(cfg.run_dir) / "input_control_output.gif", fps=4, scale=4)
    record = finish(cfg, metrics, paper="gen1", claim=str(c.name), t0=t0, artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_samples": int(c.num_samples),
                           "judge_sha256": shapes_judge_sha256(c.judge_path)})
    return record
