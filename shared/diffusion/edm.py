"""EDM preconditioning (Karras, Aittala, Aila & Laine, NeurIPS 2022, Table 1 and Sec. 5).

The network ``F`` is wrapped into a denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with

* ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``
* ``c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``
* ``c_in   = 1 / sqrt(sigma^2 + sigma_data^2)``
* ``c_noise = ln(sigma) / 4``   (= :meth:`EDMSchedule.net_time`)

trained on log-normal sigmas (``EDMSchedule.sample_t``: ``ln sigma ~ N(P_mean, P_std^2)``) with the loss weight
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (which makes ``lambda c_out^2 = 1``: the
network's effective target has unit variance at every sigma).

With ``sigma_data = 1`` the same wrapper is exactly Salimans & Ho's v-parameterisation expressed in
variance-exploding coordinates (``x_vp = x / sqrt(1 + sigma^2)``, ``F = -v``); that is how progressive
distillation uses it.

The consistency models paper (Song et al. 2023, App. C / Eq. 7) swaps in boundary-condition scalings
``c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2)``,
``c_out(t) = sigma_data (t - eps) / sqrt(sigma_data^2 + t^2)``
so that ``f(x, eps) = x`` exactly; :class:`EDMPrecond` takes ``boundary_eps`` for that.

:class:`EDMPrecond` is an ``nn.Module`` whose ``forward(x, t_net)`` receives ``t_net = EDMSchedule.net_time(sigma)
= c_noise`` and returns the *data prediction*, so ``make_denoiser(EDMPrecond(net), EDMSchedule(), "x0")`` plugs it
into every sampler of :mod:`shared.diffusion.samplers` (``denoise(x_t, sigma) -> (x0_hat, eps_hat)``); on the VE
schedule DDIM with ``eta = 0`` is the Euler step of the probability-flow ODE in sigma.
"""
from __future__ import annotations

import torch
from torch import nn

from shared.diffusion.schedules import EDMSchedule, _bcast


def edm_scalings(sigma: torch.Tensor, sigma_data: float = 0.5):
    """``(c_skip, c_out, c_in, c_noise)`` of EDM Table 1 for a (B,) tensor of sigmas."""
    sigma = torch.as_tensor(sigma)
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = 0.25 * torch.log(sigma)
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(sigma: torch.Tensor, sigma_data: float = 0.5, eps: float = 0.002):
    """``(c_skip, c_out)`` of the consistency-model parameterisation (Song et al. 2023, App. C): ``c_skip(eps) = 1``,
    ``c_out(eps) = 0`` so ``f(x, eps) = x`` (the boundary condition) holds by construction."""
    sigma = torch.as_tensor(sigma)
    d2 = sigma_data**2
    c_skip = d2 / ((sigma - eps) ** 2 + d2)
    c_out = sigma_data * (sigma - eps) / (d2 + sigma**2).sqrt()
    return c_skip, c_out


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sigma_from_net_time(t_net: torch.Tensor) -> torch.Tensor:
    """Invert ``EDMSchedule.net_time`` (``c_noise = ln(sigma) / 4``)."""
    return torch.exp(4.0 * torch.as_tensor(t_net))


class EDMPrecond(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` around a raw network ``F(x, t_net, **kw)``.

    ``forward(x, t_net)`` takes the EDM net time ``c_noise = ln(sigma)/4`` (what :class:`EDMSchedule` hands every
    network) and returns the data prediction. ``boundary_eps`` switches to the consistency-model scalings.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, boundary_eps: float | None = None):
        super().__init__()
        self.net, self.sigma_data, self.boundary_eps = net, float(sigma_data), boundary_eps

    @property
    def num_classes(self):
        return getattr(self.net, "num_classes", None)

    @property
    def null_label(self):
        return getattr(self.net, "null_label", None)

    def scalings(self, sigma: torch.Tensor):
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        if self.boundary_eps is not None:
            c_skip, c_out = consistency_scalings(sigma, self.sigma_data, self.boundary_eps)
        return c_skip, c_out, c_in, c_noise

    def denoise_sigma(self, x: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        """``D(x; sigma)`` for a (B,) tensor or a scalar sigma."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        f = self.net(_bcast(c_in, x) * x, c_noise, **kw)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, **kw) -> torch.Tensor:
        t_net = torch.as_tensor(t_net, device=x.device, dtype=x.dtype)
        return self.denoise_sigma(x, sigma_from_net_time(t_net), **kw)


def edm_loss(precond: EDMPrecond, x0: torch.Tensor, schedule: EDMSchedule, generator: torch.Generator | None = None,
             sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """EDM training loss (Eq. 2 with Table 1's weighting): ``E lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2``,
    averaged over pixels and batch."""
    b = x0.shape[0]
    if sigma is None:
        sigma = schedule.sample_t(b, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    d = precond.denoise_sigma(x0 + _bcast(sigma, x0) * noise, sigma, **kw)
    per = ((d - x0) ** 2).flatten(1).mean(1)
    return (edm_loss_weight(sigma, precond.sigma_data) * per).mean()


def karras_fraction_sigmas(schedule: EDMSchedule, u: torch.Tensor) -> torch.Tensor:
    """EDM Eq. 5 as a function of the fraction ``u`` in [0, 1]: ``sigma_max`` at 0, ``sigma_min`` at 1."""
    inv = 1.0 / schedule.rho
    u = torch.as_tensor(u, dtype=torch.float64)
    return ((schedule.t_max**inv + u * (schedule.t_min**inv - schedule.t_max**inv)) ** schedule.rho).float()


def nested_grid(schedule: EDMSchedule, steps: int, device=None) -> torch.Tensor:
    """``steps`` sampling sigmas at fractions ``0, 1/steps, ..., (steps-1)/steps`` of the Karras curve.

    A sampler then takes a last step to sigma = 0. The grids are *nested*: the grid of ``N`` steps is every other
    point of the grid of ``2N`` steps, which progressive distillation's halving needs; ``steps = 1`` is the single
    point ``sigma_max`` (one-step generation).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.arange(steps, dtype=torch.float64) / steps
    return karras_fraction_sigmas(schedule, u).to(device)


def karras_boundaries(schedule: EDMSchedule, n: int) -> torch.Tensor:
    """Consistency models' discretisation (Song et al. 2023, Sec. 5 / App. C): ``n`` ascending sigmas
    ``t_1 = eps = sigma_min < ... < t_n = sigma_max`` on the Karras curve with ``rho``."""
    if n < 2:
        raise ValueError(f"need at least 2 boundaries, got {n}")
    u = torch.arange(n, dtype=torch.float64) / (n - 1)
    return karras_fraction_sigmas(schedule, 1.0 - u)

