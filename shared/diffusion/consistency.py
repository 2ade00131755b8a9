"""Consistency models (Song, Dhariwal, Chen & Sutskever, ICML 2023): the reusable pieces.

* :func:`consistency_scalings` is in :mod:`shared.diffusion.edm` (the boundary-condition ``c_skip``/``c_out``,
  Sec. 3 / App. C, used through ``EDMPrecond(boundary_eps=...)``).
* :func:`ct_num_scales` — the discretisation schedule ``N(k)`` of consistency training (App. C, Eq. under
  "Training details"): ``N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1``.
* :func:`ct_target_ema` — ``mu(k) = exp(s0 log(mu0) / N(k))``.
* :func:`heun_between` — one Heun step of the probability-flow ODE ``dx/dt = (x - D(x, t)) / t`` between two sigmas
  (per-sample), the ODE solver of consistency distillation (Algorithm 2, ``Phi``).
* :func:`pseudo_huber` — ``sqrt(||x - y||^2 + c^2) - c`` (Song & Dhariwal 2023, "Improved techniques for training
  consistency models"), with ``c = 0.00054 sqrt(d)`` as there.
* :func:`multistep_consistency_sample` — Algorithm 1 (multistep consistency sampling) over any denoiser.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from shared.diffusion.schedules import _bcast


def ct_num_scales(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """``N(k)``: the number of discretisation boundaries at training step ``k`` of ``total``."""
    frac = min(max(k, 0), total) / max(total, 1)
    return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1)


def ct_target_ema(num_scales: int, s0: int = 2, mu0: float = 0.9) -> float:
    """``mu(k) = exp(s0 log(mu0) / N(k))``: the target network's EMA rate for ``N(k)`` boundaries."""
    return math.exp(s0 * math.log(mu0) / num_scales)


def heun_between(d_fn: Callable, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Heun step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` from sigma ``t`` to ``s`` (per-sample (B,) tensors,
    ``s > 0``). ``d_fn(x, sigma) -> D`` is the teacher's data prediction."""
    dt = _bcast(s - t, x)
    d1 = (x - d_fn(x, t)) / _bcast(t, x)
    x_e = x + dt * d1
    d2 = (x_e - d_fn(x_e, s)) / _bcast(s, x)
    return x + dt * 0.5 * (d1 + d2)


def euler_between(d_fn: Callable, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Euler step (= DDIM with eta 0 on the VE schedule) between per-sample sigmas ``t`` → ``s``."""
    return x + _bcast(s - t, x) * (x - d_fn(x, t)) / _bcast(t, x)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """Per-sample pseudo-Huber distance; ``c`` defaults to ``0.00054 sqrt(d)`` (improved CT)."""
    d = x[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else c
    return torch.sqrt(((x - y) ** 2).flatten(1).sum(1) + c**2) - c


@torch.no_grad()
def multistep_consistency_sample(denoise: Callable, x_T: torch.Tensor, times, eps: float = 0.002,
                                 generator: torch.Generator | None = None, return_trajectory: bool = False):
    """Algorithm 1 of Song et al. (2023). ``denoise(x_t, t) -> (x0_hat, ...)`` is the consistency function ``f``;
    ``times`` are descending sigmas, ``times[0] = T`` (``x_T`` is drawn at ``T``). One call per time (NFE = len(times)).
    Between calls the sample is re-noised to ``tau``: ``x_tau = x + sqrt(tau^2 - eps^2) z``."""
    times = [float(t) for t in torch.as_tensor(times).flatten()]
    if not times:
        raise ValueError("need at least one time")
    if any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"times must be strictly descending, got {times}")
    full = lambda t: torch.full((x_T.shape[0],), t, device=x_T.device, dtype=x_T.dtype)  # noqa: E731
    x = denoise(x_T, full(times[0]))[0]
    traj = [x]
    for tau in times[1:]:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_tau = x + math.sqrt(max(tau**2 - eps**2, 0.0)) * z
        x = denoise(x_tau, full(tau))[0]
        traj.append(x)
    return (x, traj) if return_trajectory else x
