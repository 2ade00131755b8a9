"""Training losses of the diffusion family, one function with a weighting by name.

``diffusion_loss`` draws ``t`` and ``eps``, forms ``x_t = alpha x0 + sigma eps``, asks the network for
its parameterisation and regresses the matching target (:mod:`shared.diffusion.parameterization`):

* ``simple`` — unweighted MSE of the network's own target (DDPM's L_simple, Ho et al. Eq. 14, when the
  prediction is ``eps``; the v-loss of Salimans & Ho; the flow-matching loss for ``flow``).
* ``vlb`` — DDPM's true variational-bound weighting of the eps-MSE for a discrete schedule with the
  fixed isotropic variance ``sigma_t^2 = beta_t`` (Ho et al. Eq. 12): ``beta_t / (2 alpha_t (1 - alpha_bar_t))``
  per step. We average over pixels instead of summing and normalise the weights to mean 1 over ``t`` so
  the learning rate means the same thing for both losses; ``L_0`` uses the same Gaussian form (the
  paper's discrete decoder is omitted) and the constant ``L_T`` is dropped.
* ``snr_trunc`` — ``max(SNR, 1)`` on the x0 error (Salimans & Ho, "truncated SNR" weighting).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from shared.diffusion.parameterization import from_x0_eps, to_x0_eps
from shared.diffusion.schedules import DiscreteVP, Schedule, _bcast

WEIGHTINGS = ("simple", "vlb", "snr_trunc")


def vlb_weights(schedule: DiscreteVP) -> torch.Tensor:
    """Per-step weights of DDPM's bound on the eps-MSE (float32, mean 1)."""
    betas = schedule.betas
    w = betas / (2 * (1 - betas) * (1 - schedule.alphas_cumprod))
    return (w / w.mean()).float()


def diffusion_loss(net: Callable[..., torch.Tensor], x0: torch.Tensor, schedule: Schedule, prediction: str,
                   weighting: str = "simple", generator: torch.Generator | None = None,
                   t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                   **net_kwargs) -> torch.Tensor:
    """Mean (over batch) of the weighted per-sample MSE between network output and its target."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    b = x0.shape[0]
    if t is None:
        t = schedule.sample_t(b, generator=generator, device=x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
    out = net(x_t, schedule.net_time(t), **net_kwargs)
    if weighting == "snr_trunc":
        x0_hat, _ = to_x0_eps(out, x_t, alpha, sigma, prediction)
        per = ((x0_hat - x0) ** 2).flatten(1).mean(1)
        snr = (alpha / sigma) ** 2
        return (per * snr.clamp_min(1.0)).mean()
    per = ((out - from_x0_eps(x0, eps, alpha, sigma, prediction)) ** 2).flatten(1).mean(1)
    if weighting == "vlb":
        if not isinstance(schedule, DiscreteVP) or prediction != "eps":
            raise ValueError("the 'vlb' weighting is defined for eps-prediction on a DiscreteVP schedule")
        per = per * vlb_weights(schedule).to(x0.device)[t.long()]
    return per.mean()
