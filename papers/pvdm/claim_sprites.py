"""PVDM claim check on the Sprites world (``experiments/pvdm/sprites_claim.yaml``), scored by the closed-form judge.

Why a second world: on MovingDigits (``claim.py``) the efficiency claim reproduced but "comparable quality" hung on
FVD_judge of a judge that read digit identity poorly, with a large seed spread (1.40, 1.01). On Sprites
(`shared.data.sprite_worlds`) a clip is one sprite of four colour/shape identities in straight-line motion — content
(the xy plane) and motion (the yt / xt planes) separate as PVDM's triplanes assume — and the judge
(`shared.metrics.sprite_judge`) reads each clip's validity, identity and motion exactly.

Per seed, in this process on one thread (``claim.py``'s protocol, the judge swapped): (1) the triplane autoencoder
(``claim.ae_steps``) and the judge's scores of its reconstructions of real test clips (``ae_rec_*``: the latent keeps
identity and motion — the floor the diffusion model builds on; ``claim.stop_after: autoencoder`` ends here, the
protocol run); (2) PVDM (2D U-Net over the triplane canvas) and the pixel 3D U-Net for the same steps, ``num_samples``
clips each, judged; (3) training-step time and memory measured as in ``claim.py``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from papers.pvdm.claim import step_costs
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import finish, fit_variant, summarise, world_items
from shared.engine.parallel import map_jobs
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import SpriteJudge, claim_judge, separation
from shared.metrics.video import psnr
from shared.nn.unet import count_parameters


def judge_of(cfg: DictConfig) -> SpriteJudge:
    return claim_judge(cfg)


def clips(cfg: DictConfig, n: int, seed: int, split: str = "test", **kwargs) -> torch.Tensor:
    return world_items(cfg, n, seed, split, world=Sprites, **kwargs)


def seed_job(cfg_dict: dict, seed: int) -> dict:
    torch.set_num_threads(1)
    cfg = OmegaConf.create(cfg_dict)
    c = cfg.claim
    judge = judge_of(cfg)
    real = clips(cfg, int(c.num_samples), int(c.real_seed))
    run_dir, out, samples = Path(cfg.run_dir), {}, {}
    n_steps = int(cfg.trainer.max_steps)
    for key in ("autoencoder_module", "pixel_module"):
        resolved = OmegaConf.to_container(cfg[key], resolve=True)
        resolved["seed"] = int(seed)
        OmegaConf.update(cfg, key, resolved, merge=False)
    ae_tag = f"autoencoder_seed{seed}"
    ae = fit_variant(cfg, ae_tag, {"module": cfg.autoencoder_module, "trainer.max_steps": int(c.ae_steps)}, seed)
    with torch.no_grad():
        rec = ae.reconstruct(real).clamp(-1, 1)
    out["ae_psnr_test"] = psnr(rec, real)
    out.update({f"ae_rec_{k}": v for k, v in judge.scores(rec).items()})
    samples["ae_rec"] = rec
    if str(c.get("stop_after") or "") != "autoencoder":
        ae_ckpt = run_dir / ae_tag / "checkpoints" / "last.ckpt"
        models = {"pvdm": fit_variant(cfg, f"pvdm_seed{seed}",
                                      {"module.latent.autoencoder.weights_path": str(ae_ckpt)}, seed),
                  "pixel": fit_variant(cfg, f"pixel_seed{seed}", {"module": cfg.pixel_module}, seed)}
        for name, module in models.items():
            out[f"params_{name}"] = count_parameters(module.net)
            g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
            ts = time.time()
            x = module.sample(int(c.num_samples), sampler=dict(c.sampler), generator=g).clamp(-1, 1)
            out[f"sample_time_s_{name}"] = time.time() - ts
            out.update({f"{name}_{k}": v for k, v in judge.scores(x).items()})
            samples[name] = x
        out["params_autoencoder"] = count_parameters(ae.net)
        out["coherent_ratio_pvdm_to_pixel"] = out["pvdm_coherent"] / max(out["pixel_coherent"], 1e-6)
        batch = {"x": clips(cfg, int(cfg.data.batch_size), int(c.timing_seed), split="train")}
        out.update(step_costs(models, ae, batch, c, n_steps))
    if seed == c.seeds[0] and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        labels = [("ae_rec", "triplane autoencoder:\nreconstructions"), ("pixel", "pixel 3D U-Net\nsamples"),
                  ("pvdm", "PVDM (triplane +\n2D U-Net) samples")]
        rows = [("real test clips", real[:k])] + [(lab, samples[key][:k]) for key, lab in labels if key in samples]
        save_labelled_rows(rows, run_dir / "grid.gif", fps=4, scale=3, frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    torch.set_num_threads(1)
    judge = judge_of(cfg)
    n, T = int(c.num_samples), int(cfg.data.frames)
    real = clips(cfg, n, int(c.real_seed))
    swapped = clips(cfg, n, int(c.real_seed), identity_swap_at=T // 2)
    metrics: dict = {"separation": separation(judge, real, swapped, seed=int(c.real_seed))}
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    record = finish(cfg, metrics, paper="pvdm", claim=str(c.name), t0=t0,
                    extra={"nfe": int(c.sampler.steps), "num_samples": n,
                           "diffusion_steps": int(cfg.trainer.max_steps), "ae_steps": int(c.ae_steps),
                           "judge": "shared.metrics.sprite_judge",
                           "memory_method": "params+grads+Adam moments + autograd-saved activations "
                                            "(saved_tensors_hooks), CPU"},
                    artifacts=("*.png", "*.gif"))
    return record
