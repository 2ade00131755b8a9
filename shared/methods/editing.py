"""Editing by deterministic DDIM inversion (Song et al. 2021, Sec. 4.3 / 5.4): data ``x0`` is run backwards to
``x_T`` under its own condition (no guidance: inversion is exact only for the unguided ODE, and without x0
clipping), then ``x_T`` is sampled forwards again under another condition (classifier-free guided). Tune-A-Video
(Wu et al. 2023, Sec. 4.2) edits a video this way after tuning on it; ``python -m shared.engine.generate
task=invert`` does it for one image, ``python -m shared.engine.edit`` for a video checkpoint.

``module`` is a :class:`shared.methods.diffusion_module.DiffusionModule` (pixel or latent space: ``x0`` is in the
space the network denoises); ``cond`` a raw condition batch (``{"y": labels}``, ``{"caption": [...]}``, ...).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from shared.diffusion.samplers import ddim_invert, ddim_sample

__all__ = ["invert", "regenerate", "invert_and_edit"]


@torch.no_grad()
def invert(module, x0: torch.Tensor, cond: Mapping, steps: int, use_ema: bool = True) -> torch.Tensor:
    """``x_T`` of ``x0`` under ``cond``: DDIM run backwards with ``steps`` steps, unguided and unclipped."""
    return ddim_invert(module.denoiser(use_ema, cond, 1.0, clip=False), x0, module.schedule, int(steps))


@torch.no_grad()
def regenerate(module, x_T: torch.Tensor, cond: Mapping, steps: int, guidance_scale=1.0,
               use_ema: bool = True) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from ``x_T`` under ``cond``, guided at ``guidance_scale``."""
    return ddim_sample(module.denoiser(use_ema, cond, guidance_scale), x_T, module.schedule, int(steps))


@torch.no_grad()
def invert_and_edit(module, x0: torch.Tensor, source: Mapping, target: Mapping, steps: int, guidance_scale=1.0,
                    use_ema: bool = True) -> torch.Tensor:
    """Invert ``x0`` under ``source``, then sample it back under ``target`` (guided)."""
    return regenerate(module, invert(module, x0, source, steps, use_ema), target, steps, guidance_scale, use_ema)
