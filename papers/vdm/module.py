"""VDM — Video Diffusion Models (Ho, Salimans, Gritsenko, Chan, Norouzi & Fleet, NeurIPS 2022).

* Model (Sec. 3, Fig. 1): the factorised space-time 3D U-Net, i.e. an image U-Net with space-only
  convolutions and spatial attention plus temporal attention with relative position embeddings
  (:func:`shared.nn.video.video_unet`); continuous-time cosine schedule (``CosineVP``), the data prediction
  learned through the ``v`` (or ``eps``) parameterisation with the unweighted MSE of that target (Sec. 2).
* Joint image-video training (Sec. 3.2 / 4.3): each training video arrives with ``extra_images``
  independent frames of other videos appended along time (``shared.data.video_datamodule``); the batch's
  ``frame_is_video`` flags reach every temporal layer through the U-Net's ``ctx``, which masks temporal
  attention so the images attend only to themselves. The loss covers video and image frames alike.
* Conditional sampling for extension (Sec. 3.1): :meth:`VDM.extend` generates the unknown frames given
  known ones with the replacement method or reconstruction guidance (Eq. 7, weighting ``w_r``), both from
  :mod:`shared.diffusion.conditioning` and run by any shared sampler.

The numbers (sizes, schedule, optimiser, batch) live in ``experiments/vdm/*.yaml``.
"""
from __future__ import annotations

import torch

from shared.diffusion.conditioning import reconstruction_guided_denoiser, replacement_denoiser
from shared.diffusion.losses import diffusion_loss
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import sample as run_sampler
from shared.engine.module import DiffusionModule, sampler_kwargs

EXTENSION_METHODS = ("replacement", "reconstruction")


class VDM(DiffusionModule):
    """The base diffusion module with the frame mask of joint batches and conditional extension."""

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        kw = {}
        if batch.get("frame_is_video") is not None:
            kw["frame_is_video"] = batch["frame_is_video"]
        return diffusion_loss(self.net, batch["x"], self.schedule, self.prediction, self.loss_weighting,
                              generator=generator, **kw)

    @torch.no_grad()
    def extend(self, x_known: torch.Tensor, known: torch.Tensor, method: str = "reconstruction",
               w_r: float = 1.0, sampler: dict | None = None, generator: torch.Generator | None = None,
               use_ema: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Sample the entries where ``known`` is False given ``x_known`` where it is True (VDM Sec. 3.1).

        ``x_known`` and ``known`` are (B, C, T, H, W); returns the completed videos (known entries exact).
        """
        if method not in EXTENSION_METHODS:
            raise ValueError(f"method must be one of {EXTENSION_METHODS}, got {method!r}")
        cfg = {**self.sampler_cfg, **(sampler or {})}
        name, steps = cfg.pop("name"), cfg.pop("steps")
        x_known, known = x_known.to(self.device), known.to(self.device).expand_as(x_known)
        x_T = torch.randn(x_known.shape, generator=generator, device=self.device)
        base = make_denoiser(self.sampling_net(use_ema), self.schedule, self.prediction, clip_x0=None)
        outs = []
        for i in range(0, x_known.shape[0], batch_size):
            xa, kn = x_known[i:i + batch_size], known[i:i + batch_size]
            if method == "replacement":
                den = replacement_denoiser(base, xa, kn, self.schedule, generator, self.clip_x0)
            else:
                den = reconstruction_guided_denoiser(base, xa, kn, self.schedule, w_r, True, generator,
                                                     self.clip_x0)
            kw = sampler_kwargs(name, {**cfg, "generator": generator})
            outs.append(run_sampler(name, den, x_T[i:i + batch_size], self.schedule, steps, **kw))
        return torch.where(known, x_known, torch.cat(outs))
