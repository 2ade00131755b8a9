"""Video LDM claim check (PAPERS.md, ``video_ldm``) on MovingDigits (8 frames at 16x16, one digit).

Protocol (``cfg.claim``, fixed before any outcome was seen). For each seed, one stage after the other:

1. *Autoencoder*: the tiny KL autoencoder trained on single frames (``autoencoder_steps``).
2. *Image LDM* (Sec. 3): the U-Net of ``model.image`` trained on the autoencoder's latents of single frames
   (``image_steps``; a batch of clips is trained as B·T independent frames).
3. *Video LDM* (Sec. 3.1): the image U-Net inflated with alpha-blended temporal layers, 2D weights frozen,
   temporal layers trained on latent clips (``trainer.max_steps``).
4. *Transfer* (Sec. 4.1.2, Fig. 6): the image LDM fine-tuned (all 2D weights) on a digit subset
   (``style_digits``, ``style_steps``); the temporal layers of stage 3 are put on top of it unchanged.
5. *Temporal decoder* (Sec. 3.1.1): alpha-blended temporal convolutions in the decoder trained on video
   reconstructions (L1; encoder and 2D decoder frozen) for ``decoder_steps``.

Evaluation (same sampler and noise seeds for the models compared): ``num_samples`` videos per model.

* ``fvd_judge_*``: Fréchet distance of the video judge's features to ``num_samples`` real test videos.
* ``consistency_*``: mean cosine similarity of consecutive frames (pixels; ``frame_consistency``).
* ``fd_static_*`` — the *per-frame* quality: every frame of every video repeated into a static 8-frame clip,
  judged by the video judge, Fréchet distance to static clips of real test frames. Static clips hold no
  motion, so the distance sees frame content alone (the FID analogue of the paper's per-frame FID).
* ``identity_agreement_*`` (added after the first run, a diagnostic without a threshold): fraction of
  consecutive frames whose digit class the judge (static clips) gives alike.
* ``domain_*``: fraction of videos the judge's digit head puts in ``style_digits``.
* ``flicker_rec_*``: temporal-difference error of reconstructions of real test videos,
  mean |(x̂_{t+1} − x̂_t) − (x_{t+1} − x_t)|, per-frame decoder vs temporal decoder (same latents).

The real-vs-real floors compare two disjoint real test sets of ``num_samples`` videos.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from papers.video_ldm.data import DigitSubsetMovingDigits
from papers.video_ldm.module import swap_spatial_weights
from shared.engine.claims import finish, fit_variant, seed_job_config, summarise, world_items
from shared.engine.parallel import map_jobs
from shared.engine.video_io import save_video_grid
from shared.metrics.frechet import frechet_distance, gaussian_stats
from shared.metrics.video import frame_consistency, psnr
from shared.metrics.video_judge import (
    fvd_judge,
    judge_sha256,
    load_video_judge,
    video_judge_features,
    video_judge_logits,
)
from shared.nn.temporal_mix import merge_alphas
from shared.nn.weights import save_weights


def real_videos(cfg: DictConfig, n: int, seed: int, digits=None) -> torch.Tensor:
    """``n`` held-out test videos of the claim's world (only ``digits`` classes if given)."""
    if digits is None:
        return world_items(cfg, n, seed)
    return world_items(cfg, n, seed, world=DigitSubsetMovingDigits, digits=list(digits))


def static_clips(videos: torch.Tensor) -> torch.Tensor:
    """Every frame of (B, C, T, H, W) videos as a static T-frame clip: (B·T, C, T, H, W)."""
    b, c, t, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, 1, h, w)
    return frames.expand(-1, -1, t, -1, -1).contiguous()


def static_stats(videos: torch.Tensor, judge) -> tuple:
    return gaussian_stats(video_judge_features(static_clips(videos), judge))


def fd_static(videos: torch.Tensor, ref_stats: tuple, judge) -> float:
    """Per-frame FD_judge: static clips of each frame vs static clips of real frames."""
    return frechet_distance(*static_stats(videos, judge), *ref_stats)


def flicker(recon: torch.Tensor, real: torch.Tensor) -> float:
    """Temporal-difference error mean |Δ_t x̂ − Δ_t x| (0 iff the reconstruction's frame-to-frame change is
    the real one; a per-frame error that changes from frame to frame, i.e. flicker, raises it)."""
    d_hat = recon[:, :, 1:] - recon[:, :, :-1]
    d = real[:, :, 1:] - real[:, :, :-1]
    return float((d_hat - d).abs().mean())


