"""Latent-Shift claim check on MovingDigits (8 frames at 16x16, pixel space; the digit class is the prompt).

Latent-Shift (An et al. 2023) turns a trained text-to-image U-Net into a video model with *no new parameters*: a
temporal shift of two portions of the channels (one frame forward, one backward) in every residual block
(``shared.nn.temporal_shift``), then fine-tuning the whole U-Net on videos (Sec. 3.2-3.3).

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run). Per seed:

1. the image model (``claim.image``, the shared recipe; trained or taken from the teacher cache), its EMA weights
   written to the run folder;
2. Latent-Shift: those weights + a temporal shift in every residual block, every weight fine-tuned on video clips
   for ``trainer.max_steps`` steps (the experiment's ``model`` / ``module`` / ``data``); with ``temporal_attention``
   in ``claim.variants`` also the same image model inflated with zero-initialised temporal attention after every
   residual stage (VDM's block, ``shared.nn.video``) and fine-tuned the same way, for the cost comparison;
3. ``num_videos`` videos per model for the same labels (cycling through the digits) and noise seed: the image
   model frame by frame (independent noise per frame, the baseline) and the video model(s);
4. scores: ``FVD_judge`` against held-out real videos, appearance consistency (consecutive frames aligned on
   their ink centroid), the judge's frame-to-frame digit agreement and digit accuracy, raw-pixel consistency;
   the parameter counts and the measured time of one sampling forward pass (same batch, interleaved repeats).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import (
    fit_variant,
    forward_seconds,
    per_frame_samples,
    run_seeded_claim,
    seed_job_config,
    summarise,
    world_items,
)
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.video_identity import real_vs_swapped, video_scores
from shared.metrics.video_judge import judge_sha256, load_video_judge

SCORES = ("fvd_judge", "appearance", "digit_agreement", "digit_accuracy", "ink_consistency")


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def judge_checks(cfg: DictConfig) -> dict:
    c = cfg.claim
    return real_vs_swapped(world_items(cfg, int(c.num_videos), int(c.real_seed)),
                           ("fvd_judge", "appearance", "digit_agreement"), load_video_judge(c.judge_path or None),
                           floor=world_items(cfg, int(c.num_videos), int(c.floor_seed)))


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    run_dir = Path(cfg.run_dir)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    models = {}
    for variant in c.variants:
        ts = time.time()
        over = OmegaConf.to_container(c.variant_overrides[variant], resolve=False) if variant in \
            c.variant_overrides else {}
        over = {**over, "model.weights": str(image_file)}
        models[variant] = fit_variant(cfg, f"{variant}_seed{seed}", over, seed)
        out[f"train_time_s_{variant}"] = time.time() - ts
    n, T = int(c.num_videos), int(cfg.data.frames)
    labels = torch.arange(n) % 10
    sampler = dict(c.sampler)
    real = world_items(cfg, n, int(c.real_seed))

    def g():
        return torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))

    videos = {"per_frame": per_frame_samples(image, labels, T, sampler, g())}
    for variant, module in models.items():
        x_T = torch.randn((n, *module.sample_shape), generator=g())
        videos[variant] = module.sample(x_T=x_T, cond={"y": labels}, sampler=sampler, generator=g())
    for name, v in videos.items():
        out.update(video_scores(v.clamp(-1, 1), SCORES, judge, f"{{metric}}_{name}", real=real, labels=labels))
    nets = {"image": image.sampling_net(True), **{k: m.sampling_net(True) for k, m in models.items()}}
    for k, net in nets.items():
        out[f"params_{k}"] = float(n_params(net))
        out[f"extra_params_{k}"] = float(n_params(net) - n_params(nets["image"]))
    times = forward_seconds(nets, (int(c.bench_batch), 1, T, *image.sample_shape[1:]), int(c.bench_repeats))
    for k, v in times.items():
        out[f"forward_s_{k}"] = v
        out[f"forward_ratio_{k}"] = v / times["image"]
    if int(seed) == int(c.seeds[0]):
        k = int(c.gif_videos)
        names = {"per_frame": "image model\nper frame", "latent_shift": "Latent-Shift",
                 "temporal_attention": "temporal\nattention"}
        save_labelled_rows({names.get(n_, n_): v[:k] for n_, v in videos.items()},
                           run_dir / "per_frame_vs_latent_shift.gif", fps=4, scale=3)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def ratios(per_seed: list[dict]) -> dict:
        return {f"fvd_ratio_{v}_to_per_frame": summarise([r[f"fvd_judge_{v}"] / r["fvd_judge_per_frame"]
                                                          for r in per_seed]) for v in c.variants}

    return run_seeded_claim(cfg, seed_job, paper="latent_shift", checks=judge_checks, derived=ratios,
                            extra={"num_videos": int(c.num_videos), "judge_sha256": judge_sha256(c.judge_path)})
