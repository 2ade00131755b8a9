"""Noise schedules: the one description of every paper's forward process.

A schedule maps diffusion time ``t`` to ``(alpha_t, sigma_t)`` so that
``x_t = alpha_t * x0 + sigma_t * eps`` with ``eps ~ N(0, I)``; ``logsnr_t = log(alpha_t^2 / sigma_t^2)``.
Time runs from data (``t_min``) to noise (``t_max``).

* :class:`DiscreteVP` — DDPM (Ho et al. 2020, Sec. 2 and 4): ``T`` betas, ``alpha_bar_t = prod(1 - beta_s)``,
  integer time ``t in {0..T-1}`` (fractional ``t`` interpolates log-SNR linearly; its time derivative is that
  piecewise-linear curve's, one-sided at the integers, which is why the fixed-step ODE samplers integrate a
  discrete schedule in ``σ̄ = sigma / alpha`` at the grid times instead, ``shared.diffusion.samplers``).
  Betas are named unambiguously: ``linear`` (Ho et al.: ``beta_1..beta_T`` evenly spaced),
  ``cosine`` (Nichol & Dhariwal 2021, Eq. 17, betas clipped at 0.999).
* :class:`CosineVP` — continuous-time variance-preserving cosine schedule (Nichol & Dhariwal; VDM).
* :class:`FlowSchedule` — rectified flow / flow matching (Liu et al. 2023): ``alpha = 1 - t``, ``sigma = t``;
  the paper's time is ``t_rf = 1 - t`` (data at ``t_rf = 1``).
* :class:`EDMSchedule` — Karras et al. 2022 (EDM): variance exploding ``alpha = 1``, ``sigma = t``, time is
  sigma; sampling grid Eq. 5 with ``rho``.

Every schedule also gives ``net_time(t)`` (what the network's time embedding receives),
``sample_t(n)`` (training times) and ``sampling_times(steps)`` (a descending grid for samplers; the
sampler appends the clean end point ``alpha=1, sigma=0`` itself).
"""
from __future__ import annotations

import math

