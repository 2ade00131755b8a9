"""Tune-A-Video claim check (Wu et al., ICCV 2023) on MovingDigits (8 frames at 16x16, pixel space, digit = prompt).

One-shot video tuning: the image model is inflated (sparse-causal attention, zero-initialised temporal attention;
``papers/tune_a_video/nets.py``) and its query projections and temporal layers are tuned on ONE video with its prompt
(the source digit ``A``); then the video is DDIM-inverted with the tuned model and the source prompt, and sampled
again from that latent with an *edited* prompt (digit ``B``): the video's motion should survive with the new
appearance (Sec. 4.3).

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run). Per seed: the image model
(shared recipe; trained or cached); ``num_sources`` held-out test videos (digit ``A``, initial direction ``d``), each
tuned for ``trainer.max_steps`` steps, edited to ``B = (A + edit_offset) mod 10`` with classifier-free guidance
``guidance_scale``. Baselines, same inversion and editing: the image model frame by frame (every frame inverted and
edited alone) and the inflated model *without* tuning. Scores by the video judge: motion accuracy (the edit keeps
direction ``d``), target accuracy (the edit shows digit ``B``), source retention (still digit ``A``), and appearance
consistency (frames aligned on their ink centroid).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import fit_variant, run_seeded_claim, seed_job_config, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.methods.editing import invert_and_edit as edit_by_inversion
from shared.metrics.video_identity import appearance_consistency
from shared.metrics.video_judge import digit_accuracy, judge_sha256, load_video_judge, motion_accuracy


def invert_and_edit(module, video: torch.Tensor, source: torch.Tensor, target: torch.Tensor, steps: int,
                    guidance_scale: float) -> torch.Tensor:
    """DDIM-invert ``video`` under the ``source`` labels, then DDIM-sample it back under ``target`` (guided)."""
    return edit_by_inversion(module, video, {"y": source}, {"y": target}, steps, guidance_scale)


@torch.no_grad()
def per_frame_edit(module, video, source, target, steps, guidance_scale) -> torch.Tensor:
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    out = invert_and_edit(module, frames, source.repeat_interleave(t), target.repeat_interleave(t), steps,
                          guidance_scale)
    return out.view(b, t, c, h, w).transpose(1, 2)


def scores(v: torch.Tensor, directions, source, target, judge) -> dict:
    return {"motion": motion_accuracy(v, directions, judge), "target": digit_accuracy(v, target, judge),
            "source_kept": digit_accuracy(v, source, judge), "appearance": appearance_consistency(v)}


def untuned_module(cfg: DictConfig, image_file):
    """The inflated network with the image stage's weights, not tuned (the claims' "untuned" baseline)."""
    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    mcfg["weights"] = str(image_file)
    return instantiate(cfg.module, net=instantiate(mcfg)).eval()


def tune_on_source(cfg: DictConfig, image_file, k: int, src_seed: int, seed: int):
    """One-shot tuning on the ``k``-th held-out source video of the world (seed ``src_seed``): a variant of its own
    (``tuned_seed<seed>_video<k>``) trained on that one video from the image stage's weights."""
    data = {"data.train._target_": "papers.tune_a_video.data.OneVideo",
            "data.train.world": str(cfg.data.train._target_), "data.train.index": k,
            "data.train.seed": src_seed, "data.train.split": "test", "model.weights": str(image_file)}
    return fit_variant(cfg, f"tuned_seed{seed}_video{k}", data, seed)


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    run_dir = Path(cfg.run_dir)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    n, steps, w = int(c.num_sources), int(c.sampler_steps), float(c.guidance_scale)
    src_seed = int(c.source_seed) + int(seed)
    videos, labels, directions = world_items(cfg, n, src_seed, keys=("x", "y", "direction"))
    target = (labels + int(c.edit_offset)) % 10
    edits = {"per_frame": per_frame_edit(image, videos, labels, target, steps, w)}
    edits["untuned"] = invert_and_edit(untuned_module(cfg, image_file), videos, labels, target, steps, w)
    tuned, ts = [], time.time()
    for k in range(n):
        module = tune_on_source(cfg, image_file, k, src_seed, seed)
        tuned.append(invert_and_edit(module, videos[k:k + 1], labels[k:k + 1], target[k:k + 1], steps, w))
    out["tune_and_edit_s"] = time.time() - ts
    edits["tuned"] = torch.cat(tuned)
    recon = {}
    for name, v in edits.items():
        v = v.clamp(-1, 1)
        for key, val in scores(v, directions, labels, target, judge).items():
            out[f"{key}_{name}"] = val
        recon[name] = v
    for key, val in scores(videos, directions, labels, target, judge).items():
        out[f"{key}_source_videos"] = val
    if int(seed) == int(c.seeds[0]):
        k = int(c.gif_videos)
        save_labelled_rows({"source video": videos[:k], "image model\nper frame": recon["per_frame"][:k],
                            "inflated,\nnot tuned": recon["untuned"][:k], "Tune-A-Video": recon["tuned"][:k]},
                           run_dir / "source_vs_edits.gif", fps=4, scale=3)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim
    return run_seeded_claim(cfg, seed_job, paper="tune_a_video",
                            extra={"num_sources": int(c.num_sources), "judge_sha256": judge_sha256(c.judge_path)})
