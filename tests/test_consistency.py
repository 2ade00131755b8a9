"""Consistency models: boundary condition, N(k)/mu(k), the ODE step of CD, distances and the multistep sampler."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from shared.diffusion.consistency import (
    ct_num_scales,
    ct_target_ema,
    euler_between,
    heun_between,
    ict_num_scales,
    ict_weight,
    lognormal_pair_probs,
    multistep_consistency_sample,
    pseudo_huber,
)
from shared.diffusion.edm import EDMPrecond, consistency_scalings, karras_boundaries
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.schedules import EDMSchedule


class Rand(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t, **kw):
        return self.conv(x) + t.view(-1, 1, 1, 1)


def test_boundary_condition_f_x_eps_is_x():
    eps = 0.002
    c_skip, c_out = consistency_scalings(torch.tensor([eps]), 0.5, eps)
    assert c_skip.item() == pytest.approx(1.0) and c_out.item() == pytest.approx(0.0)
    f = EDMPrecond(Rand(), 0.5, boundary_eps=eps)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(f.denoise_sigma(x, torch.full((4,), eps)), x)
    # away from eps the network matters, and the scalings tend to EDM's
    assert not torch.allclose(f.denoise_sigma(x, torch.full((4,), 1.0)), x)
    c_skip, c_out = consistency_scalings(torch.tensor([80.0]), 0.5, eps)
    assert c_skip.item() == pytest.approx(0.25 / ((80 - eps) ** 2 + 0.25))
    assert c_out.item() == pytest.approx(0.5 * (80 - eps) / math.sqrt(0.25 + 6400))


def test_ct_schedules():
    assert ct_num_scales(0, 1000, 2, 150) == 2
    assert ct_num_scales(1000, 1000, 2, 150) == 151
    ns = [ct_num_scales(k, 1000, 2, 150) for k in range(0, 1001, 50)]
    assert ns == sorted(ns)
    assert ct_target_ema(2, 2, 0.9) == pytest.approx(0.9)
    assert ct_target_ema(151, 2, 0.9) == pytest.approx(math.exp(2 * math.log(0.9) / 151))


def test_ode_steps_exact_for_a_point_mass():
    """Data = a point c: D(x, s) = c, the PF-ODE path is linear in sigma, so Euler and Heun are exact."""
    c = torch.randn(1, 1, 4, 4)
    d_fn = lambda x, s: c.expand_as(x)  # noqa: E731
    x0 = c + 5.0 * torch.randn(3, 1, 4, 4)
    t, s = torch.full((3,), 5.0), torch.full((3,), 0.7)
    want = c + (0.7 / 5.0) * (x0 - c)
    torch.testing.assert_close(heun_between(d_fn, x0, t, s), want)
    torch.testing.assert_close(euler_between(d_fn, x0, t, s), want)


def test_pseudo_huber():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    c = 0.00054 * 4
    torch.testing.assert_close(pseudo_huber(a, b), torch.full((2,), math.sqrt(16 + c**2) - c))
    assert pseudo_huber(a, a).abs().max() < 1e-7


def test_multistep_sampler_calls_and_noise():
    calls = []

    def const(x, t):                     # a perfect consistency function for data = point mass at 0.3
        calls.append(float(t[0]))
        return torch.full_like(x, 0.3), None

    x_T = torch.randn(5, 1, 4, 4) * 80
    out = multistep_consistency_sample(const, x_T, [80.0, 2.0, 0.5])
    assert calls == [80.0, 2.0, 0.5]
    torch.testing.assert_close(out, torch.full_like(x_T, 0.3))

    def ident(x, t):
        return x, None
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(20000, 1, 1, 1)
    out = multistep_consistency_sample(ident, x, [80.0, 3.0], eps=0.002, generator=g)
    assert out.std().item() == pytest.approx(math.sqrt(9 - 0.002**2), rel=0.03)
    with pytest.raises(ValueError):
        multistep_consistency_sample(ident, x, [1.0, 2.0])


def test_one_step_module_sampler_matches_f_at_T():
    from papers.consistency_models.module import ConsistencyModel
    from shared.nn.unet import UNet
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1], num_res_blocks=1,
               attention_resolutions=[], norm_groups=4)
    m = ConsistencyModel(net, EDMSchedule(), mode="ct", sample_shape=[1, 8, 8], ema_decay=None, clip_x0=None)
    g = torch.Generator().manual_seed(0)
    x = m.sample(4, sampler={"times": [80.0]}, generator=g)
    z = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 80
    torch.testing.assert_close(x, m.net.denoise_sigma(z, torch.full((4,), 80.0)))
    den = make_denoiser(m.net, m.schedule, "x0")
    torch.testing.assert_close(den(z, torch.full((4,), 0.002))[0], z, rtol=1e-4, atol=1e-4)   # boundary


def test_cd_needs_teacher_and_lpips_needs_weights(tmp_path):
    from papers.consistency_models.module import ConsistencyModel, LPIPSDistance
    from shared.nn.unet import UNet
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1], num_res_blocks=1,
               attention_resolutions=[], norm_groups=4)
    with pytest.raises(ValueError, match="teacher_ckpt"):
        ConsistencyModel(net, EDMSchedule(), mode="cd")
    with pytest.raises(FileNotFoundError, match="LPIPS needs local weights"):
        LPIPSDistance(str(tmp_path / "lin.pth"), str(tmp_path / "vgg.pth"))


def test_consistency_pipeline_smoke(tmp_path):
    from shared.engine.train import run
    cfg = compose(["experiment=consistency_models/digits_claim", "trainer.max_steps=2", "claim.seeds=[0]",
                   "claim.num_samples=32", "claim.publish=false", "claim.teacher_cache=false", "data.batch_size=16",
                   "claim.ddim_steps=[1]", "claim.cd.steps=2", "claim.ct.steps=2", f"run_dir={tmp_path}"])
    rec = run(cfg)
    t = rec["metrics"]["fd_vs_nfe"]
    assert set(t["CD"]) == {"1", "2"} and set(t["CT"]) == {"1", "2"}
    assert rec["distance"] == {"CD": "l2", "CT": "pseudo_huber"}


def test_improved_ct_schedules():
    # N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)): 10 -> 1280 doubles 7 times
    assert ict_num_scales(0, 800_000, 10, 1280) == 11
    assert ict_num_scales(800_000, 800_000, 10, 1280) == 1281
    k_prime = math.floor(800_000 / 8)
    assert ict_num_scales(k_prime - 1, 800_000) == 11 and ict_num_scales(k_prime, 800_000) == 21
    assert ict_num_scales(3 * k_prime, 800_000) == 81
    bounds = karras_boundaries(EDMSchedule(), 161)
    p = lognormal_pair_probs(bounds, -1.1, 2.0)
    assert p.shape == (160,) and float(p.sum()) == pytest.approx(1.0) and bool((p >= 0).all())
    peak = int(p.argmax())   # the mass concentrates around exp(P_mean) ~ 0.33
    assert 0.05 < float(bounds[peak]) < 2.0
    torch.testing.assert_close(ict_weight(bounds[:-1], bounds[1:]), 1 / (bounds[1:] - bounds[:-1]))


def test_improved_ct_module_has_no_target_ema_and_trains():
    from papers.consistency_models.module import ConsistencyModel
    from shared.nn.unet import UNet
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1], num_res_blocks=1,
               attention_resolutions=[], norm_groups=4)
    m = ConsistencyModel(net, EDMSchedule(), mode="ct", curriculum="ict", s0=10, s1=160, total_steps=100,
                         index_sampling="lognormal", weighting="inverse_gap", distance="pseudo_huber",
                         sample_shape=[1, 8, 8], ema_decay=None, clip_x0=None)
    assert m.current_mu() == 0.0 and m.current_scales() == 11
    loss = m.objective(torch.rand(4, 1, 8, 8) * 2 - 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(ValueError, match="curriculum"):
        ConsistencyModel(net, EDMSchedule(), mode="ct", curriculum="fast")
    with pytest.raises(ValueError, match="needs mode='ct'"):
        ConsistencyModel(net, EDMSchedule(), mode="cd", teacher_ckpt="x", curriculum="ict", init_from_teacher=False)
