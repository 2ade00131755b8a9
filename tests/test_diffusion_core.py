"""Closed-form checks of the shared diffusion core: schedules, conversions, losses, samplers, guidance."""
from __future__ import annotations

import math

import pytest
import torch

from shared.diffusion.guidance import cfg_kwargs_net
from shared.diffusion.losses import diffusion_loss, vlb_weights
from shared.diffusion.parameterization import PREDICTIONS, from_x0_eps, make_denoiser, to_x0_eps
from shared.diffusion.samplers import (
    NFECounter,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    euler_sample,
    heun_sample,
    rk45_sample,
    sample,
)
from shared.diffusion.schedules import CosineVP, DiscreteVP, EDMSchedule, FlowSchedule, make_betas
from shared.methods.conditions import LabelCondition

SCHEDULES = [DiscreteVP(1000), CosineVP(), FlowSchedule(), EDMSchedule()]


# ---------------------------------------------------------------- schedules
def test_discrete_linear_matches_ddpm_closed_form():
    s = DiscreteVP(1000, "linear", 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    t = torch.tensor([0.0, 1.0, 499.0, 999.0])
    a, sg = s.alpha_sigma(t)
    assert torch.allclose(a.double() ** 2, ab[t.long()], rtol=1e-5)
    assert torch.allclose(a**2 + sg**2, torch.ones(4), atol=1e-6)
    # DDPM's alpha_bar_T is ~4e-5: the forward process ends near pure noise
    assert 1e-5 < float(ab[-1]) < 1e-4


def test_cosine_betas_follow_nichol_dhariwal():
    b = make_betas("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(torch.cumprod(1 - b, 0)[499]) - f(500) / f(0)) < 1e-6
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("nope", 10)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_logsnr_decreases_from_data_to_noise(sched):
    t = torch.linspace(sched.t_min + 1e-3 * (sched.t_max - sched.t_min) + 1e-3, sched.t_max - 1e-3, 50)
    lam = sched.logsnr(t)
    assert (lam[1:] < lam[:-1]).all()
    a, s = sched.alpha_sigma(t)
    assert torch.allclose(lam, 2 * (torch.log(a) - torch.log(s)), atol=1e-3)


def test_cosine_vp_is_cosine_and_preserves_variance():
    s = CosineVP(-20, 20)
    t = torch.linspace(0.05, 0.95, 10)
    a, sg = s.alpha_sigma(t)
    assert torch.allclose(a**2 + sg**2, torch.ones(10), atol=1e-6)
    assert torch.allclose(a, torch.cos(math.pi / 2 * t), atol=2e-3)


def test_flow_and_edm_closed_forms():
    a, s = FlowSchedule().alpha_sigma(torch.tensor([0.25]))
    assert float(a) == 0.75 and float(s) == 0.25
    e = EDMSchedule(0.002, 80.0, 7.0)
    sig = e.karras_sigmas(18)
    assert abs(float(sig[0]) - 80.0) < 1e-3 and abs(float(sig[-1]) - 0.002) < 1e-6
    assert (sig[1:] < sig[:-1]).all()
    assert torch.allclose(e.net_time(torch.tensor([1.0])), torch.tensor([0.0]))


def test_derivatives_by_autograd_match_closed_form():
    s = CosineVP(-20, 20)
    t = torch.tensor([0.3, 0.6])
    da, ds = s.derivatives(t)
    a, sg = s.alpha_sigma(t)
    # alpha^2 + sigma^2 = 1  =>  alpha alpha' + sigma sigma' = 0
    assert torch.allclose(a * da + sg * ds, torch.zeros(2), atol=1e-5)


def test_ddim_subsequence_is_uniform_and_descending():
    s = DiscreteVP(1000)
    ts = s.sampling_times(10)
    assert ts.tolist() == [900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0, 0.0]
    with pytest.raises(ValueError):
        s.sampling_times(1001)


# ---------------------------------------------------------------- parameterisations
@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_conversions_round_trip(kind, sched):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = sched.sample_t(4, generator=g).clamp(sched.t_min + 0.01, sched.t_max * 0.99)
    a, s = sched.alpha_sigma(t)
    x_t = sched.add_noise(x0, eps, t)
    out = from_x0_eps(x0, eps, a, s, kind)
    x0_hat, eps_hat = to_x0_eps(out, x_t, a, s, kind)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-3)


def test_v_and_flow_targets_closed_form():
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    x0, eps = torch.ones(1, 2), 2 * torch.ones(1, 2)
    assert torch.allclose(from_x0_eps(x0, eps, a, s, "v"), 0.6 * eps - 0.8 * x0)
    assert torch.allclose(from_x0_eps(x0, eps, a, s, "flow"), x0 - eps)
    with pytest.raises(ValueError, match="unknown prediction"):
        from_x0_eps(x0, eps, a, s, "score")


# ---------------------------------------------------------------- a known model: Gaussian data
MU, STD = 0.5, 0.3


def gaussian_denoiser(sched):
    """The exact posterior mean E[x0 | x_t] for data ~ N(MU, STD^2 I)."""
    def denoise(x, t):
        a, s = sched.alpha_sigma(t)
        a, s = a.view(-1, *[1] * (x.dim() - 1)), s.view(-1, *[1] * (x.dim() - 1))
        x0 = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x - a * MU)
        eps = (x - a * x0) / s.clamp_min(1e-12)
        return x0, eps
    return denoise


