"""VDM claim check (PAPERS.md, ``vdm``) on the MovingDigits world (8 frames at 16x16, one digit).

Protocol (``cfg.claim``, fixed before any outcome was seen). For each seed, in its own process:

1. *Joint image-video training* (VDM Sec. 3.2, Table 4): train the same 3D U-Net for the same number of
   steps on 8-frame videos alone (``video_only``) and with ``extra_images`` independent frames of other
   videos appended to every video (``joint``; temporal attention masked). Draw ``num_samples``
   unconditional videos from each (EMA weights, ``sampler``) and compute ``FVD_judge`` against
   ``num_samples`` real held-out test videos (``real_seed``).
2. *Extension* (VDM Sec. 3.1): with the ``extension_model`` of that seed, complete ``num_extensions``
   held-out test videos (``context_seed``) given their ``known_frames`` with the replacement method and
   with reconstruction guidance (``w_r``), same sampler, same noise. Scores: ``FVD_judge`` of the
   completed videos against the real reference set, per-frame PSNR of the generated frames against the
   world's ground-truth continuation, and the judge's digit accuracy (identity kept from the given frames).
   With ``w_r_sweep``, reconstruction guidance is also scored at each listed weight (same noise).
   With ``variants: [joint]`` only the extension model is trained (the 16-frame extension follow-up).

The real-vs-real ``FVD_judge`` floor compares two disjoint real test sets of ``num_samples`` videos.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.diffusion.conditioning import frames_mask
from shared.engine.claims import finish, fit_variant, seed_job_config, summarise, world_items
from shared.engine.parallel import map_jobs
from shared.engine.video_io import save_video_grid
from shared.metrics.video import psnr
from shared.metrics.video_judge import digit_accuracy, fvd_judge, judge_sha256, load_video_judge


def real_videos(cfg: DictConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out test videos of the claim's world (digit images unseen in training) and their digits."""
    return world_items(cfg, n, seed, keys=("x", "y"))


def seed_job(cfg_dict: dict, seed: int) -> dict:
    """Train both variants of one seed, sample, extend and score; returns that seed's metrics."""
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    real, _ = real_videos(cfg, int(c.num_samples), int(c.real_seed))
    ctx, ctx_digits = real_videos(cfg, int(c.num_extensions), int(c.context_seed))
    known = frames_mask(ctx.shape, list(c.known_frames))
    unknown_t = [t for t in range(ctx.shape[2]) if t not in set(c.known_frames)]
    run_dir, out = Path(cfg.run_dir), {}
    extra_images = {"video_only": 0, "joint": int(c.extra_images)}
    wanted = list(c.get("variants") or extra_images)
    if unknown := [v for v in wanted if v not in extra_images]:
        raise ValueError(f"claim.variants: unknown {unknown}; choose from {list(extra_images)}")
    variants = {k: extra_images[k] for k in wanted}
    for variant, extra in variants.items():
        module = fit_variant(cfg, f"{variant}_seed{seed}", {"data.extra_images": extra}, seed)
        g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
        ts = time.time()
        x = module.sample(int(c.num_samples), sampler=dict(c.sampler), generator=g)
        out[f"sample_time_s_{variant}"] = time.time() - ts
        out[f"fvd_judge_{variant}"] = fvd_judge(x, real, judge)
        if seed == c.seeds[0]:
            gif = run_dir / f"samples_{variant}.gif"
            save_video_grid(x[: int(c.gif_videos)], gif, nrow=8, fps=4, scale=2)
        if variant != c.extension_model:
            continue
        for method in ("replacement", "reconstruction"):
            g = torch.Generator().manual_seed(int(c.sample_seed) + 7 + int(seed))
            ts = time.time()
            xe = module.extend(ctx, known, method=method, w_r=float(c.w_r), sampler=dict(c.sampler),
                               generator=g)
            out[f"ext_time_s_{method}"] = time.time() - ts
            out[f"ext_fvd_judge_{method}"] = fvd_judge(xe, real, judge)
            out[f"ext_psnr_{method}"] = psnr(xe[:, :, unknown_t], ctx[:, :, unknown_t])
            out[f"ext_digit_acc_{method}"] = digit_accuracy(xe, ctx_digits, judge)
            if seed == c.seeds[0]:
                k = int(c.gif_videos)
                save_video_grid(torch.cat([ctx[:k], xe[:k]]), run_dir / f"extension_{method}.gif", nrow=k,
                                fps=4, scale=2)
        for w_r in c.get("w_r_sweep") or []:  # reconstruction guidance at other weights, same noise
            g = torch.Generator().manual_seed(int(c.sample_seed) + 7 + int(seed))
            xe = module.extend(ctx, known, method="reconstruction", w_r=float(w_r), sampler=dict(c.sampler),
                               generator=g)
            tag = f"wr{float(w_r):g}"
            out[f"ext_fvd_judge_reconstruction_{tag}"] = fvd_judge(xe, real, judge)
            out[f"ext_psnr_reconstruction_{tag}"] = psnr(xe[:, :, unknown_t], ctx[:, :, unknown_t])
            out[f"ext_digit_acc_reconstruction_{tag}"] = digit_accuracy(xe, ctx_digits, judge)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    real, _ = real_videos(cfg, int(c.num_samples), int(c.real_seed))
    other, _ = real_videos(cfg, int(c.num_samples), int(c.floor_seed))
    metrics: dict = {"fvd_judge_real_floor": fvd_judge(other, real, judge)}
    # unresolved, so ${run_dir} stays live: one checkpoint folder per variant
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    if "fvd_judge_joint" in per_seed[0] and "fvd_judge_video_only" in per_seed[0]:
        metrics["ratio_joint_to_video_only"] = summarise(
            [r["fvd_judge_joint"] / r["fvd_judge_video_only"] for r in per_seed])
    metrics["ratio_reconstruction_to_replacement"] = summarise(
        [r["ext_fvd_judge_reconstruction"] / r["ext_fvd_judge_replacement"] for r in per_seed])
    record = finish(cfg, metrics, paper="vdm", claim=str(c.name), t0=t0,
                    artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_samples": int(c.num_samples),
                           "num_extensions": int(c.num_extensions), "judge_sha256": judge_sha256(c.judge_path)})
    return record
