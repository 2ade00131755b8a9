"""Animate Anyone claim check (PAPERS.md, ``animate_anyone``) on the Puppets world: 8 frames at 16x16, pixel space.

Protocol (``cfg.claim``, fixed in the experiment config before the comparison was run). Every model is trained by
:func:`shared.engine.claims.fit_variant` (the code of ``python -m shared.engine.train``) with the stage overrides
of ``claim.stages``; each stage exports what it trained (:meth:`papers.animate_anyone.module.AnimateAnyone
.export_weights`) and the next stage builds on the file:

0. ``base`` (optional, once per claim, seed ``claim.base_seed``; null = none): a pretrained image model both
   networks start from, as they start from Stable Diffusion in the paper — an unconditional image model of the
   world's train frames. Without it the denoiser and the ReferenceNet start from one random initialisation.
Per seed:
1. ``image`` (stage 1, Sec. 3.3): denoiser and ReferenceNet (a copy of the denoiser at initialisation), Pose Guider,
   image embedding of the reference in the cross-attention; single frames, reference = the same identity in another
   motion.
2. ``image_embed``: the ablation — stage 1 without ReferenceNet (the reference only through its embedding), the
   same budget.
3. ``motion`` (stage 2): motion modules on the frozen stage-1 network, trained on clips.

The training data are ``cfg.data.train`` (seen identities doing seen motions); with ``random_appearance`` every
training item wears a fresh appearance (``shared.data.puppets``), so the held-out identities test appearance
*transfer* from the reference rather than recall of the nine seen people (``puppets_claim_v2``).

Evaluation (no further training) on ``num_samples`` clips of the held-out identities doing held-out motions (the
``test`` split, ``real_seed``): each model is given the clip's reference image and its pose maps and generates the
clip — the stage-1 models frame by frame (independent noise per frame), stage 2 as a video. Scores against the
ground-truth rendering of the same identity in the same poses: the appearance judge's identity accuracy (the
judged identity is the reference's; ``identity_acc`` over all the judge's identities, ``identity_acc_heldout``
among the held-out identities alone: "which of the unseen people is it"), PSNR and SSIM, a judge-feature
distance per frame (LPIPS-style: mean L2 between the judge's normalised features of generated and true frames),
``FVD_judge`` against the real clips; the pose judge's keypoint error against the driving keypoints; and the
temporal-difference error
``mean |(g_{t+1} - g_t) - (x_{t+1} - x_t)|`` (flicker beyond the true motion). Real-data yardsticks: the judges on
the real clips themselves and against another clip's identity / keypoints, and the real-vs-real ``FVD_judge``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.data.puppets import Puppets, heldout_identity_set
from shared.engine.claims import finish, summarise_seeds, timed_seeds, train_stage
from shared.engine.video_io import save_labelled_columns
from shared.metrics.avatar_judge import (
    avatar_judge_sha256,
    identity_accuracy,
    judge_outputs,
    keypoint_error,
    load_avatar_judge,
    video_features,
)
from shared.metrics.frechet import gaussian_stats
from shared.metrics.video import frame_consistency, psnr, ssim


def eval_clips(cfg: DictConfig, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` clips of held-out identities doing held-out motions, stacked per key."""
    d = cfg.data.train
    ds = Puppets(n=n, frames=int(cfg.data.frames), size=int(cfg.data.size), split="test", seed=seed,
                 num_identities=int(d.num_identities), identity_split="unseen", motion_split="unseen",
                 tempo=list(d.tempo), scale_jitter=float(d.scale_jitter), pose_mode=str(d.pose_mode),
                 supersample=int(d.supersample))
    items = [ds[i] for i in range(n)]
    keys = ("x", "reference", "pose_map", "keypoints", "identity")
    return {k: torch.stack([it[k] for it in items]) for k in keys}


