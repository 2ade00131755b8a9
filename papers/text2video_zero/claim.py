"""Text2Video-Zero claim check on MovingDigits (8 frames at 16x16): a class-conditional image model, no video
training, made a video generator by motion dynamics in the initial codes and cross-frame attention.

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run). Per seed:

1. the image model (``claim.image``: the shared recipe ``conf/image_stage/moving_digits16.yaml``), trained on single
   frames or taken from the teacher cache (same recipe and seed, another paper's run);
2. ``num_videos`` prompts: digit classes and commanded directions cycling through all 10 x 8 combinations (one
   draw per seed), the same for every method; every method draws its noise from the same generator seed;
3. videos of each method: ``per_frame`` (the baseline: each frame an independent image sample of the prompt),
   ``t2v_zero`` (motion dynamics + cross-frame attention), ``motion_only`` (motion dynamics, plain self-attention)
   and ``cross_frame_only`` (cross-frame attention, no motion: all frames start from the first frame's code);
4. scores: the judge's motion accuracy (initial direction = the commanded one), appearance consistency (cosine
   of consecutive frames aligned on their ink centroid, ``shared.metrics.video_identity``), the judge's
   frame-to-frame digit agreement and digit accuracy (video classified as the prompt's digit), raw-pixel frame
   consistency, and ``FVD_judge`` against held-out real videos.

Before the comparison the metrics are checked on real data (recorded in the results): real clips vs
identity-swapped clips (every frame from another real clip) for appearance consistency and digit agreement, and
the motion accuracy of real clips.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from papers.text2video_zero.module import direction_velocity, per_frame_videos, text2video_zero
from shared.engine.claims import run_seeded_claim, seed_job_config, summarise, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.video_identity import real_vs_swapped, video_scores
from shared.metrics.video_judge import judge_sha256, load_video_judge

METHODS = ("per_frame", "t2v_zero", "motion_only", "cross_frame_only")
SCORES = ("motion_accuracy", "appearance", "digit_agreement", "digit_accuracy", "ink_consistency", "fvd_judge")


def prompts(n: int, seed: int, num_classes: int = 10, num_directions: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (class, direction) pairs covering the ``num_classes x num_directions`` combinations (digits: 80) evenly,
    in an order drawn from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    k = int(num_classes) * int(num_directions)
    combos = torch.randperm(k, generator=g)
    idx = combos[torch.arange(n) % k]
    return idx // int(num_directions), idx % int(num_directions)


def judge_checks(cfg: DictConfig) -> dict:
    """The metrics on real data: they must separate real from identity-swapped clips (before any comparison)."""
    judge = load_video_judge(cfg.claim.judge_path or None)
    real, directions = world_items(cfg, int(cfg.claim.num_videos), int(cfg.claim.real_seed), keys=("x", "direction"))
    return real_vs_swapped(real, ("appearance", "digit_agreement"), judge) | video_scores(
        real, ("motion_accuracy", "ink_consistency"), judge, "{metric}_real", directions=directions)


def generate(cfg: DictConfig, module, labels, directions, seed: int) -> dict[str, torch.Tensor]:
    c = cfg.claim
    T, steps = int(cfg.data.frames), int(c.steps)
    common = dict(cond={"y": labels}, frames=T, steps=steps, guidance_scale=float(c.guidance_scale))
    motion = dict(velocity=direction_velocity(directions, float(c.strength)), t1=int(c.t1), t0=int(c.t0))

    def g():
        return torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))

    out = {"per_frame": per_frame_videos(module, generator=g(), **common)}
    for name, flags in (("t2v_zero", {}), ("motion_only", {"cross_frame": False}),
                        ("cross_frame_only", {"motion": False})):
        out[name] = text2video_zero(module, generator=g(), **common, **motion, **flags)
    return {k: v.clamp(-1, 1) for k, v in out.items()}


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    module, _, out = image_stage_weights(cfg, c.image, seed, save=False)
    labels, directions = prompts(int(c.num_videos), 100 + int(seed))
    ts = time.time()
    videos = generate(cfg, module, labels, directions, seed)
    out["sample_time_s"] = time.time() - ts
    real = world_items(cfg, int(c.num_videos), int(c.real_seed))
    for name, v in videos.items():
        out.update(video_scores(v, SCORES, judge, f"{{metric}}_{name}", real=real, labels=labels,
                                directions=directions))
    if int(seed) == int(c.seeds[0]):
        k = int(c.gif_videos)
        save_labelled_rows({"per-frame\n(baseline)": videos["per_frame"][:k], "Text2Video-Zero": videos["t2v_zero"][:k],
                            "motion only": videos["motion_only"][:k],
                            "cross-frame only\n(still start)": videos["cross_frame_only"][:k]},
                           Path(cfg.run_dir) / "per_frame_vs_t2v_zero.gif", fps=4, scale=3)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def gains(per_seed: list[dict]) -> dict:
        return {f"appearance_gain_{name}": summarise([r[f"appearance_{name}"] - r["appearance_per_frame"]
                                                      for r in per_seed]) for name in METHODS[1:]}

    return run_seeded_claim(cfg, seed_job, paper="text2video_zero", checks=judge_checks, derived=gains,
                            extra={"num_videos": int(c.num_videos), "judge_sha256": judge_sha256(c.judge_path)})
