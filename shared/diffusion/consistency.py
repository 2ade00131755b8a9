"""Consistency models (Song, Dhariwal, Chen & Sutskever, ICML 2023): the reusable pieces.

* :func:`consistency_scalings` is in :mod:`shared.diffusion.edm` (the boundary-condition ``c_skip``/``c_out``,
  Sec. 3 / App. C, used through ``EDMPrecond(boundary_eps=...)``).
* :func:`ct_num_scales` — the discretisation schedule ``N(k)`` of consistency training (App. C, Eq. under
  "Training details"): ``N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1``.
* :func:`ct_target_ema` — ``mu(k) = exp(s0 log(mu0) / N(k))``.
* Improved consistency training (Song & Dhariwal 2023, "Improved techniques for training consistency models",
  Sec. 3.2-3.5): :func:`ict_num_scales` — the exponential curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1``
  with ``K' = floor(K / (log2 floor(s1 / s0) + 1))`` (the number of boundaries doubles every ``K'`` steps);
  :func:`lognormal_pair_probs` — the lognormal noise schedule ``p(sigma_i) ∝ erf((log sigma_{i+1} - P_mean) /
  (sqrt(2) P_std)) - erf((log sigma_i - P_mean) / (sqrt(2) P_std))`` over adjacent boundary pairs;
  :func:`ict_weight` — ``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)``.
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


def ict_num_scales(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """``N(k)`` of improved CT: ``s0 + 1`` boundaries at first, doubling every ``K'`` steps up to ``s1 + 1``."""
    k_prime = max(1, math.floor(total / (math.log2(math.floor(s1 / s0)) + 1)))
    return int(min(s0 * 2 ** math.floor(max(k, 0) / k_prime), s1)) + 1


def lognormal_pair_probs(bounds: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """Probabilities (N - 1,) of training on the pair ``(sigma_i, sigma_{i+1})`` of ascending ``bounds`` (N,): the
    lognormal mass between the two sigmas, normalised (improved CT's noise schedule)."""
    cdf = torch.erf((torch.log(bounds.double()) - p_mean) / (math.sqrt(2.0) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0.0)
    return (p / p.sum()).to(bounds.dtype)


def ict_weight(t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)`` (improved CT): small noise levels weigh more."""
    return 1.0 / (t_next - t_cur)


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
