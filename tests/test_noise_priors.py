"""Correlated noise priors over frames (shared/diffusion/noise_priors.py) and the method layer's hook: the empirical
frame covariance matches the stated one (PYoCo mixed / progressive, VideoFusion base + residual), every frame stays
N(0, I), and the module draws x_T and the training eps from its prior (no prior: exactly the i.i.d. draws)."""
from __future__ import annotations

import math

import pytest
import torch

from shared.diffusion.noise_priors import (
    BaseResidualNoise,
    IIDNoise,
    MixedNoise,
    ProgressiveNoise,
    empirical_frame_covariance,
)
from shared.diffusion.schedules import DiscreteVP
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.unet import UNet

SHAPE = (4000, 2, 6, 4, 4)   # 128k observations per frame pair: the empirical covariance to ~0.01


@pytest.mark.parametrize("prior", [IIDNoise(), MixedNoise(1.0), MixedNoise(0.5), ProgressiveNoise(2.0),
                                   ProgressiveNoise(1.0), BaseResidualNoise(0.5), BaseResidualNoise(0.3, None),
                                   BaseResidualNoise(0.8, 0)])
def test_empirical_frame_covariance_matches_the_stated_one(prior):
    eps = prior.sample(SHAPE, torch.Generator().manual_seed(0))
    emp = empirical_frame_covariance(eps)
    stated = prior.frame_covariance(SHAPE[2])
    torch.testing.assert_close(emp, stated, atol=0.015, rtol=0)
    assert abs(float(eps.mean())) < 0.01


def test_stated_covariances_are_the_papers_formulas():
    a = 1.0
    mixed = MixedNoise(a).frame_covariance(4)
    assert mixed[0, 0] == 1 and mixed[0, 3] == pytest.approx(a**2 / (1 + a**2))
    prog = ProgressiveNoise(2.0).frame_covariance(5)
    rho = 2.0 / math.sqrt(5.0)
    assert prog[1, 4].item() == pytest.approx(rho**3) and prog[2, 2] == 1
    vf = BaseResidualNoise(0.5, "middle")
    assert vf.key_index(8) == 3 and vf.lambdas(8)[3] == 1.0 and vf.lambdas(8)[0] == 0.5   # ceil(8/2) = 4, 1-based
    cov = vf.frame_covariance(8)
    assert cov[3, 0].item() == pytest.approx(math.sqrt(0.5)) and cov[0, 1].item() == pytest.approx(0.5)
    # PYoCo's mixed prior is the base/residual decomposition with lambda = alpha^2 / (1 + alpha^2), no key frame
    torch.testing.assert_close(MixedNoise(0.7).frame_covariance(5),
                               BaseResidualNoise(0.49 / 1.49, None).frame_covariance(5))


def test_videofusion_base_plus_residual_has_unit_variance_and_its_parts():
    prior = BaseResidualNoise(0.6, "middle")
    b, r = prior.sample_parts(SHAPE, torch.Generator().manual_seed(1))
    assert b.shape == (SHAPE[0], SHAPE[1], 1, *SHAPE[3:]) and r.shape == SHAPE
    eps = prior.combine(b, r)
    var = eps.double().transpose(0, 2).reshape(SHAPE[2], -1).var(dim=1)
    torch.testing.assert_close(var, torch.ones(SHAPE[2], dtype=torch.float64), atol=0.015, rtol=0)
    k = prior.key_index(SHAPE[2])
    torch.testing.assert_close(eps[:, :, k], b[:, :, 0])   # the key frame's noise is the base noise


def test_images_and_single_frames_are_iid_and_bad_parameters_are_one_line_errors():
    for prior in (MixedNoise(3.0), ProgressiveNoise(3.0), BaseResidualNoise(0.9)):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(prior.sample((3, 1, 8, 8), g1), torch.randn((3, 1, 8, 8), generator=g2))
        assert prior.sample((2, 1, 1, 4, 4)).shape == (2, 1, 1, 4, 4)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        MixedNoise(-1)
    with pytest.raises(ValueError, match=r"lambda must lie in \[0, 1\]"):
        BaseResidualNoise(1.5)
    with pytest.raises(ValueError, match="key_frame 9 is outside"):
        BaseResidualNoise(0.5, 9).lambdas(4)


def _module(prior=None):
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attention_resolutions=(), norm_groups=4)
    return DiffusionModule(net, DiscreteVP(num_steps=20), sample_shape=(1, 4, 8, 8), noise_prior=prior,
                           ema_decay=None)


def test_the_module_draws_x_T_and_training_eps_from_its_prior_and_without_one_draws_as_before():
    plain = _module()
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(plain.noise(5, g),
                               torch.randn((5, 1, 4, 8, 8), generator=torch.Generator().manual_seed(3)))
    assert plain.training_noise(torch.zeros(2, 1, 4, 8, 8), g) is None
    prior = MixedNoise(2.0)
    m = _module(prior)
    x_T = m.noise(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x_T, prior.sample((5, 1, 4, 8, 8), torch.Generator().manual_seed(3)))
    eps = m.training_noise(torch.zeros(2, 1, 4, 8, 8), torch.Generator().manual_seed(4))
    torch.testing.assert_close(eps, prior.sample((2, 1, 4, 8, 8), torch.Generator().manual_seed(4)))
    # the loss uses that eps: a spy network sees x_t = alpha x0 + sigma eps with the prior's eps
    seen = {}

    def spy(x, t, **kw):
        seen["x"] = x
        return torch.zeros_like(x)

    m.net.forward = spy
    x0 = torch.zeros(2, 1, 4, 8, 8)
    m.objective(x0, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    eps = prior.sample(x0.shape, g)   # drawn first (an argument of the loss), then t
    _, sigma = m.schedule.alpha_sigma(m.schedule.sample_t(2, generator=g))
    torch.testing.assert_close(seen["x"], sigma.view(-1, 1, 1, 1, 1) * eps)
    with pytest.raises(ValueError, match="noise_prior must have sample"):
        _module(prior=object())
