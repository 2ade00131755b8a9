"""One place that converts between model parameterisations.

With ``x_t = alpha x0 + sigma eps`` (any schedule):

* ``eps``  — noise prediction (DDPM, Ho et al. 2020, Eq. 11);
* ``x0``   — data prediction;
* ``v``    — ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, Sec. 4 / App. D);
* ``flow`` — rectified-flow velocity toward data, ``u = x0 - eps`` (Liu et al. 2023, Eq. 1 with data at
  ``t_rf = 1``).  For the flow schedule (``alpha + sigma = 1``) ``x0 = x_t + sigma u``.

``to_x0_eps`` maps a network output to ``(x0_hat, eps_hat)``; ``target`` gives the regression target of
each parameterisation for a training pair; ``make_denoiser`` wraps a network into the
``denoise(x_t, t) -> (x0_hat, eps_hat)`` callable every sampler uses.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from shared.diffusion.schedules import Schedule, _bcast

PREDICTIONS = ("eps", "x0", "v", "flow")


def _check(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {PREDICTIONS}")


def to_x0_eps(out: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output of parameterisation ``kind`` to ``(x0_hat, eps_hat)``."""
    _check(kind)
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if kind == "eps":
        eps = out
        x0 = (x_t - s * eps) / a
    elif kind == "x0":
        x0 = out
        eps = (x_t - a * x0) / s.clamp_min(1e-12)
    elif kind == "v":  # alpha^2 + sigma^2 = 1 for VP; general form divides by it
        norm = a**2 + s**2
        x0 = (a * x_t - s * out) / norm
        eps = (s * x_t + a * out) / norm
    else:  # flow: u = x0 - eps
        x0 = (x_t + s * out) / (a + s)
        eps = x0 - out
    return x0, eps


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                kind: str) -> torch.Tensor:
    """The value a perfect model of parameterisation ``kind`` outputs (= the training target)."""
    _check(kind)
    a, s = _bcast(alpha, x0), _bcast(sigma, x0)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    return x0 - eps


target = from_x0_eps


def make_denoiser(net: Callable[..., torch.Tensor], schedule: Schedule, prediction: str,
                  clip_x0: float | None = None, **net_kwargs) -> Callable:
    """Wrap ``net(x, t_net, **net_kwargs)`` into ``denoise(x_t, t) -> (x0_hat, eps_hat)``.

    ``t`` may be a scalar (one time for the batch) or a (B,) tensor. ``clip_x0`` clamps the data
    prediction to ``[-clip_x0, clip_x0]`` and recomputes eps from it (DDPM's sampler clips to [-1, 1]).
    """
    _check(prediction)

    def denoise(x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        alpha, sigma = schedule.alpha_sigma(t)
        out = net(x_t, schedule.net_time(t), **net_kwargs)
        x0, eps = to_x0_eps(out, x_t, alpha, sigma, prediction)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x_t - _bcast(alpha, x_t) * x0) / _bcast(sigma, x_t).clamp_min(1e-12)
        return x0, eps

    denoise.schedule = schedule
    return denoise
