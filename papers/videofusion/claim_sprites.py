"""VideoFusion claim check (Luo et al., CVPR 2023) on the Sprites world (8 frames at 16x16, RGB, pixel space; the
sprite identity is the prompt), scored by the closed-form sprite judge. Redesign of ``moving_digits_claim``
(``claim.py``), whose tiny image model could not hold a handwritten digit's identity, so frame consistency could not
be learnt or read there.

Protocol (``cfg.claim``, fixed in ``experiments/videofusion/sprites_claim.yaml`` before the comparison run):

0. judge checks on real test clips, before any model: real clips vs clips with the identity swapped mid-clip,
   frames shuffled and frames of independent clips (``shared.metrics.sprite_judge.separation``), plus the
   appearance consistency of real and identity-swapped clips;
1. per seed, the image model (``claim.image``: the shared recipe ``conf/image_stage/sprites16.yaml``, v-prediction on
   the cosine schedule; trained or taken from the teacher cache), its EMA weights written to the run folder;
2. each of ``claim.variants`` fine-tuned from those weights on the same Sprites clips for ``trainer.max_steps``
   steps, same batch, optimiser and objective (``claim.variant_overrides``):

   * ``iid`` — the standard process: the image U-Net inflated with zero-initialised temporal attention, trained and
     sampled with i.i.d. noise per frame;
   * ``videofusion`` — the decomposed process: noise ``sqrt(lambda) b + sqrt(1 - lambda) r^i`` (``BaseResidualNoise``,
     key frame ``ceil(N/2)``) for training and for ``x_T``, predicted by the base generator (the image model, on the
     key frame) and the residual generator (the same inflated U-Net as ``iid``) (``papers/videofusion/nets.py``,
     combined in the image stage's v-parameterisation).

   Equal compute is equal steps, clips per step and optimiser; VideoFusion's base generator is one more image-U-Net
   pass on the key frame per clip (1/T of the residual generator's frames) and its own copy of the weights, so the
   measured training seconds per step, forward time and parameter counts of both are reported, not equalised;
3. ``num_videos`` videos per model for the same labels (the identities cycled) and generator seed (``x_T`` from each
   model's own prior): the image model frame by frame (independent noise per frame: the floor) and both fine-tuned
   models on whole clips;
4. the judge's scores (``SpriteJudge.scores`` with the prompted identity, plus the share of frames valid and of the
   prompted identity) and the appearance consistency of aligned crops (``shared.metrics.video_identity``).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

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

VARIANTS = ("iid", "videofusion")
NAMES = {"per_frame": "image model\nper frame", "iid": "i.i.d. noise\n(standard)",
         "videofusion": "VideoFusion\n(base+residual)"}
GAIN_SCORES = ("coherent", "identity_consistent", "motion_coherent", "appearance", "frame_validity")


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    unknown = [v for v in c.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"claim.variants: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    judge = claim_judge(cfg)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    models = fit_from_image(cfg, image_file, seed, out)
    n, T = int(c.num_videos), int(cfg.data.frames)
    labels = torch.arange(n) % len(cfg.data.train.identities)
    sampler = dict(c.sampler)

    def g():
        return torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))

    ts = time.time()
    videos = variant_videos(image, models, labels, T, sampler, g)   # x_T from each prior (i.i.d. / base + residual)
    out["sample_time_s"] = time.time() - ts
    for name, v in videos.items():
        out.update(claim_scores(judge, v.clamp(-1, 1), labels, key=f"{{metric}}_{name}"))
    nets = {k: m.sampling_net(True) for k, m in models.items()}
    for k, net in nets.items():
        out[f"params_{k}"] = float(sum(p.numel() for p in net.parameters()))
    if len(nets) > 1:
        times = forward_seconds(nets, (int(c.bench_batch), 3, T, *image.sample_shape[1:]), int(c.bench_repeats))
        ref = times[c.variants[0]]
        for k, v in times.items():
            out[f"forward_s_{k}"] = v
            out[f"forward_ratio_{k}"] = v / ref
    if int(seed) == int(c.seeds[0]) and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        real = world_items(cfg, k, int(c.real_seed), world=Sprites, frames_only=False)
        rows = [("real test clips", real)] + [(NAMES[m], v[:k].clamp(-1, 1)) for m, v in videos.items()]
        save_labelled_rows(rows, Path(cfg.run_dir) / "iid_vs_videofusion.gif", fps=4, scale=3, frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def gains(per_seed: list[dict]) -> dict:
        out = {}
        if "videofusion" not in c.variants:
            return out
        for score in GAIN_SCORES:
            for base in ("per_frame", *[v for v in c.variants if v != "videofusion"]):
                out[f"{score}_gain_videofusion_over_{base}"] = summarise(
                    [r[f"{score}_videofusion"] - r[f"{score}_{base}"] for r in per_seed])
        return out

    return run_seeded_claim(cfg, seed_job, paper="videofusion", checks=sprite_judge_checks, derived=gains,
                            extra={"num_videos": int(c.num_videos), "judge": "shared.metrics.sprite_judge"})
