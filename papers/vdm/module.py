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
  :mod:`shared.diffusion.conditioning`, through the shared sampling loop (any sampler, any module).

The numbers (sizes, schedule, optimiser, batch) live in ``experiments/vdm/*.yaml``.
"""
from __future__ import annotations

import torch

from shared.methods.conditions import PassThrough
from shared.methods.diffusion_module import DiffusionModule
from shared.methods.sampling import EXTENSION_METHODS


class VDM(DiffusionModule):
    """The base diffusion module with the frame mask of joint batches and conditional extension."""

    def default_conditions(self, net, text_encoder, conditions):
        declared = super().default_conditions(net, text_encoder, conditions)
        if not any(c.key == "frame_is_video" for c in declared):   # joint batches: images attend only to themselves
            declared.append(PassThrough("frame_is_video"))
        return declared

    @torch.no_grad()
    def extend(self, x_known: torch.Tensor, known: torch.Tensor, method: str = "reconstruction",
               w_r: float = 1.0, sampler: dict | None = None, generator: torch.Generator | None = None,
               use_ema: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Sample the entries where ``known`` is False given ``x_known`` where it is True (VDM Sec. 3.1), with the
        shared loop's completion (``sampler.extension``, ``sampler.w_r``).

        ``x_known`` and ``known`` are (B, C, T, H, W); returns the completed videos (known entries exact).
        """
        if method not in EXTENSION_METHODS:
            raise ValueError(f"method must be one of {EXTENSION_METHODS}, got {method!r}")
        x_known, known = x_known.to(self.device), known.to(self.device).expand_as(x_known)
        x_T = torch.randn(x_known.shape, generator=generator, device=self.device)
        return self.sample(x_T=x_T, cond={"x_known": x_known, "known": known},
                           sampler={**(sampler or {}), "extension": method, "w_r": float(w_r)},
                           generator=generator, use_ema=use_ema, batch_size=batch_size)