def prior(sched, n=4000, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, s = sched.alpha_sigma(torch.tensor([sched.t_max]))
    # exact marginal at t_max for the Gaussian world
    return a * MU + (a**2 * STD**2 + s**2).sqrt() * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("name,sched,steps", [("ddpm", DiscreteVP(1000), 1000), ("ddim", DiscreteVP(1000), 250),
                                              ("euler", FlowSchedule(), 100), ("heun", EDMSchedule(), 40),
                                              ("heun", CosineVP(), 60)])
def test_samplers_recover_gaussian_data(name, sched, steps):
    x = sample(name, gaussian_denoiser(sched), prior(sched), sched, steps,
               **({"generator": torch.Generator().manual_seed(1)} if name == "ddpm" else {}))
    assert abs(float(x.mean()) - MU) < 0.02
    assert abs(float(x.std()) - STD) < 0.02


def test_rk45_reference_recovers_gaussian_and_counts_nfe():
    sched = FlowSchedule()
    # float64 input: the closed-form denoiser then runs in float64, as tight tolerances need
    x, nfe = rk45_sample(gaussian_denoiser(sched), prior(sched, 2000).double(), sched)
    assert abs(float(x.std()) - STD) < 0.02 and nfe > 5


def test_ddim_eta1_equals_ddpm_posterior_variance():
    sched = DiscreteVP(1000)
    torch.manual_seed(0)  # the net was drawn from whatever global RNG state earlier tests left (some blew up)
    net = torch.nn.Conv2d(2, 2, 3, padding=1)
    torch.nn.init.normal_(net.weight, std=0.1)
    den = make_denoiser(lambda x, t: net(x) + 1e-4 * t.view(-1, 1, 1, 1), sched, "eps")
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(den, x_T, sched, 20, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddpm_sample(den, x_T, sched, 20, variance="small", generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
    c = ddpm_sample(den, x_T, sched, 20, variance="large", generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(a, c, atol=1e-3)


def test_euler_on_flow_schedule_is_ddim_eta0():
    sched = FlowSchedule()
    net = torch.nn.Conv2d(2, 2, 3, padding=1)
    den = make_denoiser(lambda x, t: net(x) * (1 + t.view(-1, 1, 1, 1) / 1000), sched, "flow")
    x_T = torch.randn(3, 2, 4, 4)
    assert torch.allclose(euler_sample(den, x_T, sched, 7), ddim_sample(den, x_T, sched, 7), atol=1e-5)


def test_ddim_inversion_round_trip_error_falls_with_steps():
    sched = DiscreteVP(1000)
    den = gaussian_denoiser(sched)
    x0 = MU + STD * torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    errs = [float((ddim_sample(den, ddim_invert(den, x0, sched, s), sched, s) - x0).abs().mean())
            for s in (5, 20, 100, 500)]
    assert errs[3] < errs[2] < errs[1] < errs[0] and errs[3] < 5e-3


def test_nfe_counter_and_sampler_errors():
    sched = FlowSchedule()
    c = NFECounter(gaussian_denoiser(sched))
    heun_sample(c, prior(sched, 10), sched, 5)
    assert c.nfe == 2 * 5 - 1
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("plms", c, prior(sched, 10), sched, 5)
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(c, prior(sched, 10), sched, 5, variance="medium")


# ---------------------------------------------------------------- losses and guidance
def test_loss_matches_manual_mse_and_vlb_weights():
    sched = DiscreteVP(1000)
    net = torch.nn.Conv2d(1, 1, 1)
    x0 = torch.randn(6, 1, 4, 4)
    t = torch.tensor([0.0, 10, 100, 500, 900, 999])
    eps = torch.randn_like(x0)
    loss = diffusion_loss(lambda x, tn: net(x), x0, sched, "eps", t=t, eps=eps)
    manual = ((net(sched.add_noise(x0, eps, t)) - eps) ** 2).mean()
    assert torch.allclose(loss, manual, atol=1e-6)
    w = vlb_weights(sched)
    assert abs(float(w.mean()) - 1) < 1e-5 and float(w[0]) > 10 * float(w[-1])
    with pytest.raises(ValueError, match="vlb"):
        diffusion_loss(lambda x, tn: net(x), x0, FlowSchedule(), "flow", weighting="vlb")


def test_cfg_scales_and_label_dropout():
    def net(x, t, y):
        return x * 0 + y.float().view(-1, 1)
    y = torch.tensor([3, 4])
    x, t = torch.zeros(2, 1), torch.zeros(2)
    null = {"y": torch.full_like(y, 10)}
    assert torch.equal(cfg_kwargs_net(net, {"y": y}, null, 1.0)(x, t), torch.tensor([[3.0], [4.0]]))
    assert torch.equal(cfg_kwargs_net(net, {"y": y}, null, 0.0)(x, t), torch.tensor([[10.0], [10.0]]))
    assert torch.equal(cfg_kwargs_net(net, {"y": y}, null, 2.0)(x, t), torch.tensor([[-4.0], [-2.0]]))
    cond = LabelCondition(drop_prob=0.1, null_label=10)
    d = cond.network_value(torch.zeros(10000, dtype=torch.long), torch.Generator().manual_seed(0), drop=True)
    assert 0.08 < float((d == 10).float().mean()) < 0.12


def test_rk45_runs_a_float32_network():
    sched = FlowSchedule()
    net = torch.nn.Conv2d(1, 1, 1)
    den = make_denoiser(lambda x, t: net(x), sched, "flow")
    x, nfe = rk45_sample(den, torch.randn(2, 1, 4, 4), sched, rtol=1e-3, atol=1e-3)
    assert x.dtype == torch.float32 and nfe > 0
