"""Video LDM claim check on the Sprites world (``experiments/video_ldm/sprites_claim.yaml``).

Why a second world: on MovingDigits (``claim.py``) the temporal layers raised pixel consistency but the digit's
identity across frames stayed at chance for both models — the 0.18M-parameter image LDM could not draw a digit's
identity reliably, so "coherent video" could not be tested. Sprites (`shared.data.sprite_worlds`) have a few
identities of strong colour and shape that a tiny image LDM draws well, and move in straight lines, so whether a
video keeps its identity and moves coherently is read exactly by the closed-form judge
(`shared.metrics.sprite_judge`).

Stages per seed (the same as ``claim.py``: autoencoder -> image LDM on frames -> frozen, temporal layers trained on
latent clips -> (a) the image LDM fine-tuned on a *new* identity (``claim.new_identity``, never in the base data:
the DreamBooth subject), the temporal layers plugged in unchanged; (b) the temporal decoder). ``claim.stop_after``
ends after a stage (``image_ldm``: the protocol run — the autoencoder's and the image LDM's floors only).

Scores (same initial noise for the models compared, ``claim.sampler``): the judge's ``frame_validity``,
``identity_consistent``, ``motion_coherent``, ``coherent``, ``identity_coverage`` of ``num_samples`` videos of each
model; ``domain_accuracy`` (valid frames showing the new identity) for the fine-tuned backbone; the autoencoder's
reconstructions of real clips (``ae_rec_*``: the latent space keeps what the judge reads); the temporal decoder's
flicker (as ``claim.py``). ``separation``: the judge on real test clips with and without each property.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from papers.video_ldm.claim import ema_net, flicker
from papers.video_ldm.module import swap_spatial_weights
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import finish, fit_variant, seed_job_config, summarise, world_items
from shared.engine.parallel import map_jobs
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import SpriteJudge, claim_judge, separation
from shared.metrics.video import psnr
from shared.nn.temporal_mix import merge_alphas
from shared.nn.weights import save_weights

STAGES = ("autoencoder", "image_ldm", "video_ldm", "style_ldm", "temporal_decoder")


def judge_of(cfg: DictConfig) -> SpriteJudge:
    """The closed-form judge over the base identities and the new one (its index: ``len(base)``)."""
    return claim_judge(cfg, [cfg.claim.new_identity])


def real_clips(cfg: DictConfig, n: int, seed: int, **kwargs) -> torch.Tensor:
    """``n`` test clips of the claim's world (base identities unless ``identities`` is given)."""
    return world_items(cfg, n, seed, world=Sprites, **kwargs)


def prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in scores.items()}


