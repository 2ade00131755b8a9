"""PYoCo claim check ("Preserve Your Own Correlation", Ge et al., ICCV 2023) on MovingDigits (8 frames at 16x16).

An image diffusion model is fine-tuned into a video model; PYoCo draws the training noise (and the sampling noise
``x_T``) from a prior *correlated across frames* — mixed (Eq. 4) or progressive (Eq. 5),
``shared.diffusion.noise_priors`` — instead of i.i.d. per frame, so the fine-tuning starts from the correlation
structure video frames have; the paper reports reaching a given quality in far fewer steps (Sec. 4.2, Fig. 5).

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run). Per seed:

1. the image model (``claim.image``: the shared recipe; trained, or from the teacher cache);
2. for each prior of ``claim.priors`` (``iid``, ``mixed``, ``progressive``): the image model inflated with
   zero-initialised temporal attention after every residual stage (``shared.nn.video.inflated_image_unet``), every
   weight fine-tuned on 8-frame clips with that prior's noise; training resumes from budget to budget
   (``claim.budgets``, the same run continued, exactly as an uninterrupted one) and the model is evaluated at each;
3. at every budget, ``num_videos`` videos (labels cycling through the digits, the same noise generator seed;
   ``x_T`` from the prior) scored by ``FVD_judge`` against held-out real clips, appearance consistency and the
   judge's frame-to-frame digit agreement.

"Reaches a given FVD_judge in fewer steps": the claim compares each correlated prior at the middle budget with i.i.d.
noise at the last (twice the steps) — ``fvd_<prior>_at_half <= fvd_iid_at_full`` on every seed.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import (
    finish,
    fit_variant,
    map_seeds,
    seed_job_config,
    summarise,
    variant_config,
    world_items,
)
from shared.engine.run import build
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.video_identity import video_scores
from shared.metrics.video_judge import fvd_judge, judge_sha256, load_video_judge


def train_budgets(cfg: DictConfig, prior: str, image_file: Path, seed: int):
    """Yield ``(budget, module)`` for each budget: one training run (folder ``<prior>_seed<seed>``) continued from
    budget to budget from its own ``last.ckpt`` (a resumed run stays in its own folder, ``shared.engine.run``)."""
    c = cfg.claim
    prior_cfg = OmegaConf.to_container(c.prior_configs[prior], resolve=True)
    base = {"model.weights": str(image_file), "module.noise_prior": prior_cfg}
    tag = f"{prior}_seed{seed}"
    last = Path(cfg.run_dir) / tag / "checkpoints" / "last.ckpt"
    trained = False
    for budget in (int(b) for b in c.budgets):
        if budget == 0:   # the inflated image model before any video step (temporal layers are zero at init)
            _, module = build(variant_config(cfg, base, seed))
            yield 0, module.eval()
            continue
        over = {**base, "trainer.max_steps": budget}
        if trained:
            over["ckpt_path"] = str(last)
        module = fit_variant(cfg, tag, over, seed)
        trained = last.exists()   # not under fast_dev_run (quick mode), which saves no checkpoint after a resume
        yield budget, module


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    run_dir = Path(cfg.run_dir)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    n = int(c.num_videos)
    labels = torch.arange(n) % 10
    real = world_items(cfg, n, int(c.real_seed))
    gifs = {}
    for prior in c.priors:
        ts = time.time()
        for budget, module in train_budgets(cfg, prior, image_file, seed):
            g = torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))
            v = module.sample(n, cond={"y": labels}, sampler=dict(c.sampler), generator=g).clamp(-1, 1)
            key = f"{prior}.{budget}"
            out.update(video_scores(v, ("fvd_judge", "appearance", "digit_agreement", "ink_consistency"), judge,
                                    f"{{metric}}.{key}", real=real))
            if budget == int(c.budgets[-1]):
                gifs[prior] = v[: int(c.gif_videos)]
        out[f"train_and_eval_s.{prior}"] = time.time() - ts
    if int(seed) == int(c.seeds[0]):
        save_labelled_rows({f"{p}\n{int(c.budgets[-1])} steps": v for p, v in gifs.items()},
                           run_dir / "iid_vs_correlated_priors.gif", fps=4, scale=3)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    real = world_items(cfg, int(c.num_videos), int(c.real_seed))
    other = world_items(cfg, int(c.num_videos), int(c.floor_seed))
    metrics: dict = {"fvd_judge_real_floor": fvd_judge(other, real, judge)}
    per_seed = map_seeds(cfg, seed_job)
    for key in per_seed[0]:
        name, _, sub = key.partition(".")
        summary = summarise([r[key] for r in per_seed])
        if sub:
            metrics.setdefault(name, {})[sub] = summary
        else:
            metrics[key] = summary
    budgets = [int(b) for b in c.budgets]
    half, full = budgets[len(budgets) // 2], budgets[-1]
    for prior in c.priors:
        metrics[f"fvd_{prior}_at_half"] = summarise([r[f"fvd_judge.{prior}.{half}"] for r in per_seed])
        metrics[f"fvd_{prior}_at_full"] = summarise([r[f"fvd_judge.{prior}.{full}"] for r in per_seed])
    record = finish(cfg, metrics, paper="pyoco", claim=str(c.name), t0=t0, artifacts=("*.png", "*.gif"),
                    extra={"num_videos": int(c.num_videos), "budgets": budgets, "half_budget": half,
                           "judge_sha256": judge_sha256(c.judge_path)})
    return record
