"""VDM claim checks on the Sprites world (``experiments/vdm/sprites_*.yaml``), scored by the closed-form judge.

Why a second world: on MovingDigits (``claim.py``) joint training was worse than video-only and reconstruction guidance
tied replacement at 4 given frames — with a judge that read digit identity at chance on the models' frames. Sprites
(`shared.data.sprite_worlds`) have identities of strong colour and shape moving in straight lines, so the judge
(`shared.metrics.sprite_judge`) reads each clip's validity, identity and motion exactly, and a clip's continuation is
determined by its first frames (identity, velocity).

``claim.variants`` names the models trained per seed (same network, schedule, optimiser, batch, steps):

* ``image_only``: the network trained on single frames (``data.frames = 1``, ``image_batch_size`` frames per step) —
  sampled as clips its untrained temporal attention is the identity, so it is the per-frame baseline and its frame
  validity is the image floor (the protocol run);
* ``video_only``: clips alone; ``joint``: each clip with ``claim.extra_images`` independent frames of other clips
  appended (temporal attention masked; VDM Sec. 3.2 / Table 4).

Scores of ``num_samples`` unconditional clips per model (``claim.sampler``): the judge's ``frame_validity``,
``identity_consistent``, ``motion_coherent``, ``coherent`` and ``identity_coverage``.

Extension (VDM Sec. 3.1; with ``claim.extension_model``): ``num_extensions`` real test clips given their
``known_frames`` are completed by the replacement method and by reconstruction guidance (``w_r``, and each weight of
``w_r_sweep``), same noise: ``ext_coherent_*`` (the whole completed clip coherent: the generated frames keep the
given identity and continue the given straight-line motion), ``ext_identity_kept_*`` (every generated frame valid and
of the given identity), ``ext_position_error_*`` (px, ink centroid of every generated frame against the world's true
continuation), ``ext_psnr_*`` (generated frames vs the truth). Every score is finite (summaries need finite values).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.data.sprite_worlds import Sprites
from shared.diffusion.conditioning import frames_mask
from shared.engine.claims import finish, fit_variant, seed_job_config, summarise, world_items
from shared.engine.parallel import map_jobs
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import SpriteJudge, claim_judge, separation
from shared.metrics.video import psnr

VARIANTS = ("image_only", "video_only", "joint")


def judge_of(cfg: DictConfig) -> SpriteJudge:
    return claim_judge(cfg)


def real_clips(cfg: DictConfig, n: int, seed: int, **kwargs):
    return world_items(cfg, n, seed, world=Sprites, keys=("x", "y", "positions"), **kwargs)


def variant_overrides(cfg: DictConfig, variant: str) -> dict:
    c = cfg.claim
    if variant == "image_only":
        return {"data.frames": 1, "data.train.frames": 1, "data.val.frames": 1, "data.extra_images": 0,
                "data.batch_size": int(c.image_batch_size)}
    return {"data.extra_images": int(c.extra_images) if variant == "joint" else 0}


def extension_scores(judge: SpriteJudge, xe: torch.Tensor, ctx: torch.Tensor, ctx_y: torch.Tensor,
                     positions: torch.Tensor, unknown: list[int]) -> dict:
    """Scores of completed clips ``xe`` against the real clips ``ctx`` they extend (module docstring)."""
    clips = judge.clips(xe)
    f = clips["frames"]
    gen_valid = f["valid"][:, unknown].all(dim=1)
    kept = gen_valid & (f["identity"][:, unknown] == ctx_y[:, None]).all(dim=1)
    err = (f["centroid"][:, unknown] - positions[:, unknown]).norm(dim=-1).mean(dim=1)   # every generated frame
    return {"coherent": float(clips["coherent"].float().mean()), "identity_kept": float(kept.float().mean()),
            "position_error": float(err.mean()),
            "psnr": psnr(xe[:, :, unknown], ctx[:, :, unknown])}


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = judge_of(cfg)
    run_dir, out, samples = Path(cfg.run_dir), {}, {}
    wanted = list(c.variants)
    if unknown := [v for v in wanted if v not in VARIANTS]:
        raise ValueError(f"claim.variants: unknown {unknown}; choose from {list(VARIANTS)}")
    T = int(cfg.data.frames)
    for variant in wanted:
        ts = time.time()
        module = fit_variant(cfg, f"{variant}_seed{seed}", variant_overrides(cfg, variant), seed)
        out[f"train_time_s_{variant}"] = time.time() - ts
        g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
        x_T = torch.randn((int(c.num_samples), int(cfg.module.sample_shape[0]), T, *cfg.module.sample_shape[2:]),
                          generator=g)
        ts = time.time()
        x = module.sample(x_T=x_T, sampler=dict(c.sampler), generator=g)
        out[f"sample_time_s_{variant}"] = time.time() - ts
        out.update({f"{variant}_{k}": v for k, v in judge.scores(x).items()})
        samples[variant] = x
        if variant != c.get("extension_model"):
            continue
        ctx, ctx_y, pos = real_clips(cfg, int(c.num_extensions), int(c.context_seed))
        known = frames_mask(ctx.shape, list(c.known_frames))
        unknown_t = [t for t in range(T) if t not in set(c.known_frames)]
        weights = {"replacement": None, "reconstruction": float(c.w_r)}
        weights.update({f"reconstruction_wr{float(w):g}": float(w) for w in c.get("w_r_sweep") or []})
        for name, w_r in weights.items():
            g = torch.Generator().manual_seed(int(c.sample_seed) + 7 + int(seed))
            ts = time.time()
            method = "replacement" if w_r is None else "reconstruction"
            xe = module.extend(ctx, known, method=method, w_r=w_r or 1.0, sampler=dict(c.sampler), generator=g)
            out[f"ext_time_s_{name}"] = time.time() - ts
            scores = extension_scores(judge, xe, ctx, ctx_y, pos, unknown_t)
            out.update({f"ext_{k}_{name}": v for k, v in scores.items()})
            samples[f"ext_{name}"] = xe
        samples["ext_real"] = ctx
    if seed == c.seeds[0] and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        given = "frames " + ",".join(str(t + 1) for t in c.get("known_frames") or [])
        labels = {"image_only": "image model,\nframe by frame", "video_only": "video-only\ntraining",
                  "joint": f"joint training\n(+{c.extra_images} images/clip)", "ext_real": "real clips",
                  "ext_replacement": f"replacement\n(given {given})",
                  "ext_reconstruction": f"reconstruction\nguidance, w_r={float(c.get('w_r') or 0):g}"}
        real = real_clips(cfg, k, int(c.real_seed))[0]
        rows = [("real test clips", real)] + [(labels[v], samples[v][:k]) for v in VARIANTS if v in samples]
        save_labelled_rows(rows, run_dir / "samples.gif", fps=4, scale=3, frame_counter=True)
        if "ext_real" in samples:
            rows = [(labels[v], samples[v][:k]) for v in ("ext_real", "ext_replacement", "ext_reconstruction")]
            save_labelled_rows(rows, run_dir / "extension.gif", fps=4, scale=3, frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = judge_of(cfg)
    n, T = int(c.num_samples), int(cfg.data.frames)
    real = real_clips(cfg, n, int(c.real_seed))[0]
    swapped = real_clips(cfg, n, int(c.real_seed), identity_swap_at=T // 2)[0]
    metrics: dict = {"separation": separation(judge, real, swapped, seed=int(c.real_seed))}
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    if "joint_coherent" in per_seed[0] and "video_only_coherent" in per_seed[0]:
        metrics["joint_minus_video_only_coherent"] = summarise(
            [r["joint_coherent"] - r["video_only_coherent"] for r in per_seed])
    if "ext_coherent_reconstruction" in per_seed[0]:
        metrics["ext_coherent_gain"] = summarise(
            [r["ext_coherent_reconstruction"] - r["ext_coherent_replacement"] for r in per_seed])
    record = finish(cfg, metrics, paper="vdm", claim=str(c.name), t0=t0,
                    extra={"nfe": int(c.sampler.steps), "num_samples": n, "judge": "shared.metrics.sprite_judge"},
                    artifacts=("*.png", "*.gif"))
    return record