def identity_agreement(videos: torch.Tensor, judge) -> float:
    """Fraction of consecutive frame pairs whose digit the judge classifies alike (each frame judged as a static
    clip): 1 when a video keeps its digit's identity. Added after the first run, as a diagnostic."""
    b, t = videos.shape[0], videos.shape[2]
    pred = video_judge_logits(static_clips(videos), "digit", judge).argmax(dim=1).view(b, t)
    return float((pred[:, 1:] == pred[:, :-1]).float().mean())


def in_domain(videos: torch.Tensor, digits, judge) -> float:
    pred = video_judge_logits(videos, "digit", judge).argmax(dim=1)
    return float(torch.isin(pred, torch.tensor(list(digits))).float().mean())


def ema_net(module):
    return module.sampling_net(True)


def seed_job(cfg_dict: dict, seed: int) -> dict:
    """All stages of one seed, then the scores; returns that seed's metrics."""
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    run_dir, out = Path(cfg.run_dir), {}
    weights = run_dir / f"weights_seed{seed}"
    judge = load_video_judge(c.judge_path or None)
    real = real_videos(cfg, int(c.num_samples), int(c.real_seed))
    real_static = static_stats(real, judge)
    times: dict[str, float] = {}

    def stage(name, overrides):
        ts = time.time()
        # the stage templates interpolate the default module's nodes, which a stage may replace
        overrides = {**overrides, "claim.autoencoder_module": None, "claim.decoder_module": None}
        module = fit_variant(cfg, f"{name}_seed{seed}", overrides, seed)
        times[name] = time.time() - ts
        return module

    # 1. autoencoder on frames
    ae_cfg = OmegaConf.to_container(c.autoencoder_module, resolve=True)
    ae = stage("autoencoder", {"module": ae_cfg, "trainer.max_steps": int(c.autoencoder_steps),
                               "data.batch_size": int(c.autoencoder_batch_size)})
    ae_file = save_weights(ae.net, weights / "autoencoder.safetensors")
    latent_ae = {"module.latent.autoencoder.weights_path": str(ae_file)}

    # 2. image LDM on latent frames
    image_model = OmegaConf.to_container(cfg.model.image, resolve=True)
    image = stage("image_ldm", {**latent_ae, "model": image_model, "module.frames_as_images": True,
                                "trainer.max_steps": int(c.image_steps)})
    image_file = save_weights(ema_net(image), weights / "image_unet.safetensors")
    scale = image.latent.scale_factor
    fixed_latent = {**latent_ae, "module.latent.scale_factor": scale}

    # 3. temporal layers on latent clips, 2D frozen
    video = stage("video_ldm", {**fixed_latent, "model.image_weights": str(image_file)})
    out["alpha_mean"] = sum(a := list(merge_alphas(ema_net(video)).values())) / len(a)

    # 4. the image LDM fine-tuned on the digit subset; the temporal layers plugged in unchanged
    subset = {"data.train._target_": "papers.video_ldm.data.DigitSubsetMovingDigits",
              "data.val._target_": "papers.video_ldm.data.DigitSubsetMovingDigits",
              "data.train.digits": list(c.style_digits), "data.val.digits": list(c.style_digits)}
    style_model = {"_target_": "papers.video_ldm.module.load_image_net", "net": image_model,
                   "weights": str(image_file)}
    style = stage("style_ldm", {**fixed_latent, **subset, "model": style_model, "module.frames_as_images": True,
                                "trainer.max_steps": int(c.style_steps)})
    transfer = copy.deepcopy(video)
    style_state = ema_net(style).state_dict()
    for net in (transfer.net, transfer.ema.model if transfer.ema is not None else None):
        if net is not None:
            swap_spatial_weights(net, style_state)

    # 5. temporal decoder
    dec_cfg = OmegaConf.to_container(c.decoder_module, resolve=True)
    dec_cfg["net"]["autoencoder"]["weights_path"] = str(ae_file)
    decoder = stage("temporal_decoder", {"module": dec_cfg, "trainer.max_steps": int(c.decoder_steps)})
    out.update({f"train_time_s_{k}": v for k, v in times.items()})

    # ---- sampling: the same initial noise for the models compared
    n, sampler = int(c.num_samples), dict(c.sampler)
    x_T = torch.randn((n, *video.sample_shape), generator=torch.Generator().manual_seed(int(c.sample_seed) + seed))
    samples, latents = {}, {}
    for name, module in (("per_frame", image), ("video", video), ("style_per_frame", style),
                         ("transfer", transfer)):
        ts = time.time()
        z = module.sample(x_T=x_T, sampler=sampler, generator=torch.Generator().manual_seed(seed), decode=False)
        latents[name], samples[name] = z, module.latent.decode(z).clamp(-1, 1)
        out[f"sample_time_s_{name}"] = time.time() - ts

    for name in ("per_frame", "video"):
        x = samples[name]
        out[f"fvd_judge_{name}"] = fvd_judge(x, real, judge)
        out[f"consistency_{name}"] = frame_consistency(x)
        out[f"fd_static_{name}"] = fd_static(x, real_static, judge)
        out[f"identity_agreement_{name}"] = identity_agreement(x, judge)
    out["consistency_real"] = frame_consistency(real)
    out["ratio_fvd_video_to_per_frame"] = out["fvd_judge_video"] / out["fvd_judge_per_frame"]

    real_subset = real_videos(cfg, n, int(c.real_seed), digits=c.style_digits)
    for name in ("style_per_frame", "transfer"):
        x = samples[name]
        out[f"consistency_{name}"] = frame_consistency(x)
        out[f"domain_{name}"] = in_domain(x, c.style_digits, judge)
        out[f"identity_agreement_{name}"] = identity_agreement(x, judge)
        out[f"fvd_judge_{name}"] = fvd_judge(x, real_subset, judge)
    out["domain_video"] = in_domain(samples["video"], c.style_digits, judge)

    # ---- temporal decoder: reconstructions of real test videos, same latents for both decoders
    rec_real = real_videos(cfg, n, int(c.recon_seed))
    with torch.no_grad():
        z = decoder.net.encode(rec_real).mode()
        rec = {"frame": decoder.net.autoencoder.decode(z).clamp(-1, 1),
               "temporal": decoder.net.decode(z).clamp(-1, 1)}
        zs = latents["video"] / scale + float(video.latent.shift)  # Video LDM samples through both decoders
        dec_samples = {"frame": decoder.net.autoencoder.decode(zs).clamp(-1, 1),
                       "temporal": decoder.net.decode(zs).clamp(-1, 1)}
    for name, x in rec.items():
        out[f"flicker_rec_{name}"] = flicker(x, rec_real)
        out[f"psnr_rec_{name}"] = psnr(x, rec_real)
        out[f"fvd_judge_rec_{name}"] = fvd_judge(x, real, judge)
        out[f"consistency_samples_decoder_{name}"] = frame_consistency(dec_samples[name])

    if seed == c.seeds[0]:
        k = int(c.gif_videos)
        save_video_grid(torch.cat([samples["per_frame"][:k], samples["video"][:k]]), run_dir / "per_frame_vs_video.gif",
                        nrow=k, fps=4, scale=2)
        save_video_grid(torch.cat([samples["style_per_frame"][:k], samples["transfer"][:k]]),
                        run_dir / "style_per_frame_vs_transfer.gif", nrow=k, fps=4, scale=2)
        save_video_grid(torch.cat([rec_real[:k], rec["frame"][:k], rec["temporal"][:k]]),
                        run_dir / "decoder_real_frame_temporal.gif", nrow=k, fps=4, scale=2)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    n = int(c.num_samples)
    real = real_videos(cfg, n, int(c.real_seed))
    other = real_videos(cfg, n, int(c.floor_seed))
    metrics: dict = {
        "fvd_judge_real_floor": fvd_judge(other, real, judge),
        "fd_static_real_floor": fd_static(other, static_stats(real, judge), judge),
        "identity_agreement_real": identity_agreement(real, judge),
        "fvd_judge_subset_floor": fvd_judge(real_videos(cfg, n, int(c.floor_seed), c.style_digits),
                                            real_videos(cfg, n, int(c.real_seed), c.style_digits), judge),
        "domain_real_subset": in_domain(real_videos(cfg, n, int(c.real_seed), c.style_digits), c.style_digits,
                                        judge),
    }
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)  # unresolved, so ${run_dir} stays live
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    record = finish(cfg, metrics, paper="video_ldm", claim=str(c.name), t0=t0,
                    artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_samples": n, "judge_sha256": judge_sha256(c.judge_path)})
    return record
