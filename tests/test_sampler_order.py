"""The ODE samplers against the closed form: data ``x0 ~ N(mu, s^2)`` (per coordinate) has the exact denoiser
``E[x0 | x_t] = mu + alpha s^2 (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)`` and the exact probability-flow map
``x_s = alpha_s mu + sqrt(v_s / v_t) (x_t - alpha_t mu)``, ``v = alpha^2 s^2 + sigma^2`` (the ODE keeps the standardised
coordinate): it depends on ``alpha, sigma`` at the two ends only, so it is the reference for every schedule and every
way of writing the ODE. Each sampler's last step returns ``x0_hat`` at the last grid time (EDM Algorithm 1's final
Euler step to sigma = 0), so the reference is the exact map to the last grid time followed by the exact ``x0_hat``.

The empirical order is the least-squares slope of ``log error`` against ``log steps``: Euler must show 1, Heun 2, on
the discrete schedules (linear and cosine betas), the continuous VP cosine, the flow and the EDM schedule. Before
the fix (issue #17) Heun stalled near 7e-3 on the discrete schedules: the time derivative of their piecewise-linear
log-SNR was one-sided, and zero at t = T - 1.
"""
from __future__ import annotations

import math

import pytest
import torch

from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import ddim_sample, euler_sample, heun_sample
from shared.diffusion.schedules import CosineVP, DiscreteVP, EDMSchedule, FlowSchedule

D = 16
_g = torch.Generator().manual_seed(0)
MU = 0.5 * torch.randn(D, generator=_g, dtype=torch.float64)
SD = 0.2 + 0.8 * torch.rand(D, generator=_g, dtype=torch.float64)   # data std per coordinate in [0.2, 1]


def _as(schedule, t):
    a, s = schedule.alpha_sigma(torch.as_tensor(t).double())
    return a.double().reshape(-1, 1), s.double().reshape(-1, 1)


def gaussian_denoiser(schedule):
    """The exact ``(E[x0 | x_t], E[eps | x_t])`` in float64."""
    def denoise(x, t):
        a, s = _as(schedule, t)
        v = a**2 * SD**2 + s**2
        return MU + a * SD**2 / v * (x - a * MU), s * (x - a * MU) / v
    return denoise


def exact_sample(schedule, x_T, t_first, t_last):
    a0, s0 = _as(schedule, t_first)
    a1, s1 = _as(schedule, t_last)
    v0, v1 = a0**2 * SD**2 + s0**2, a1**2 * SD**2 + s1**2
    x_last = a1 * MU + (v1 / v0).sqrt() * (x_T - a0 * MU)
    return gaussian_denoiser(schedule)(x_last, torch.tensor([float(t_last)]))[0]


def prior(schedule, t_first, n=8, seed=1):
    a, s = _as(schedule, t_first)
    z = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a * MU + (a**2 * SD**2 + s**2).sqrt() * z


