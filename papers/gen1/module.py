"""Gen-1 — Structure and Content-Guided Video Synthesis with Diffusion Models (Esser, Chiu, Atighehchian, Granskog &
Germanidis, ICCV 2023).

* Latent video diffusion (Sec. 3.1-3.2): an image U-Net with temporal layers after its spatial stages (temporal
  convolutions and temporal self-attention, ``shared.nn.video``), trained in a frozen autoencoder's latent space
  (``shared.methods.latent_module``; wrap :class:`Gen1` with ``latent_diffusion(base=...)``).
* Joint image-video training (Sec. 3.2: images are videos whose temporal layers are inactive): with probability
  ``image_prob`` a training clip's frames are flagged as independent images (``frame_is_video`` false: temporal
  attention masked to each frame, temporal convolutions skipped), so one network is both the video model and the
  per-frame model.
* Conditioning (Sec. 3.3, Eq. 6), declared in the experiment config through the conditioning seam: the structure —
  depth of the input video obscured at a structure level ``t_s`` (``shared.nn.structure.StructureEncoder`` as a
  ``LevelCondition``: random levels in training, a chosen one at sampling) concatenated to the input
  (``shared.nn.structure.ConcatInputs``) — and the content — the image embedding of a frame
  (``shared.nn.image_embedding.ImageEmbedder``) in cross-attention. Each is dropped in training (classifier-free
  guidance on content, ``sampler.guidance_scale``; the dropped structure gives the content-only model).
* Temporal guidance (Sec. 3.4): the prediction of the video model is extrapolated away from that of the per-frame
  model, ``μ̃ = μ^π + ω_t (μ − μ^π)`` (``sampler.temporal_scale`` = ``ω_t``; ``ω_t = 1`` is the video model, bit for
  bit, a test checks), applied after content guidance. :meth:`Gen1.guided_network` is that wrapper.
* Editing a given video (Sec. 3.3, "given an input video y, ... sample z conditioned on s(y) and the new c"):
  :meth:`Gen1.edit` runs DDIM inversion (``shared.diffusion.samplers.ddim_invert``) of the input's latents under its
  own structure and content, then samples from that noise with the new content — only the content changes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from shared.diffusion.samplers import ddim_invert
from shared.methods.conditions import PassThrough
from shared.methods.diffusion_module import DiffusionModule

__all__ = ["Gen1", "temporal_guided"]


def temporal_guided(video: Callable, frames: Callable, omega_t: float) -> Callable:
    """``f(x, t) = frames(x, t) + ω_t (video(x, t) − frames(x, t))`` (Gen-1 Sec. 3.4); ``ω_t = 1`` returns ``video``
    itself."""
    omega_t = float(omega_t)
    if omega_t == 1.0:
        return video

    def guided(x, t, **kw):
        p = frames(x, t, **kw)
        return p + omega_t * (video(x, t, **kw) - p)

    return guided


class Gen1(DiffusionModule):
    """The diffusion module of Gen-1 (see the module docstring). ``image_prob``: share of training clips seen as
    independent images; ``temporal_scale``: the default ``ω_t`` of sampling."""

    def __init__(self, *args, image_prob: float = 0.25, temporal_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= float(image_prob) <= 1.0:
            raise ValueError(f"image_prob must be in [0, 1], got {image_prob!r}")
        self.image_prob, self.temporal_scale = float(image_prob), float(temporal_scale)
        self._omega_t = self.temporal_scale

    def default_conditions(self, net, text_encoder, conditions):
        declared = super().default_conditions(net, text_encoder, conditions)
        if not any(c.key == "frame_is_video" for c in declared):  # joint batches: per-item image/video flags
            declared.append(PassThrough("frame_is_video"))
        return declared

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict, generator: torch.Generator):
        x = batch["x"]
        if x.dim() == 5 and self.image_prob > 0 and "frame_is_video" not in batch:
            dev = generator.device if generator is not None else x.device
            is_video = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device) >= self.image_prob
            batch = {**batch, "frame_is_video": is_video[:, None].expand(-1, x.shape[2]).contiguous()}
        return super().training_loss(batch, generator)

    # ------------------------------------------------------------------ sampling
    def sampler_config(self, override: Mapping | None = None) -> dict:
        override = dict(override or {})
        omega_t = override.pop("temporal_scale", None)
        cfg = super().sampler_config(override)
        omega_t = self.temporal_scale if omega_t is None else omega_t
        try:
            omega_t = float(omega_t)
        except (TypeError, ValueError):
            omega_t = float("nan")
        if not torch.isfinite(torch.tensor(omega_t)):
            raise ValueError(f"sampler.temporal_scale must be a finite number, got {omega_t!r}")
        cfg["temporal_scale"] = omega_t
        return cfg

    def sample_batch(self, x_T, cond, sampler, generator, use_ema=True):
        sampler = dict(sampler)
        self._omega_t = float(sampler.pop("temporal_scale", self.temporal_scale))
        try:
            return super().sample_batch(x_T, cond, sampler, generator, use_ema)
        finally:
            self._omega_t = self.temporal_scale

    def guided_network(self, cond_kw: dict, uncond_kw: dict, guidance_scale, use_ema: bool = True) -> Callable:
        """Content guidance (the base seam), then temporal guidance with ``ω_t`` between the video model and the
        same network run frame by frame (every frame flagged as an image)."""
        video = super().guided_network(cond_kw, uncond_kw, guidance_scale, use_ema)
        if self._omega_t == 1.0:
            return video
        base = super().guided_network

        def frames(x, t, **kw):
            flags = torch.zeros(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
            if cond_kw:
                net = base({**cond_kw, "frame_is_video": flags}, {**uncond_kw, "frame_is_video": flags},
                           guidance_scale, use_ema)
                return net(x, t, **kw)
            return self.sampling_net(use_ema)(x, t, frame_is_video=flags, **kw)

        return temporal_guided(video, frames, self._omega_t)

    # ------------------------------------------------------------------ editing
    @torch.no_grad()
    def invert(self, x0: torch.Tensor, cond: Mapping, steps: int, use_ema: bool = True) -> torch.Tensor:
        """DDIM inversion of clean model-space samples ``x0`` (latents for a latent module) under ``cond``, to the
        noise of the sampler's first time (deterministic DDIM maps it back)."""
        den = self.denoiser(use_ema, cond, 1.0, clip=False)
        return ddim_invert(den, x0, self.schedule, int(steps))

    @torch.no_grad()
    def edit(self, video: torch.Tensor, source_cond: Mapping, new_cond: Mapping, sampler: Mapping | None = None,
             use_ema: bool = True) -> torch.Tensor:
        """Edit a given video's content: invert it (its latents, for a latent module) with deterministic DDIM under
        ``source_cond`` (its own structure and content), then sample from that noise under ``new_cond``
        (deterministic DDIM, ``sampler``'s steps and guidance)."""
        cfg = {**dict(sampler or {}), "name": "ddim", "eta": 0.0}
        steps = int(self.sampler_config(cfg)["steps"])
        z0 = self.encode_pixels(video, "the video to edit") if hasattr(self, "encode_pixels") else video
        x_T = self.invert(z0.to(self.device), source_cond, steps, use_ema)
        return self.sample(x_T=x_T, cond=new_cond, sampler=cfg, use_ema=use_ema)
