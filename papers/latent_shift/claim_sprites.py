"""Latent-Shift claim check on the Sprites world (8 frames at 16x16, RGB, pixel space; the sprite identity is the
prompt), scored by the closed-form sprite judge. Redesign of ``moving_digits_claim`` (``claim.py``), whose tiny image
model could not hold a handwritten digit's identity, so identity consistency could not be learnt or read there.

Protocol (``cfg.claim``, fixed in ``experiments/latent_shift/sprites_claim.yaml`` before the comparison run):

0. judge checks on real test clips, before any model: real clips vs clips with the identity swapped mid-clip,
   frames shuffled and frames from independent clips (``shared.metrics.sprite_judge.separation``), plus the
   appearance consistency of real and identity-swapped clips;
1. per seed, the image model (``claim.image``: the shared recipe ``conf/image_stage/sprites16.yaml``; trained or
   taken from the teacher cache), its EMA weights written to the run folder;
2. each of ``claim.variants`` fine-tuned from those weights on Sprites clips for ``trainer.max_steps`` steps (the
   experiment's ``model`` / ``module`` / ``data``, plus ``claim.variant_overrides``): ``latent_shift`` (a temporal
   shift in every residual block, every weight trained: Sec. 3.2-3.3) and ``no_shift`` (shift fraction 0: the image
   architecture fine-tuned on the same clips with the same budget, the equal-compute control);
3. ``num_videos`` videos per model for the same labels (the identities cycled) and noise seed: the image model
   frame by frame (independent noise per frame, the baseline) and every fine-tuned model on whole clips;
4. the judge's scores (``SpriteJudge.scores`` with the prompted identity, plus the share of valid frames of the
   prompted identity) and the appearance consistency of aligned crops (``shared.metrics.video_identity``); the
   parameter counts and the measured time of one sampling forward pass (same batch, interleaved repeats).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from papers.latent_shift.claim import n_params
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import (
    fit_from_image,
    forward_seconds,
    run_seeded_claim,
    seed_job_config,
    sprite_judge_checks,
    summarise,
    variant_videos,
    world_items,
)
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import claim_judge, claim_scores

SCORES = ("coherent", "identity_consistent", "motion_coherent", "appearance", "frame_validity",
          "identity_accuracy", "frame_identity_accuracy")
NAMES = {"per_frame": "image model\nper frame", "no_shift": "fine-tuned,\nno shift", "latent_shift": "Latent-Shift"}


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = claim_judge(cfg)
    unknown = [v for v in c.variants if v not in NAMES or v == "per_frame"]
    if unknown:
        raise ValueError(f"claim.variants: unknown variant(s) {unknown}; choose from ['latent_shift', 'no_shift']")
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    models = fit_from_image(cfg, image_file, seed, out)
    n, T = int(c.num_videos), int(cfg.data.frames)
    labels = torch.arange(n) % len(cfg.data.train.identities)
    sampler = dict(c.sampler)

    def g():
        return torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))

    ts = time.time()
    videos = variant_videos(image, models, labels, T, sampler, g)
    out["sample_time_s"] = time.time() - ts
    for name, v in videos.items():
        out.update(claim_scores(judge, v.clamp(-1, 1), labels, key=f"{{metric}}_{name}"))
    nets = {"image": image.sampling_net(True), **{k: m.sampling_net(True) for k, m in models.items()}}
    for k, net in nets.items():
        out[f"params_{k}"] = float(n_params(net))
        out[f"extra_params_{k}"] = float(n_params(net) - n_params(nets["image"]))
    times = forward_seconds(nets, (int(c.bench_batch), 3, T, *image.sample_shape[1:]), int(c.bench_repeats))
    for k, v in times.items():
        out[f"forward_s_{k}"] = v
        out[f"forward_ratio_{k}"] = v / times["image"]
    if int(seed) == int(c.seeds[0]) and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        real = world_items(cfg, k, int(c.real_seed), world=Sprites, frames_only=False)
        rows = [("real test clips", real)] + [(NAMES[m], v[:k].clamp(-1, 1)) for m, v in videos.items()]
        save_labelled_rows(rows, Path(cfg.run_dir) / "per_frame_vs_latent_shift.gif", fps=4, scale=3,
                           frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def gains(per_seed: list[dict]) -> dict:
        out = {}
        for score in ("coherent", "identity_consistent", "motion_coherent", "appearance"):
            for base in ("per_frame", *[v for v in c.variants if v != "latent_shift"]):
                if "latent_shift" in c.variants:
                    out[f"{score}_gain_latent_shift_over_{base}"] = summarise(
                        [r[f"{score}_latent_shift"] - r[f"{score}_{base}"] for r in per_seed])
        return out

    return run_seeded_claim(cfg, seed_job, paper="latent_shift", checks=sprite_judge_checks, derived=gains,
                            extra={"num_videos": int(c.num_videos), "judge": "shared.metrics.sprite_judge"})
