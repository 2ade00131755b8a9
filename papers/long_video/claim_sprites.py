"""Long-video claim check on the Sprites world (``experiments/long_video/sprites_claim.yaml``): a video backbone
fine-tuned on 8-frame clips makes 24-frame videos (3x) by naive concatenation, FreeNoise, window fusion with i.i.d.
noise and LVDM-style autoregressive extension (the methods and their sampling code are ``claim.long_videos``'s, the
MovingDigits claim's), scored by the closed-form sprite judge. Redesign of ``moving_digits_claim`` (partly there: the
backbone was far from the world, so frames inside a window already differed as much as across a seam, and the
learned judge read the digit of a frame only roughly).

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run):

0. judge checks on real data, before any model: real ``total``-frame videos of the world vs ``total / window`` real
   ``window``-frame clips of independent seeds put side by side (what naive concatenation of a perfect backbone
   gives); every score below must separate them;
1. per seed, the shared Sprites image stage (``claim.image``, trained or from the teacher cache) and the backbone:
   its U-Net inflated with zero-initialised temporal attention and fine-tuned on 8-frame clips with i.i.d. noise
   (``shared.engine.claims.fit_from_image``, variant ``iid``);
2. ``num_videos`` long videos per method from the same generator seed, **without the prompt** (the null label): a
   window is free to draw any identity, size and place, so whether the content survives a seam is the method's doing
   (with the prompt, the identity would be fixed in every window by the label alone);
3. scores (``scores``): ``identity_kept`` — identity drift, the share of frames whose judged identity is frame 0's
   (``shared.metrics.sprite_judge.identity_kept``); ``seam_jump`` — the centroid's displacement across the window
   seams of naive concatenation (frames 8|9, 16|17) minus its displacement between the other consecutive frames, in
   px (``seam_jump``; a straight-line mover has none); ``seam`` — the MovingDigits claim's seam consistency (cosine of
   aligned crops across the seams); ``straight_track`` — the judge's straight-line motion over the whole video;
   ``identity_consistent`` (every frame valid, one identity) and ``frame_validity``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from papers.long_video.claim import boundaries, long_videos
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import fit_from_image, run_seeded_claim, seed_job_config, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import claim_judge, identity_kept, seam_jump
from shared.metrics.video_identity import seam_consistency

METHODS = ("naive", "freenoise", "fusion_iid", "autoregressive")
NAMES = {"naive": "naive\nconcatenation", "freenoise": "FreeNoise", "fusion_iid": "fusion,\ni.i.d. noise",
         "autoregressive": "autoregressive\n(LVDM)"}


def scores(judge, videos: torch.Tensor, window: int) -> dict[str, float]:
    """The claim's scores of long videos (B, 3, T, H, W) in [-1, 1] (module docstring, step 3)."""
    seams = boundaries(videos.shape[2], window)
    clips = judge.clips(videos)
    return {"identity_kept": identity_kept(judge, videos),
            "seam_jump": seam_jump(judge, videos, seams),
            "seam": seam_consistency(videos, seams),
            "straight_track": float(clips["motion_coherent"].float().mean()),
            "identity_consistent": float(clips["identity_consistent"].float().mean()),
            "frame_validity": float(clips["frames"]["valid"].float().mean())}


def real_long(cfg: DictConfig, n: int, seed: int) -> torch.Tensor:
    return world_items(cfg, n, seed, world=Sprites, frames_only=False, frames=int(cfg.claim.total_frames))


def judge_checks(cfg: DictConfig) -> dict:
    """Real ``total``-frame videos vs real ``window``-frame clips of independent seeds concatenated."""
    c = cfg.claim
    judge = claim_judge(cfg)
    n, window, total = int(c.num_videos), int(cfg.data.frames), int(c.total_frames)
    parts = [world_items(cfg, n, int(c.real_seed) + 1 + k, world=Sprites, frames_only=False)
             for k in range(-(-total // window))]
    return {"real": scores(judge, real_long(cfg, n, int(c.real_seed)), window),
            "concatenated_real": scores(judge, torch.cat(parts, dim=2)[:, :, :total], window)}


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    if list(c.variants) != ["iid"]:
        raise ValueError(f"claim.variants must be [iid] (the backbone), got {list(c.variants)}")
    judge = claim_judge(cfg)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    backbone = fit_from_image(cfg, image_file, seed, out)["iid"]
    n, window = int(c.num_videos), int(cfg.data.frames)
    labels = torch.full((n,), int(c.image.model.num_classes))   # the null label: no prompt (module docstring)
    ts = time.time()
    videos = long_videos(cfg, backbone, labels, seed)
    out["sample_s"] = time.time() - ts
    for name in METHODS:
        for k, v in scores(judge, videos[name], window).items():
            out[f"{k}_{name}"] = v
    if int(seed) == int(c.seeds[0]) and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        rows = [("real 24-frame\nvideos", real_long(cfg, k, int(c.real_seed)))]
        rows += [(NAMES[m], videos[m][:k]) for m in ("naive", "freenoise", "autoregressive")]
        save_labelled_rows(rows, Path(cfg.run_dir) / "real_naive_freenoise_autoregressive.gif", fps=4, scale=3,
                           frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim
    return run_seeded_claim(cfg, seed_job, paper="long_video", checks=judge_checks,
                            extra={"num_videos": int(c.num_videos), "total_frames": int(c.total_frames),
                                   "judge": "shared.metrics.sprite_judge"})
