"""Samplers as plain functions over a denoiser ``denoise(x_t, t) -> (x0_hat, eps_hat)``.

Every sampler walks ``times`` (descending; default ``schedule.sampling_times(steps)``) and ends at
the clean point ``alpha = 1, sigma = 0`` where the sample is the last ``x0_hat``.

* :func:`ddpm_sample` — ancestral sampling from the posterior ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020,
  Eq. 6-7 and Algorithm 2), posterior variance ``"small"`` (beta-tilde) or ``"large"`` (beta), on any
  sub-sequence of times.
* :func:`ddim_sample` — DDIM (Song et al. 2021, Eq. 12) with ``eta``; the noise level is written with
  log-SNRs, ``c = eta * sigma_s * sqrt(1 - exp(lambda_t - lambda_s))``, equal to the paper's
  ``sigma_t(eta)`` for VP schedules (Eq. 16) and valid for VE/flow schedules too.
* :func:`euler_sample`, :func:`heun_sample` — the probability-flow ODE (Heun as Karras et al. 2022, Algorithm 1:
  Euler on the last step). On a continuous-time schedule it is integrated in ``t``,
  ``dx/dt = alpha'(t) x0 + sigma'(t) eps`` with the schedule's exact derivatives. A discrete schedule
  (:class:`~shared.diffusion.schedules.DiscreteVP`) has no time derivative — ``alpha_t`` is a table — so there the
  ODE is written, as Karras et al. (Sec. 4, Eq. 4 with ``s(t) = alpha``) and Song et al. (DDIM, Sec. 4.3, Eq. 14)
  write it, in ``x̄ = x / alpha`` against ``σ̄ = sigma / alpha``: ``dx̄/dσ̄ = eps_hat``, which needs ``alpha, sigma``
  at the grid times only. Euler in these variables is DDIM with ``eta = 0``; Heun is the trapezoidal rule in ``σ̄``.
  Both solvers converge at their order (1 and 2) on every schedule (``tests/test_sampler_order.py``). The
  continuous schedules keep the time form: on EDM's schedule the two coincide, on the flow schedule so do the Euler
  steps, and on uniform-``t`` VP grids starting near ``alpha = 0`` the trapezoid in ``σ̄`` spans a huge first interval
  (closed-form Gaussian, CosineVP, 10 Heun steps from t = 1: error 5.5 in ``σ̄`` against 1.6e-2 in ``t``).
* :func:`rk45_sample` — adaptive Dormand–Prince reference through torchdiffeq on ``dx/dt`` (reports NFE).
* :func:`ddim_invert` — deterministic DDIM inversion (Song et al. Sec. 4.3; Dhariwal & Nichol App. F).
* :func:`ddpm_learned_variance_sample` — ancestral sampling with a *learned* variance (Nichol & Dhariwal 2021,
  Eq. 15; used by ADM and DiT): its denoiser also returns the interpolation ``v``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from shared.diffusion.schedules import Schedule, _bcast

Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class NFECounter:
    """Wrap a denoiser and count its calls (number of function evaluations)."""

    def __init__(self, denoise: Denoiser):
        self.denoise, self.nfe = denoise, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.denoise(x, t)


def _times(schedule: Schedule, steps: int | None, times, device) -> torch.Tensor:
    if times is not None:
        return torch.as_tensor(times, dtype=torch.float32, device=device)
    if steps is None or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return schedule.sampling_times(steps, device=device)


def _full(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.expand(x.shape[0]).to(x.device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddim_sample(denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int | None = None,
                eta: float = 0.0, generator: torch.Generator | None = None, times=None,
                return_trajectory: bool = False):
    """DDIM with stochasticity ``eta`` (0: deterministic ODE-like; 1: DDPM posterior variance)."""
    ts = _times(schedule, steps, times, x_T.device)
    x, traj = x_T, [x_T]
    for i, t in enumerate(ts):
        tb = _full(t, x)
        x0, eps = denoise(x, tb)
        if i == len(ts) - 1:
            x = x0
        else:
            s = _full(ts[i + 1], x)
            a_s, s_s = schedule.alpha_sigma(s)
            c = torch.zeros_like(s_s)
            if eta > 0:
                gap = (schedule.logsnr(tb) - schedule.logsnr(s)).clamp(max=0)
                c = eta * s_s * (1 - torch.exp(gap)).clamp_min(0).sqrt()
            dir_coef = (s_s**2 - c**2).clamp_min(0).sqrt()
            x = _bcast(a_s, x) * x0 + _bcast(dir_coef, x) * eps
            if eta > 0:
                x = x + _bcast(c, x) * _noise(x, generator)
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


@torch.no_grad()
def ddpm_sample(denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int | None = None,
                variance: str = "small", generator: torch.Generator | None = None, times=None,
                return_trajectory: bool = False):
    """Ancestral sampling with the posterior mean and ``"small"`` (beta-tilde) or ``"large"`` (beta) variance.

    With ``steps = T`` on a :class:`DiscreteVP` this is DDPM's Algorithm 2; the final step returns the
    posterior mean at the clean end (no noise), as in the paper.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    ts = _times(schedule, steps, times, x_T.device)
    x, traj = x_T, [x_T]
    for i, t in enumerate(ts):
        tb = _full(t, x)
        x0, _ = denoise(x, tb)
        if i == len(ts) - 1:
            x = x0
        else:
            s = _full(ts[i + 1], x)
            a_t, s_t = schedule.alpha_sigma(tb)
            a_s, s_s = schedule.alpha_sigma(s)
            a_ts = a_t / a_s                          # alpha_{t|s}
            var_ts = s_t**2 - a_ts**2 * s_s**2        # sigma^2_{t|s} (= beta_t for consecutive steps)
            mean = _bcast(a_s * var_ts / s_t**2, x) * x0 + _bcast(a_ts * s_s**2 / s_t**2, x) * x
            var = var_ts * s_s**2 / s_t**2 if variance == "small" else var_ts
            x = mean + _bcast(var.clamp_min(0).sqrt(), x) * _noise(x, generator)
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


