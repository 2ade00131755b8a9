"""Conditional sampling of part of a sample given the rest: video extension, frame conditioning.

Video Diffusion Models (Ho et al. 2022, Sec. 3.1). A sample ``x = [x^a, x^b]`` is split by a boolean
``known`` mask (True on ``x^a``, the given frames) and ``x^b`` is drawn from a model trained only on
unconditional data. Both methods are *denoiser wrappers*: they take the
``denoise(z_t, t) -> (x0_hat, eps_hat)`` of :func:`shared.diffusion.parameterization.make_denoiser` and
return one with the same signature, so every sampler of :mod:`shared.diffusion.samplers` runs them.

* :func:`replacement_denoiser` — the *replacement method* (Song et al. 2021, App. I; VDM Sec. 3.1): at
  every step the ``a`` part of ``z_t`` is replaced by a fresh sample of ``q(z_t^a | x^a) =
  N(alpha_t x^a, sigma_t^2 I)`` and the model denoises the whole; ``x^b`` is only coupled to ``x^a``
  through ``z_t^a``, which VDM shows is not enough for coherent continuations.
* :func:`reconstruction_guided_denoiser` — *reconstruction guidance* (VDM Eq. 7): with the Gaussian
  approximation ``q(x^a | z_t) ≈ N(x̂^a_θ(z_t), (sigma_t^2 / alpha_t^2) I)`` the conditional data
  prediction is

      x̃^b_θ(z_t) = x̂^b_θ(z_t) − (w_r alpha_t / 2) ∇_{z^b_t} ||x^a − x̂^a_θ(z_t)||²_2,

  with weighting ``w_r`` (``w_r = 1`` is the approximation itself; the paper finds ``w_r > 1`` better).
  The ``a`` part is also replaced as above (``replace=True``) and ``x̃^a = x^a``; ``eps`` is recomputed
  from ``x̃`` so ``z_t = alpha_t x̃ + sigma_t eps̃`` holds for the samplers.

Pass the *unclipped* denoiser and clip here (``clip_x0``): clipping before the gradient would zero it
where the prediction saturates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from shared.diffusion.schedules import Schedule, _bcast

Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _tvec(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def frames_mask(shape: Sequence[int], known_frames: Sequence[int]) -> torch.Tensor:
    """Bool mask of ``shape`` (B, C, T, H, W), True on the frames listed in ``known_frames``."""
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    mask[:, :, list(known_frames)] = True
    return mask


def noised_known(x_a: torch.Tensor, known: torch.Tensor, z: torch.Tensor, t: torch.Tensor, schedule: Schedule,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``z`` with its known part replaced by a fresh draw of ``q(z_t^a | x^a)``."""
    a, s = schedule.alpha_sigma(t)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    za = _bcast(a, z).to(z.dtype) * x_a + _bcast(s, z).to(z.dtype) * noise
    return torch.where(known, za, z)


def _finish(z, x0, t, schedule, clip_x0):
    a, s = schedule.alpha_sigma(t)
    a, s = _bcast(a, z).to(z.dtype), _bcast(s, z).to(z.dtype)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    eps = (z - a * x0) / s.clamp_min(1e-12)
    return x0, eps


def replacement_denoiser(denoise: Denoiser, x_a: torch.Tensor, known: torch.Tensor, schedule: Schedule,
                         generator: torch.Generator | None = None, clip_x0: float | None = 1.0) -> Denoiser:
    """The replacement method as a denoiser (module docstring). ``x_a`` holds the known values where
    ``known`` is True (other entries are ignored); both broadcast against the sample."""
    known = known.bool()

    def den(z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = _tvec(t, z)
        z = noised_known(x_a, known, z, t, schedule, generator)
        x0, _ = denoise(z, t)
        x0 = torch.where(known, x_a, x0)
        return _finish(z, x0, t, schedule, clip_x0)

    den.schedule = schedule
    return den


def reconstruction_guided_denoiser(denoise: Denoiser, x_a: torch.Tensor, known: torch.Tensor,
                                   schedule: Schedule, w_r: float = 1.0, replace: bool = True,
                                   generator: torch.Generator | None = None,
                                   clip_x0: float | None = 1.0) -> Denoiser:
    """Reconstruction guidance (VDM Eq. 7) as a denoiser; see the module docstring.

    The gradient of ``||x^a - x̂^a||^2`` (summed over the known entries of each sample) is taken with
    respect to the whole ``z_t`` and applied to the unknown part only.
    """
    known = known.bool()

    def den(z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = _tvec(t, z)
        if replace:
            z = noised_known(x_a, known, z, t, schedule, generator)
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            x0, _ = denoise(zg, t)
            err = torch.where(known, x_a - x0, torch.zeros_like(x0))
            grad = torch.autograd.grad(err.pow(2).sum(), zg)[0]
        a, _ = schedule.alpha_sigma(t)
        x0 = x0.detach() - _bcast(w_r * a / 2, z).to(z.dtype) * grad
        x0 = torch.where(known, x_a, x0)
        return _finish(z.detach(), x0, t, schedule, clip_x0)

    den.schedule = schedule
    return den