def error(sampler, schedule, times) -> float:
    times = torch.as_tensor(times, dtype=torch.float32)
    x_T = prior(schedule, times[0])
    out = sampler(gaussian_denoiser(schedule), x_T, schedule, times=times)
    return float((out - exact_sample(schedule, x_T, times[0], times[-1])).abs().max())


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    xs, ys = [math.log(n) for n in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


STEPS = (20, 40, 80, 160)
SCHEDULES = {"discrete_linear": DiscreteVP(1000, "linear"), "discrete_cosine": DiscreteVP(1000, "cosine"),
             "cosine_vp": CosineVP(), "flow": FlowSchedule(), "edm": EDMSchedule()}


def grid(schedule, n):
    """The schedule's own grid; on the discrete schedules a uniform integer grid from a fixed t = 960 (DDIM's
    default grid starts at ``stride (n - 1)``, a different noise level for every n, which blurs the order)."""
    if isinstance(schedule, DiscreteVP):
        return torch.arange(960.0, -1.0, -960.0 / n)
    return schedule.sampling_times(n)


@pytest.mark.parametrize("solver,order", [(euler_sample, 1), (heun_sample, 2)], ids=["euler", "heun"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ode_solvers_converge_at_their_order(name, solver, order):
    schedule = SCHEDULES[name]
    errors = [error(solver, schedule, grid(schedule, n)) for n in STEPS]
    p = fitted_order(STEPS, errors)
    assert abs(p - order) < 0.15, f"{name} {solver.__name__}: errors {errors}, fitted order {p:.3f}"
    assert errors[-1] < (0.1 if order == 1 else 5e-3), errors


def test_default_discrete_grid_converges_down_from_the_last_table_entry():
    """DDIM's default grid at 250 and 1000 steps (the latter starts at t = T - 1, where the old time derivative was
    0): four times the steps, a quarter of Euler's error and a sixteenth of Heun's. Before the fix Euler's error grew
    from 250 to 1000 steps (9.8e-4 -> 2.5e-3) and Heun's stayed at 4e-3."""
    schedule = SCHEDULES["discrete_linear"]
    for solver, factor in ((euler_sample, 3.5), (heun_sample, 12.0)):
        e250, e1000 = (error(solver, schedule, schedule.sampling_times(n)) for n in (250, 1000))
        assert e250 / e1000 > factor, (solver.__name__, e250, e1000)


def _net_denoiser(schedule, prediction, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    embed = torch.nn.Linear(1, 2)

    def net(x, t_net):
        return conv(x) * (1 + embed(t_net.float().view(-1, 1) / 1000)[:, :, None, None])
    return make_denoiser(net, schedule, prediction)


def test_euler_on_a_discrete_schedule_is_ddim_eta0():
    """Euler in (x̄, σ̄) is DDIM (Song et al. 2021, Sec. 4.3): the same grid gives the same samples to float rounding."""
    schedule = DiscreteVP(1000, "linear")
    den = _net_denoiser(schedule, "eps")
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for steps in (10, 1000):
            a, b = euler_sample(den, x_T, schedule, steps), ddim_sample(den, x_T, schedule, steps)
            assert (a - b).abs().max() < 2e-5 * b.abs().max(), steps


def test_continuous_schedules_keep_the_papers_steps_bit_for_bit():
    """The fix touches only discrete schedules: on EDM's schedule Heun is EDM's Algorithm 1 and Euler its Euler step
    (``d = (x - D(x; sigma)) / sigma``), on the flow schedule Euler is rectified flow's ``x + dt v`` with
    ``v = eps - x0`` in our time — bit for bit, so the published EDM / rectified-flow numbers do not move."""
    edm = EDMSchedule()
    den = _net_denoiser(edm, "x0")
    x = 80 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmas = edm.sampling_times(12)
    with torch.no_grad():
        want_heun, want_euler = x, x
        for i in range(len(sigmas) - 1):
            t, s = sigmas[i], sigmas[i + 1]
            d = (want_heun - den(want_heun, t.expand(3))[0]) / t
            x_e = want_heun + (s - t) * d
            want_heun = want_heun + (s - t) * 0.5 * (d + (x_e - den(x_e, s.expand(3))[0]) / s)
            want_euler = want_euler + (s - t) * ((want_euler - den(want_euler, t.expand(3))[0]) / t)
        assert torch.equal(heun_sample(den, x, edm, 12), den(want_heun, sigmas[-1].expand(3))[0])
        assert torch.equal(euler_sample(den, x, edm, 12), den(want_euler, sigmas[-1].expand(3))[0])
        flow = FlowSchedule()
        den = _net_denoiser(flow, "flow")
        want = x = x / 80
        ts = flow.sampling_times(16)
        for i in range(len(ts) - 1):
            x0, eps = den(want, ts[i].expand(3))
            want = want + (ts[i + 1] - ts[i]) * (eps - x0)
        assert torch.equal(euler_sample(den, x, flow, 16), den(want, ts[-1].expand(3))[0])


def test_discrete_schedule_derivative_at_the_last_table_entry_is_the_last_segment_slope():
    """``DiscreteVP.derivatives`` (what rk45 integrates) is the slope of the log-SNR segment holding t; at t = T - 1
    the last one (it was 0 there). alpha = sqrt(sigmoid(lambda)) so alpha' = alpha (1 - alpha^2) lambda' / 2."""
    s = DiscreteVP(1000, "linear")
    lam = torch.log(s.alphas_cumprod) - torch.log1p(-s.alphas_cumprod)
    t = torch.tensor([0.0, 500.0, 998.0, 999.0])
    slope = torch.stack([lam[1] - lam[0], lam[501] - lam[500], lam[999] - lam[998], lam[999] - lam[998]])
    a = s.alpha_sigma(t.double())[0]
    torch.testing.assert_close(s.derivatives(t)[0], (0.5 * a * (1 - a**2) * slope).float(), rtol=1e-5, atol=0)
    # the values at the integers are the table's, bit for bit (DDIM/DDPM read only those)
    assert torch.equal(s.logsnr(torch.arange(1000.0).double()), lam)
