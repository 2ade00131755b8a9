"""DDIM — Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021).

DDIM keeps DDPM's training objective (so any DDPM checkpoint works) and changes only the sampler: the
non-Markovian process of Eq. 12 with noise ``sigma_t(eta)`` (Eq. 16) on a sub-sequence of S times
(Sec. 4.2). ``eta = 0`` is deterministic and makes ``x_T`` a latent code: it can be inverted (Sec. 5.4,
running the ODE of Eq. 14 backwards) and interpolated (Sec. 5.3, spherical interpolation of ``x_T``).

The sampler itself is ``shared.diffusion.samplers.ddim_sample``; inversion ``ddim_invert``.
"""
from __future__ import annotations

import torch

from shared.diffusion.samplers import ddim_invert, ddim_sample
from shared.methods.diffusion_module import DiffusionModule


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (DDIM Sec. 5.3 / App. D.5) between two latents, for each ``alpha`` in [0, 1].

    ``z0``, ``z1``: (C, H, W); ``alpha``: (K,) → (K, C, H, W).
    """
    a, b = z0.flatten(), z1.flatten()
    theta = torch.arccos((a @ b) / (a.norm() * b.norm()))
    w0 = torch.sin((1 - alpha) * theta) / torch.sin(theta)
    w1 = torch.sin(alpha * theta) / torch.sin(theta)
    return (w0[:, None] * a[None] + w1[:, None] * b[None]).reshape(-1, *z0.shape)


class DDIM(DiffusionModule):
    """A DDPM-trained model sampled with DDIM; adds inversion, reconstruction and latent interpolation."""

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int, use_ema: bool = True) -> torch.Tensor:
        return ddim_invert(self.denoiser(use_ema), x0, self.schedule, steps)

    @torch.no_grad()
    def decode(self, x_T: torch.Tensor, steps: int, use_ema: bool = True) -> torch.Tensor:
        return ddim_sample(self.denoiser(use_ema), x_T, self.schedule, steps, eta=0.0)

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, steps: int, use_ema: bool = True) -> torch.Tensor:
        return self.decode(self.invert(x0, steps, use_ema), steps, use_ema)

    @torch.no_grad()
    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, num: int, steps: int, use_ema: bool = True):
        return self.decode(slerp(z0, z1, torch.linspace(0, 1, num)), steps, use_ema)
