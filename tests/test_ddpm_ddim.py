"""papers/ddpm and papers/ddim: the modules' contracts on a known model, and the claim checks (marker `claims`)."""
from __future__ import annotations

import pytest
import torch

from papers.ddim.module import DDIM, slerp
from papers.ddpm.module import DDPM
from shared.diffusion.schedules import DiscreteVP

MU, STD = 0.25, 0.5


class GaussianEps(torch.nn.Module):
    """The exact eps-predictor for data ~ N(MU, STD^2 I) under a DiscreteVP schedule (a 'known model')."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t_net, **kw):
        a, s = self.schedule.alpha_sigma(t_net)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        x0 = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x - a * MU)
        return (x - a * x0) / s + 0 * self.dummy


def known(cls):
    sched = DiscreteVP(1000)
    return cls(GaussianEps(sched), sched, ema_decay=None, clip_x0=None, sample_shape=(1, 4, 4))


def test_ddpm_predicts_eps_and_samples_the_known_distribution():
    with pytest.raises(ValueError, match="predicts eps"):
        DDPM(GaussianEps(DiscreteVP(10)), DiscreteVP(10), prediction="v")
    m = known(DDPM)
    x = m.sample(1000, sampler={"name": "ddpm", "steps": 1000, "variance": "large"},
                 generator=torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - MU) < 0.02 and abs(float(x.std()) - STD) < 0.02


def test_ddim_inversion_reconstructs_and_improves_with_steps():
    m = known(DDIM)
    x0 = MU + STD * torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    errs = [float((m.reconstruct(x0, s) - x0).pow(2).mean()) for s in (10, 50, 250)]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-4


def test_slerp_endpoints_and_norm():
    z0, z1 = torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    path = slerp(z0, z1, torch.linspace(0, 1, 5))
    assert path.shape == (5, 1, 4, 4)
    assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[-1], z1, atol=1e-5)
    # for orthogonal-ish Gaussian latents of equal norm the path keeps the norm (unlike linear mixing)
    z1 = z1 / z1.norm() * z0.norm()
    norms = slerp(z0, z1, torch.linspace(0, 1, 7)).flatten(1).norm(dim=1)
    assert (norms / z0.norm() - 1).abs().max() < 0.35


def test_ddim_interpolation_is_deterministic():
    m = known(DDIM)
    z0, z1 = torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    assert torch.equal(m.interpolate(z0, z1, 3, 10), m.interpolate(z0, z1, 3, 10))


def test_time_at_names_a_fraction_of_the_time_range():
    """``Schedule.time_at(u)``: ``t_min`` at 0, ``t_max`` at 1, linear between (what ``sample_t`` draws uniformly);
    on DDPM's discrete schedule the nearest grid step."""
    from shared.diffusion.schedules import CosineVP, DiscreteVP

    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    cos = CosineVP()
    assert torch.allclose(cos.time_at(u), cos.t_min + (cos.t_max - cos.t_min) * u)
    ddpm = DiscreteVP(num_steps=1000)
    t = ddpm.time_at(torch.tensor([0.0, 0.1, 0.5, 1.0]))
    assert torch.equal(t, torch.tensor([0.0, 100.0, 500.0, 999.0]))   # 0.1 * 999 = 99.9 -> 100; 0.5 * 999 -> 500