import torch


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) to broadcast against ``like`` (B, ...)."""
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class Schedule:
    """Base class. Subclasses implement ``alpha_sigma``; the rest follows."""

    name: str = "schedule"
    t_min: float = 0.0
    t_max: float = 1.0
    discrete: bool = False

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(t)
        return 2 * (torch.log(a) - torch.log(s))

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network's time embedding receives (default: ``1000 t``, as in DDPM-style nets)."""
        return t * 1000.0

    def time_at(self, u: torch.Tensor) -> torch.Tensor:
        """The time at fraction ``u`` in [0, 1] of the range ``[t_min, t_max]`` (on a discrete schedule the nearest
        grid step): a fixed noise level named independently of the schedule's parameterisation of time."""
        t = self.t_min + (self.t_max - self.t_min) * torch.as_tensor(u)
        return t.round() if self.discrete else t

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device)
        return self.time_at(u)

    def sampling_times(self, steps: int, device=None) -> torch.Tensor:
        """``steps`` times from ``t_max`` down (excluding the clean end point)."""
        return torch.linspace(self.t_max, self.t_min, steps + 1, device=device)[:-1]

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(t)
        return _bcast(a, x0) * x0 + _bcast(s, x0) * eps

    def derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d alpha/dt, d sigma/dt)`` by autograd (exact for the analytic schedules)."""
        t = t.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            a, s = self.alpha_sigma(t)
            da = torch.autograd.grad(a.sum(), t, retain_graph=True)[0]
            ds = torch.autograd.grad(s.sum(), t)[0]
        return da.float(), ds.float()

    def describe(self) -> dict:
        """Unambiguous metadata stored in checkpoints and results."""
        return {"class": type(self).__name__, "name": self.name}


def make_betas(kind: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Beta sequences by unambiguous name (float64)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    if kind == "cosine":
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    raise ValueError(f"unknown beta schedule {kind!r}; choose linear, scaled_linear or cosine")


class DiscreteVP(Schedule):
    """DDPM's discrete variance-preserving process with ``num_steps`` betas."""

    discrete = True

    def __init__(self, num_steps: int = 1000, betas: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"schedule.num_steps must be an integer >= 2, got {num_steps!r}")
        for key, b in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 < float(b) < 1.0):
                raise ValueError(f"schedule.{key} must be in (0, 1), got {b!r}")
        self.num_steps = num_steps
        self.beta_kind, self.beta_start, self.beta_end = betas, beta_start, beta_end
        self.betas = make_betas(betas, num_steps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self._logsnr = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)
        self.t_min, self.t_max = 0.0, float(num_steps - 1)
        self.name = f"discrete_vp_{betas}_{num_steps}"

    def describe(self) -> dict:
        return {"class": "DiscreteVP", "name": self.name, "num_steps": self.num_steps, "betas": self.beta_kind,
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        lam = self.logsnr(t)
        return torch.sigmoid(lam)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        table = self._logsnr.to(t.device)
        tf = t.to(torch.float64)
        # clamp to [0, T - 1] keeping the identity's gradient at the ends (clamp's is 0 there); t = T - 1 lies in the
        # last segment (w = 1), so its derivative is that segment's slope, not the zero slope of one beyond the table
        tf = torch.where(tf > self.num_steps - 1, self.num_steps - 1, torch.where(tf < 0, 0, tf))
        lo = tf.floor().clamp(max=max(self.num_steps - 2, 0)).long()
        hi = (lo + 1).clamp(max=self.num_steps - 1)
        w = tf - lo.to(torch.float64)
        lam = table[lo] * (1 - w) + table[hi] * w
        return lam if t.dtype == torch.float64 else lam.float()

    def alpha_sigma(self, t):
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def net_time(self, t):
        return torch.as_tensor(t).float()

    def sample_t(self, n, generator=None, device=None):
        return torch.randint(0, self.num_steps, (n,), generator=generator, device=device).float()

    def sampling_times(self, steps: int, device=None) -> torch.Tensor:
        """DDIM's uniform sub-sequence (Song et al., Sec. 4.2/App. C): ``0, c, 2c, ...`` reversed, ``c = T // S``."""
        if steps > self.num_steps:
            raise ValueError(f"steps={steps} exceeds the schedule's {self.num_steps} steps")
        stride = self.num_steps // steps
        ts = torch.arange(0, stride * steps, stride, dtype=torch.float32, device=device)
        return ts.flip(0)


class CosineVP(Schedule):
    """Continuous-time VP cosine schedule: ``alpha = cos(pi/2 * t)``, truncated log-SNR range."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max
        # t in [0,1] maps to logSNR in [logsnr_max, logsnr_min] via lam = -2 log tan(a t + b)
        self._b = math.atan(math.exp(-0.5 * logsnr_max))
        self._a = math.atan(math.exp(-0.5 * logsnr_min)) - self._b
        self.name = f"cosine_vp_{logsnr_min}_{logsnr_max}"

    def describe(self):
        return {"class": "CosineVP", "name": self.name, "logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max}

    def logsnr(self, t):
        t = torch.as_tensor(t)
        return -2 * torch.log(torch.tan(self._a * t + self._b))

    def alpha_sigma(self, t):
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def time_of_logsnr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`logsnr`: the time whose log-SNR is ``lam``, clamped to the schedule's range."""
        lam = torch.as_tensor(lam).clamp(self.logsnr_min, self.logsnr_max)
        return ((torch.atan(torch.exp(-0.5 * lam)) - self._b) / self._a).clamp(0.0, 1.0)


class FlowSchedule(Schedule):
    """Linear interpolation path of rectified flow: ``x_t = (1 - t) x0 + t eps`` (``t_rf = 1 - t``)."""

    name = "flow_linear"

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0):
        self.t_min, self.t_max = t_min, t_max

    def alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return 1 - t, t

    def logsnr(self, t):
        t = torch.as_tensor(t)
        return 2 * (torch.log1p(-t) - torch.log(t))

    def derivatives(self, t):
        t = torch.as_tensor(t)
        return -torch.ones_like(t), torch.ones_like(t)


class EDMSchedule(Schedule):
    """Karras et al. (2022): ``x = x0 + sigma eps``; time is sigma; ``net_time = ln(sigma) / 4`` (Table 1)."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 p_mean: float = -1.2, p_std: float = 1.2):
        self.t_min, self.t_max, self.rho = sigma_min, sigma_max, rho
        self.p_mean, self.p_std = p_mean, p_std

    def describe(self):
        return {"class": "EDMSchedule", "name": self.name, "sigma_min": self.t_min, "sigma_max": self.t_max,
                "rho": self.rho}

    def alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return torch.ones_like(t), t

    def derivatives(self, t):
        t = torch.as_tensor(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def net_time(self, t):
        return 0.25 * torch.log(torch.as_tensor(t))

    def sample_t(self, n, generator=None, device=None):
        """Training sigmas: log-normal (EDM Table 1, ``P_mean``, ``P_std``)."""
        z = torch.randn(n, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def karras_sigmas(self, steps: int, device=None) -> torch.Tensor:
        """EDM Eq. 5: ``steps`` sigmas from sigma_max to sigma_min (both included)."""
        i = torch.arange(steps, dtype=torch.float64, device=device)
        inv = 1.0 / self.rho
        if steps == 1:
            return torch.tensor([self.t_max], device=device).float()
        s = (self.t_max**inv + i / (steps - 1) * (self.t_min**inv - self.t_max**inv)) ** self.rho
        return s.float()

    def sampling_times(self, steps, device=None):
        return self.karras_sigmas(steps, device)