def _ode_drift(schedule: Schedule, t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``dx/dt = alpha'(t) x0 + sigma'(t) eps``: the probability-flow ODE in time (continuous schedules)."""
    da, ds = schedule.derivatives(t)
    return _bcast(da.to(x0.dtype), x0) * x0 + _bcast(ds.to(x0.dtype), x0) * eps


def _grid_coefficients(schedule: Schedule, t: torch.Tensor, s: torch.Tensor, dtype: torch.dtype):
    """One step ``t -> s`` of the ODE in ``(x̄, σ̄)`` written in ``x``: ``(dt, k_alpha, k_sigma, end)``.

    Euler: ``x_s = x_t + dt (k_alpha x0 + k_sigma eps)`` with the secant slopes ``k_alpha = (alpha_s - alpha_t) / dt``,
    ``k_sigma = (sigma_s - sigma_t) / dt``; for a denoiser with ``x_t = alpha_t x0 + sigma_t eps`` (every
    :func:`~shared.diffusion.parameterization.make_denoiser`) it lands on ``alpha_s x0 + sigma_s eps``, i.e.
    ``x̄_s = x̄_t + (σ̄_s - σ̄_t) eps``: DDIM. Heun's trapezoidal rule ``x̄_s = x̄_t + (σ̄_s - σ̄_t) (eps_1 + eps_2) / 2`` is
    ``x_s = x_t + dt (d_1 + d_2) / 2`` with ``d_1`` the Euler slope and the end slope ``d_2 = k_x x_t + k_eps eps_2``,
    ``end = (k_x, k_eps) = ((alpha_s / alpha_t - 1) / dt, alpha_s (σ̄_s - σ̄_t) / dt)``; ``end`` is None where
    ``alpha_t = 0`` (``σ̄_t`` infinite: that step is Euler's). Computed in float64 from the grid's times."""
    t64, s64 = t.double(), s.double()
    a_t, g_t = schedule.alpha_sigma(t64)
    a_s, g_s = schedule.alpha_sigma(s64)
    dt = s64 - t64
    end = None
    if not bool((a_t == 0).any()):
        ratio = a_s / a_t
        end = (((ratio - 1) / dt).to(dtype), ((g_s - ratio * g_t) / dt).to(dtype))
    return dt.to(dtype), ((a_s - a_t) / dt).to(dtype), ((g_s - g_t) / dt).to(dtype), end


@torch.no_grad()
def euler_sample(denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int | None = None,
                 times=None, return_trajectory: bool = False):
    """Euler on the probability-flow ODE (in ``t``; in ``(x̄, σ̄)`` on a discrete schedule, where it is DDIM with
    ``eta = 0``); the last step lands on ``x0_hat`` (exact for linear paths)."""
    ts = _times(schedule, steps, times, x_T.device)
    x, traj = x_T, [x_T]
    for i, t in enumerate(ts):
        tb = _full(t, x)
        x0, eps = denoise(x, tb)
        if i == len(ts) - 1:
            x = x0
        elif schedule.discrete:
            dt, ka, ks, _ = _grid_coefficients(schedule, t, ts[i + 1], x.dtype)
            x = x + dt * (ka * x0 + ks * eps)
        else:
            x = x + (ts[i + 1] - t) * _ode_drift(schedule, tb, x0, eps)
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


@torch.no_grad()
def heun_sample(denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int | None = None,
                times=None, return_trajectory: bool = False):
    """Heun's 2nd-order method (EDM Algorithm 1; in ``(x̄, σ̄)`` on a discrete schedule); ``2 * steps - 1``
    denoiser calls (one fewer on a discrete table whose first ``alpha`` is 0: that step is Euler's)."""
    ts = _times(schedule, steps, times, x_T.device)
    x, traj = x_T, [x_T]
    for i, t in enumerate(ts):
        tb = _full(t, x)
        x0, eps = denoise(x, tb)
        if i == len(ts) - 1:
            x = x0
        elif schedule.discrete:
            dt, ka, ks, end = _grid_coefficients(schedule, t, ts[i + 1], x.dtype)
            d1 = ka * x0 + ks * eps
            x_e = x + dt * d1
            if end is None:
                x = x_e
            else:
                _, eps_e = denoise(x_e, _full(ts[i + 1], x))
                x = x + dt * 0.5 * (d1 + (end[0] * x + end[1] * eps_e))
        else:
            dt = ts[i + 1] - t
            d1 = _ode_drift(schedule, tb, x0, eps)
            x_e = x + dt * d1
            sb = _full(ts[i + 1], x)
            x0_e, eps_e = denoise(x_e, sb)
            x = x + dt * 0.5 * (d1 + _ode_drift(schedule, sb, x0_e, eps_e))
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


@torch.no_grad()
def rk45_sample(denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, rtol: float = 1e-5,
                atol: float = 1e-5, t_end: float | None = None) -> tuple[torch.Tensor, int]:
    """Adaptive Dormand–Prince (torchdiffeq ``dopri5``) on the PF-ODE from ``t_max`` to ``t_end``.

    The solver state is float64; the denoiser is called in ``x_T``'s dtype (pass float64 for a
    closed-form denoiser at tight tolerances). Returns ``(x0_hat at t_end, nfe)``.
    ``t_end`` defaults to ``schedule.t_min`` (plus a hair for the flow
    schedule, where ``t = 0`` is exactly the data and the last ``x0_hat`` is returned).
    """
    from torchdiffeq import odeint

    counter = NFECounter(denoise)
    t_end = schedule.t_min if t_end is None else t_end
    t_end = max(t_end, 1e-3 * (schedule.t_max - schedule.t_min))
    shape = x_T.shape

    def f(t, y):
        x = y.reshape(shape).to(x_T.dtype)  # the solver state is float64; networks run in the input's dtype
        tb = _full(t.float(), x)
        x0, eps = counter(x, tb)
        return _ode_drift(schedule, tb, x0, eps).reshape(-1).to(y.dtype)

    grid = torch.tensor([schedule.t_max, t_end], dtype=torch.float64)
    y = odeint(f, x_T.reshape(-1).double(), grid, rtol=rtol, atol=atol, method="dopri5")[-1]
    x = y.reshape(shape).to(x_T.dtype)
    x0, _ = counter(x, _full(torch.tensor(t_end), x))
    return x0, counter.nfe


@torch.no_grad()
def ddim_invert(denoise: Denoiser, x0: torch.Tensor, schedule: Schedule, steps: int | None = None,
                times=None) -> torch.Tensor:
    """Deterministic DDIM run backwards: data ``x0`` → latent ``x_T`` at ``times[0]``.

    Each step predicts eps at the current point using the *next* (noisier) time, then moves along
    DDIM's deterministic update; ``ddim_sample(eta=0)`` on the same times maps it back.
    """
    ts = _times(schedule, steps, times, x0.device).flip(0)   # ascending
    x = x0
    a_prev = torch.ones(x.shape[0], device=x.device)
    s_prev = torch.zeros(x.shape[0], device=x.device)
    for t in ts:
        tb = _full(t, x)
        _, eps = denoise(x, tb)
        x0_hat = (x - _bcast(s_prev, x) * eps) / _bcast(a_prev, x)
        a_t, s_t = schedule.alpha_sigma(tb)
        x = _bcast(a_t, x) * x0_hat + _bcast(s_t, x) * eps
        a_prev, s_prev = a_t, s_t
    return x


@torch.no_grad()
def ddpm_learned_variance_sample(denoise_v: Callable, x_T: torch.Tensor, schedule: Schedule, steps: int | None = None,
                                 generator: torch.Generator | None = None, times=None,
                                 return_trajectory: bool = False):
    """Ancestral sampling whose step variance is learned (Improved DDPM, Nichol & Dhariwal 2021, Eq. 15).

    ``denoise_v(x_t, t) -> (x0_hat, eps_hat, v)`` where ``v`` (same shape as ``x_t``, nominally in [-1, 1]) sets
    ``log Sigma = frac log beta + (1 - frac) log beta_tilde`` with ``frac = (v + 1) / 2``. On a sub-sequence of
    times (respacing, Improved DDPM Sec. 4) ``beta`` and ``beta_tilde`` are those of the respaced chain,
    ``beta_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` and ``beta_tilde = beta_{t|s} sigma_s^2 / sigma_t^2``;
    ``v = 1``
    and ``v = -1`` reproduce :func:`ddpm_sample` with ``"large"`` and ``"small"`` variance. The last step returns
    the posterior mean at the clean end (``x0_hat``), as the paper.
    """
    ts = _times(schedule, steps, times, x_T.device)
    x, traj = x_T, [x_T]
    for i, t in enumerate(ts):
        tb = _full(t, x)
        x0, _, v = denoise_v(x, tb)
        if i == len(ts) - 1:
            x = x0
        else:
            s = _full(ts[i + 1], x)
            a_t, s_t = schedule.alpha_sigma(tb)
            a_s, s_s = schedule.alpha_sigma(s)
            a_ts = a_t / a_s
            var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(1e-20)      # beta of the (respaced) step
            post = (var_ts * s_s**2 / s_t**2).clamp_min(1e-20)          # beta-tilde
            mean = _bcast(a_s * var_ts / s_t**2, x) * x0 + _bcast(a_ts * s_s**2 / s_t**2, x) * x
            frac = (v + 1) / 2
            log_var = frac * _bcast(torch.log(var_ts), x) + (1 - frac) * _bcast(torch.log(post), x)
            x = mean + torch.exp(0.5 * log_var) * _noise(x, generator)
        if return_trajectory:
            traj.append(x)
    return (x, traj) if return_trajectory else x


SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample, "euler": euler_sample, "heun": heun_sample}


def sample(name: str, denoise: Denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int, **kw):
    """Dispatch by name (``ddim``, ``ddpm``, ``euler``, ``heun``) — what configs and the CLI use."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](denoise, x_T, schedule, steps, **kw)