@torch.no_grad()
def generate(module, clips: dict, sampler: dict, seed: int, per_frame: bool) -> torch.Tensor:
    """Each clip generated from its reference and pose maps: as a video, or frame by frame with independent
    noise per frame (the image model used frame by frame)."""
    x = clips["x"]
    b, c, t, h, w = x.shape
    g = torch.Generator().manual_seed(int(seed))
    if per_frame:
        ref = clips["reference"].repeat_interleave(t, dim=0)
        pose = clips["pose_map"].permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
        x_T = torch.randn((b * t, c, h, w), generator=g)
        out = module.sample(x_T=x_T, cond={"reference": ref, "pose_map": pose}, sampler=sampler, generator=g)
        return out.view(b, t, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
    x_T = torch.randn((b, c, t, h, w), generator=g)
    return module.sample(x_T=x_T, cond={"reference": clips["reference"], "pose_map": clips["pose_map"]},
                         sampler=sampler, generator=g)


def temporal_error(gen: torch.Tensor, real: torch.Tensor) -> float:
    """mean |(g_{t+1} - g_t) - (x_{t+1} - x_t)|: frame-to-frame change not explained by the true motion."""
    dg, dx = gen[:, :, 1:] - gen[:, :, :-1], real[:, :, 1:] - real[:, :, :-1]
    return float((dg - dx).abs().mean())


def feature_distance(gen: torch.Tensor, real: torch.Tensor, judge) -> float:
    """LPIPS-style: mean L2 distance between the judge's (normalised) features of paired frames."""
    fg, fr = judge_outputs(gen, judge)["features"], judge_outputs(real, judge)["features"]
    return float((fg - fr).norm(dim=-1).mean())


def heldout_identities(cfg: DictConfig) -> list[int]:
    """The world's held-out identities (the evaluation clips'): the candidates of ``identity_acc_heldout``."""
    d = cfg.data.train
    return sorted(heldout_identity_set(int(d.num_identities), d.get("heldout_identities")))


def scores(gen: torch.Tensor, clips: dict, judge, real_stats, candidates=None) -> dict:
    from shared.metrics.frechet import frechet_distance

    x = clips["x"]
    mu, sigma = gaussian_stats(video_features(gen, judge))
    return {"identity_acc": identity_accuracy(gen, clips["identity"], judge),
            "identity_acc_heldout": identity_accuracy(gen, clips["identity"], judge, candidates=candidates),
            "psnr": psnr(gen, x), "ssim": ssim(gen, x), "feature_dist": feature_distance(gen, x, judge),
            "fvd_judge": frechet_distance(mu, sigma, *real_stats),
            "keypoint_err": keypoint_error(gen, clips["keypoints"], judge),
            "temporal_err": temporal_error(gen, x), "consistency": frame_consistency(gen)}


def seed_job(cfg: DictConfig, seed: int, base_w: Path | None, clips: dict, judge, real_stats,
             candidates=None) -> tuple[dict, dict]:
    c = cfg.claim
    sampler = OmegaConf.to_container(c.sampler, resolve=True)
    base = {"model.base_weights": str(base_w)} if base_w is not None else {}
    ref_w, ref_mod = train_stage(cfg, "image", f"image_seed{seed}", seed, base)
    _, emb_mod = train_stage(cfg, "image_embed", f"image_embed_seed{seed}", seed, base)
    _, mot_mod = train_stage(cfg, "motion", f"motion_seed{seed}", seed, {"model.image_weights": str(ref_w)})
    sseed = int(c.sample_seed) + 100 * int(seed)
    gens = {"refnet_frames": generate(ref_mod, clips, sampler, sseed, per_frame=True),
            "embed_frames": generate(emb_mod, clips, sampler, sseed, per_frame=True),
            "refnet_video": generate(mot_mod, clips, sampler, sseed, per_frame=False)}
    out = {}
    for name, gen in gens.items():
        for k, v in scores(gen, clips, judge, real_stats, candidates).items():
            out[f"{k}_{name}"] = v
    return out, gens


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = load_avatar_judge("puppets", c.judge_path)
    n = int(c.num_samples)
    clips = eval_clips(cfg, n, int(c.real_seed))
    floor = eval_clips(cfg, n, int(c.floor_seed))
    real_stats = gaussian_stats(video_features(clips["x"], judge))
    other = torch.roll(torch.arange(n), 1)
    keep = clips["identity"][other] != clips["identity"]
    from shared.metrics.frechet import frechet_distance

    held = heldout_identities(cfg)
    mu, sigma = gaussian_stats(video_features(floor["x"], judge))
    metrics: dict = {
        "identity_acc_real": identity_accuracy(clips["x"], clips["identity"], judge),
        "identity_acc_real_swapped": identity_accuracy(clips["x"][keep], clips["identity"][other][keep], judge),
        "identity_acc_heldout_real": identity_accuracy(clips["x"], clips["identity"], judge, candidates=held),
        "identity_acc_heldout_real_swapped": identity_accuracy(clips["x"][keep], clips["identity"][other][keep],
                                                               judge, candidates=held),
        "keypoint_err_real": keypoint_error(clips["x"], clips["keypoints"], judge),
        "keypoint_err_real_other_clip": keypoint_error(clips["x"], clips["keypoints"][other], judge),
        "fvd_judge_real_floor": frechet_distance(mu, sigma, *real_stats),
        "consistency_real": frame_consistency(clips["x"]),
        "psnr_real_other_clip": psnr(floor["x"], clips["x"]),
    }
    base_w = None
    if c.get("base_seed") is not None:
        base_w, _ = train_stage(cfg, "base", "base", int(c.base_seed))
    per_seed, gifs = timed_seeds(c.seeds, lambda s: seed_job(cfg, s, base_w, clips, judge, real_stats, held))
    summarise_seeds(per_seed, metrics)
    k = int(c.gif_videos)
    if k > 0:
        cols = {"reference": clips["reference"][:k], "pose": clips["pose_map"][:k], "refnet+mm": gifs[
            "refnet_video"][:k], "refnet": gifs["refnet_frames"][:k], "embed": gifs["embed_frames"][:k],
            "truth": clips["x"][:k]}
        save_labelled_columns(cols, Path(cfg.run_dir) / "grid.gif", fps=4, scale=4)
    record = finish(cfg, metrics, paper="animate_anyone", claim=str(c.name), t0=t0, artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_samples": n,
                           "judge_sha256": avatar_judge_sha256("puppets", c.judge_path)})
    return record
