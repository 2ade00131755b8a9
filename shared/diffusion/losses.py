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

``pixel_weight`` (optional, broadcastable to ``x0``) weights the squared error per element before the mean over
pixels (a region loss: :func:`point_region_weight` gives ``1 + weight`` in a box around a point per frame, ``1``
elsewhere, so ``weight = 0`` is the plain loss).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from shared.diffusion.parameterization import from_x0_eps, to_x0_eps
from shared.diffusion.schedules import DiscreteVP, Schedule, _bcast

WEIGHTINGS = ("simple", "vlb", "snr_trunc")


def point_region_weight(points: torch.Tensor, shape, half_size: float, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + weight * [pixel centre within half_size of the point]`` (a square box, in
    normalised image coordinates) for ``points`` (B, 2) or (B, T, 2) of normalised (x, y) in [0, 1] and samples of
    ``shape`` (B, C, H, W) or (B, C, T, H, W); returns (B, 1, H, W) or (B, 1, T, H, W)."""
    if weight < 0 or half_size <= 0:
        raise ValueError(f"a region loss needs weight >= 0 and half_size > 0, got {weight} / {half_size}")
    h, w = int(shape[-2]), int(shape[-1])
    video = len(shape) == 5
    pts = points.float()
    if video and pts.ndim == 2:
        pts = pts[:, None].expand(-1, int(shape[2]), -1)
    if pts.shape[-1] != 2 or (pts.ndim != (3 if video else 2)) or pts.shape[0] != shape[0] or \
            (video and pts.shape[1] != shape[2]):
        raise ValueError(f"region points {tuple(points.shape)} do not fit samples {tuple(shape)}")
    ys = (torch.arange(h, dtype=torch.float32, device=pts.device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=pts.device) + 0.5) / w
    inside_x = (xs - pts[..., 0:1]).abs() <= half_size          # (B[, T], W)
    inside_y = (ys - pts[..., 1:2]).abs() <= half_size          # (B[, T], H)
    box = (inside_y[..., :, None] & inside_x[..., None, :]).float()
    return (1.0 + float(weight) * box).unsqueeze(1)


def vlb_weights(schedule: DiscreteVP) -> torch.Tensor:
    """Per-step weights of DDPM's bound on the eps-MSE (float32, mean 1)."""
    betas = schedule.betas
    w = betas / (2 * (1 - betas) * (1 - schedule.alphas_cumprod))
    return (w / w.mean()).float()


def _weighted(sq: torch.Tensor, pixel_weight: torch.Tensor | None) -> torch.Tensor:
    return sq if pixel_weight is None else sq * pixel_weight.to(sq.dtype)


def diffusion_loss(net: Callable[..., torch.Tensor], x0: torch.Tensor, schedule: Schedule, prediction: str,
                   weighting: str = "simple", generator: torch.Generator | None = None,
                   t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                   pixel_weight: torch.Tensor | None = None, **net_kwargs) -> torch.Tensor:
    """Mean (over batch) of the weighted per-sample MSE between network output and its target (``pixel_weight``:
    per-element weights of the squared error, module docstring)."""
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
        per = _weighted(((x0_hat - x0) ** 2), pixel_weight).flatten(1).mean(1)
        snr = (alpha / sigma) ** 2
        return (per * snr.clamp_min(1.0)).mean()
    per = _weighted((out - from_x0_eps(x0, eps, alpha, sigma, prediction)) ** 2, pixel_weight).flatten(1).mean(1)
    if weighting == "vlb":
        if not isinstance(schedule, DiscreteVP) or prediction != "eps":
            raise ValueError("the 'vlb' weighting is defined for eps-prediction on a DiscreteVP schedule")
        per = per * vlb_weights(schedule).to(x0.device)[t.long()]
    return per.mean()