def seed_job(cfg_dict: dict, seed: int) -> dict:
    """The stages of one seed (up to ``claim.stop_after``), then the scores; returns that seed's metrics."""
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    stop = str(c.get("stop_after") or STAGES[-1])
    if stop not in STAGES:
        raise ValueError(f"claim.stop_after: unknown stage {stop!r}; choose from {list(STAGES)}")
    last = STAGES.index(stop)
    run_dir, out, times = Path(cfg.run_dir), {}, {}
    weights = run_dir / f"weights_seed{seed}"
    judge = judge_of(cfg)
    n = int(c.num_samples)
    new = [str(c.new_identity)]
    base_ids = list(cfg.data.train.identities)

    def stage(name, overrides):
        ts = time.time()
        overrides = {**overrides, "claim.autoencoder_module": None, "claim.decoder_module": None}
        module = fit_variant(cfg, f"{name}_seed{seed}", overrides, seed)
        times[name] = time.time() - ts
        return module

    # 1. autoencoder on frames of every identity (base and new: a general image codec, as SD's VAE)
    ae_cfg = OmegaConf.to_container(c.autoencoder_module, resolve=True)
    ae = stage("autoencoder", {"module": ae_cfg, "trainer.max_steps": int(c.autoencoder_steps),
                               "data.batch_size": int(c.autoencoder_batch_size),
                               "data.train.identities": base_ids + new})
    ae_file = save_weights(ae.net, weights / "autoencoder.safetensors")
    latent_ae = {"module.latent.autoencoder.weights_path": str(ae_file)}
    rec_real = real_clips(cfg, n, int(c.recon_seed))
    with torch.no_grad():
        ae.net.eval()
        rec = ae.net.decode(ae.net.encode(rec_real.transpose(1, 2).flatten(0, 1)).mode()).clamp(-1, 1)
        rec = rec.view(n, rec_real.shape[2], *rec.shape[1:]).transpose(1, 2)
    out.update(prefixed("ae_rec", judge.scores(rec)))
    out["ae_rec_psnr"] = psnr(rec, rec_real)

    # 2. image LDM on latent frames (base identities)
    image_model = OmegaConf.to_container(cfg.model.image, resolve=True)
    image = stage("image_ldm", {**latent_ae, "model": image_model, "module.frames_as_images": True,
                                "trainer.max_steps": int(c.image_steps)})
    image_file = save_weights(ema_net(image), weights / "image_unet.safetensors")
    scale = image.latent.scale_factor
    fixed_latent = {**latent_ae, "module.latent.scale_factor": scale}
    sampler = dict(c.sampler)
    x_T = torch.randn((n, *image.sample_shape), generator=torch.Generator().manual_seed(int(c.sample_seed) + seed))

    def draw(name, module):
        ts = time.time()
        z = module.sample(x_T=x_T, sampler=sampler, generator=torch.Generator().manual_seed(seed), decode=False)
        out[f"sample_time_s_{name}"] = time.time() - ts
        return z, module.latent.decode(z).clamp(-1, 1)

    samples = {}
    _, samples["per_frame"] = draw("per_frame", image)
    out.update(prefixed("per_frame", judge.scores(samples["per_frame"])))
    if last >= STAGES.index("video_ldm"):
        # 3. temporal layers on latent clips, 2D frozen
        video = stage("video_ldm", {**fixed_latent, "model.image_weights": str(image_file)})
        out["alpha_mean"] = sum(a := list(merge_alphas(ema_net(video)).values())) / len(a)
        z_video, samples["video"] = draw("video", video)
        out.update(prefixed("video", judge.scores(samples["video"])))
    if last >= STAGES.index("style_ldm"):
        # 4. the image LDM fine-tuned on the new identity; the temporal layers plugged in unchanged
        style_model = {"_target_": "papers.video_ldm.module.load_image_net", "net": image_model,
                       "weights": str(image_file)}
        style = stage("style_ldm", {**fixed_latent, "model": style_model, "module.frames_as_images": True,
                                    "data.train.identities": new, "data.val.identities": new,
                                    "trainer.max_steps": int(c.style_steps)})
        transfer = copy.deepcopy(video)
        style_state = ema_net(style).state_dict()
        for net in (transfer.net, transfer.ema.model if transfer.ema is not None else None):
            if net is not None:
                swap_spatial_weights(net, style_state)
        domain = [len(base_ids)]
        for name, module in (("style_per_frame", style), ("transfer", transfer)):
            _, samples[name] = draw(name, module)
            out.update(prefixed(name, judge.scores(samples[name], domain=domain)))
    if last >= STAGES.index("temporal_decoder"):
        # 5. temporal decoder: reconstructions of real test clips, same latents for both decoders
        dec_cfg = OmegaConf.to_container(c.decoder_module, resolve=True)
        dec_cfg["net"]["autoencoder"]["weights_path"] = str(ae_file)
        decoder = stage("temporal_decoder", {"module": dec_cfg, "trainer.max_steps": int(c.decoder_steps)})
        with torch.no_grad():
            z = decoder.net.encode(rec_real).mode()
            recs = {"frame": decoder.net.autoencoder.decode(z).clamp(-1, 1),
                    "temporal": decoder.net.decode(z).clamp(-1, 1)}
        for name, x in recs.items():
            out[f"flicker_rec_{name}"] = flicker(x, rec_real)
            out[f"psnr_rec_{name}"] = psnr(x, rec_real)
            out[f"rec_{name}_coherent"] = judge.scores(x)["coherent"]
    out.update({f"train_time_s_{k}": v for k, v in times.items()})

    if seed == c.seeds[0] and int(c.gif_videos) > 0:
        k = int(c.gif_videos)
        rows = [("real test clips", real_clips(cfg, k, int(c.real_seed))), ("image LDM,\nframe by frame", None),
                ("Video LDM\n(+ temporal layers)", None), (f"fine-tuned: {new[0]},\nframe by frame", None),
                ("fine-tuned +\nsame temporal layers", None)]
        keys = [None, "per_frame", "video", "style_per_frame", "transfer"]
        rows = [(label, v if key is None else samples[key][:k]) for (label, v), key in zip(rows, keys)
                if key is None or key in samples]
        save_labelled_rows(rows, run_dir / "grid.gif", fps=4, scale=3, frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = judge_of(cfg)
    n = int(c.num_samples)
    real = real_clips(cfg, n, int(c.real_seed))
    swapped = real_clips(cfg, n, int(c.real_seed), identity_swap_at=int(cfg.data.frames) // 2)
    metrics: dict = {"separation": separation(judge, real, swapped, seed=int(c.real_seed)),
                     "real_new_identity": judge.scores(real_clips(cfg, n, int(c.real_seed),
                                                                  identities=[str(c.new_identity)]),
                                                       domain=[len(cfg.data.train.identities)])}
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)  # unresolved, so ${run_dir} stays live
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    record = finish(cfg, metrics, paper="video_ldm", claim=str(c.name), t0=t0,
                    extra={"nfe": int(c.sampler.steps), "num_samples": n, "judge": "shared.metrics.sprite_judge"},
                    artifacts=("*.png", "*.gif"))
    return record
