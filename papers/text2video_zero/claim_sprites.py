"""Text2Video-Zero claim check on the Sprites world (8 frames at 16x16, RGB): a class-conditional image model of
single frames (the sprite identity is the prompt), no video training, made a video generator by motion dynamics in
the initial codes and cross-frame attention; scored by the closed-form sprite judge. Redesign of
``moving_digits_claim`` (``claim.py``), whose tiny image model could not hold a handwritten digit's identity.

Protocol (``cfg.claim``, fixed in ``experiments/text2video_zero/sprites_claim.yaml`` before the comparison run):

0. judge checks on real test clips, before any model: real clips vs clips with the identity swapped mid-clip,
   frames shuffled and frames from independent clips (``shared.metrics.sprite_judge.separation``), and the judge's
   direction accuracy on real clips;
1. per seed, the image model (``claim.image``: the shared recipe ``conf/image_stage/sprites16.yaml``), trained on
   single frames or taken from the teacher cache;
2. ``num_videos`` prompts (identity, commanded direction) cycling through all identity x 8-direction combinations
   (:func:`papers.text2video_zero.claim.prompts`), the same for every method, noise from the same generator seed;
3. videos of the four methods of :func:`papers.text2video_zero.claim.generate` (per-frame sampling, Text2Video-Zero,
   motion dynamics only, cross-frame attention only);
4. the judge's scores of every method (``SpriteJudge.scores`` with the prompted identity and direction, plus the
   per-frame share of valid frames of the prompted identity) and the appearance consistency of aligned crops
   (``shared.metrics.video_identity``). The per-frame method's ``frame_validity`` is the image model's floor.
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from papers.text2video_zero.claim import METHODS, generate, prompts
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import run_seeded_claim, seed_job_config, sprite_judge_checks, summarise, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import SpriteJudge, claim_judge, claim_scores

LABELS = {"per_frame": "per-frame\n(baseline)", "t2v_zero": "Text2Video-Zero", "motion_only": "motion only",
          "cross_frame_only": "cross-frame only\n(still start)"}


def judge_of(cfg: DictConfig) -> SpriteJudge:
    """The closed-form judge of the claim's world (its identities and radius range; ``claim.judge`` options)."""
    return claim_judge(cfg)


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = judge_of(cfg)
    module, _, out = image_stage_weights(cfg, c.image, seed, save=False)
    labels, directions = prompts(int(c.num_videos), 100 + int(seed), num_classes=len(cfg.data.train.identities))
    ts = time.time()
    videos = generate(cfg, module, labels, directions, seed)
    out["sample_time_s"] = time.time() - ts
    for name, v in videos.items():
        out.update(claim_scores(judge, v, labels, directions, f"{{metric}}_{name}"))
    if int(seed) == int(c.seeds[0]) and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        real = world_items(cfg, k, int(c.real_seed), world=Sprites, frames_only=False)
        rows = [("real test clips", real)] + [(LABELS[m], videos[m][:k]) for m in METHODS]
        save_labelled_rows(rows, Path(cfg.run_dir) / "per_frame_vs_t2v_zero.gif", fps=4, scale=3, frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def gains(per_seed: list[dict]) -> dict:
        out = {}
        for name in METHODS[1:]:
            for score in ("coherent", "motion_coherent", "direction_accuracy", "appearance"):
                out[f"{score}_gain_{name}"] = summarise([r[f"{score}_{name}"] - r[f"{score}_per_frame"]
                                                         for r in per_seed])
        return out

    return run_seeded_claim(cfg, seed_job, paper="text2video_zero", checks=partial(sprite_judge_checks, direction=True),
                            derived=gains, extra={"num_videos": int(c.num_videos)})
