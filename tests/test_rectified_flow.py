"""Rectified flow (papers/rectified_flow, shared/diffusion/flow.py, shared/metrics/straightness.py): the
objective's
closed-form velocity, reflow pairing, straightness, the MLP, configs and the claim pipelines (smoke),
plus the slow
claim test (``-m claims``) that asserts the paper's directions on every seed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from shared.diffusion.flow import (
    CouplingDataset,
    distillation_loss,
    flow_matching_loss,
    generate_pairs,
    one_step,
    sample_flow_time,
    solve_ode,
    velocity_target,
)
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import euler_sample
from shared.diffusion.schedules import FlowSchedule
from shared.engine.train import run
from shared.metrics.straightness import straightness
from shared.nn.mlp import TimeMLP

SCHED = FlowSchedule()


def gaussian_flow_net(mu: torch.Tensor, c: float):
    """The exact 1-rectified-flow velocity from X_0 ~ N(0, I) to X_1 ~ N(mu, c^2 I) (independent coupling):
    v(x, t) = E[X_1 - X_0 | X_t = x] = mu + (t c^2 - (1 - t)) / (t^2 c^2 + (1 - t)^2) (x - t mu), paper
    time t;
    as a network of schedule time (t_net = 1000 s, s = 1 - t)."""

    def net(x, t_net, **_):
        t = (1 - t_net / 1000.0).view(-1, *([1] * (x.dim() - 1)))
        return mu + (t * c**2 - (1 - t)) / (t**2 * c**2 + (1 - t) ** 2) * (x - t * mu)

    return net


def test_velocity_target_and_interpolation_closed_form():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
    assert torch.allclose(velocity_target(x1, x0), x1 - x0)
    t_rf = torch.rand(16, generator=g)
    x_t = SCHED.add_noise(x1, x0, 1 - t_rf)  # schedule time s = 1 - t_rf
    assert torch.allclose(x_t, t_rf[:, None] * x1 + (1 - t_rf[:, None]) * x0, atol=1e-6)


def test_objective_is_the_mse_to_x1_minus_x0_and_zero_at_the_exact_velocity():
    g = torch.Generator().manual_seed(1)
    x1, x0, s = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g), torch.rand(32, generator=g)
    net = TimeMLP(dim=2, hidden=16, depth=2, emb_dim=8)
    loss = flow_matching_loss(net, x1, SCHED, noise=x0, t=s)
    x_t = (1 - s[:, None]) * x1 + s[:, None] * x0
    manual = ((net(x_t, 1000 * s) - (x1 - x0)) ** 2).mean()
    assert torch.allclose(loss, manual, atol=1e-6)
    # a point mass at mu: the exact field (mu - x) / s (schedule time) has zero loss; a perturbed one does not
    mu = torch.tensor([1.5, -0.5])
    exact = lambda x, t_net, **_: (mu - x) / (t_net / 1000.0)[:, None]  # noqa: E731
    data = mu.expand(64, 2)
    assert flow_matching_loss(exact, data, SCHED, generator=g) < 1e-10
    assert flow_matching_loss(lambda x, t, **_: exact(x, t) + 0.1, data, SCHED, generator=g) > 5e-3
    with pytest.raises(ValueError, match="FlowSchedule"):
        from shared.diffusion.schedules import DiscreteVP

        flow_matching_loss(net, x1, DiscreteVP())


def test_optimal_gaussian_velocity_minimises_the_objective():
    """The closed-form conditional expectation beats nearby fields on the Monte-Carlo objective."""
    mu, c = torch.tensor([2.0, -1.0]), 0.5
    g = torch.Generator().manual_seed(2)
    x1 = mu + c * torch.randn(20000, 2, generator=g)
    x0, s = torch.randn(20000, 2, generator=g), torch.rand(20000, generator=g) * 0.98 + 0.01
    exact = gaussian_flow_net(mu, c)
    best = flow_matching_loss(exact, x1, SCHED, noise=x0, t=s)
    for scale in (0.9, 1.1):
        scaled = lambda x, tn, scale=scale, **_: scale * exact(x, tn)  # noqa: E731
        worse = flow_matching_loss(scaled, x1, SCHED, noise=x0, t=s)
        assert worse > best


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    u = sample_flow_time(10000, "uniform", g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.02
    ln = sample_flow_time(10000, "logit_normal", g)
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.median() - 0.5) < 0.02 and ln.std() < u.std()
    shifted = sample_flow_time(10000, "logit_normal", g, loc=1.0)
    assert abs(shifted.median() - torch.sigmoid(torch.tensor(1.0))) < 0.02
    with pytest.raises(ValueError):
        sample_flow_time(4, "cosine")


def test_reflow_pairs_are_the_ode_map_and_reintegrate_to_the_same_sample(tmp_path):
    """Gaussian -> Gaussian: the ODE of the exact field maps z to mu + c z; re-integrating a pair's noise
    gives its
    sample; pairs survive a save/load round trip."""
    mu, c = torch.tensor([2.0, -1.0]), 0.5
    den = make_denoiser(gaussian_flow_net(mu, c), SCHED, "flow")
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    noise, x1, nfes = generate_pairs(
        lambda yb: den, z, SCHED, solver="rk45", rtol=1e-6, atol=1e-6, batch_size=100
    )
    assert len(nfes) == 3 and all(n > 2 for n in nfes)
    assert torch.allclose(x1, mu + c * z, atol=2e-3)
    again, _ = solve_ode(den, noise, SCHED, "rk45", rtol=1e-6, atol=1e-6)
    assert torch.allclose(again, x1, atol=1e-5)
    euler = euler_sample(den, noise, SCHED, 200)
    assert torch.allclose(euler, x1, atol=2e-2)
    path = CouplingDataset(noise=noise, x=x1, y=torch.arange(256) % 10).save(tmp_path / "pairs.safetensors")
    ds = CouplingDataset(path=str(path))
    assert len(ds) == 256 and torch.equal(ds[5]["noise"], noise[5]) and torch.equal(ds[5]["x"], x1[5])
    assert int(ds[5]["y"]) == 5


def test_one_step_map_is_one_euler_step_and_distillation_loss():
    net = TimeMLP(dim=2, hidden=16, depth=2, emb_dim=8)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    den = make_denoiser(net, SCHED, "flow")
    with torch.no_grad():
        assert torch.allclose(one_step(net, z, SCHED), euler_sample(den, z, SCHED, 1), atol=1e-6)
        target = one_step(net, z, SCHED)
        assert distillation_loss(net, z, target, SCHED) < 1e-12
        assert distillation_loss(net, z, target + 1.0, SCHED) == pytest.approx(1.0, rel=1e-5)


def test_straightness_closed_forms():
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    line = t[:, None, None] * b + (1 - t[:, None, None]) * a
    assert straightness(line) == pytest.approx(0.0, abs=1e-12)
    # quarter circle from (1, 0) to (0, 1) at constant angular speed: S = pi^2 / 4 - 2
    ang = (math.pi / 2) * t
    arc = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)[:, None, :]
    assert straightness(arc) == pytest.approx(math.pi**2 / 4 - 2, rel=1e-3)
    # a straight line travelled at non-constant speed is not "straight" in the paper's sense either
    warped = (t**2)[:, None, None] * b + (1 - t**2)[:, None, None] * a
    expected = float(((b - a) ** 2).sum(-1).mean()) / 3  # int (1 - 2t)^2 dt = 1/3
    assert straightness(warped) == pytest.approx(expected, rel=1e-3)


def test_reflow_straightens_the_gaussian_flow_in_closed_form():
    """N(0, I) -> N(mu, c^2 I): the 1-RF (independent coupling) is curved; its reflow, trained on the
    1-RF's pairs
    (z, mu + c z), has the field v(x, t) = mu + (c - 1)(x - t mu) / (1 + t (c - 1)) whose paths are
    straight lines at
    constant speed: S = 0 and one Euler step reproduces the 1-RF's map exactly."""
    mu, c = torch.tensor([1.0, -2.0]), 0.3

    def rf2(x, t_net, **_):
        t = (1 - t_net / 1000.0)[:, None]
        return mu + (c - 1) * (x - t * mu) / (1 + t * (c - 1))

    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(5))
    d1, d2 = make_denoiser(gaussian_flow_net(mu, c), SCHED, "flow"), make_denoiser(rf2, SCHED, "flow")
    _, traj1 = euler_sample(d1, z, SCHED, 200, return_trajectory=True)
    _, traj2 = euler_sample(d2, z, SCHED, 200, return_trajectory=True)
    assert straightness(traj1) > 0.05
    assert straightness(traj2) < 1e-8
    assert torch.allclose(euler_sample(d2, z, SCHED, 1), mu + c * z, atol=1e-5)
    assert torch.allclose(traj1[-1], mu + c * z, atol=1e-2)


def test_time_mlp_shapes_and_labels():
    net = TimeMLP(dim=2, hidden=16, depth=2, emb_dim=8, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4) * 1000
    assert net(x, t).shape == (4, 2) and net(x, t, y=torch.tensor([0, 1, 2, 3])).shape == (4, 2)
    with pytest.raises(ValueError):
        TimeMLP(dim=2)(x, t, y=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("experiment", ["rectified_flow/toy2d_claim", "rectified_flow/digits_claim"])
def test_claim_pipelines_run_in_smoke_mode(experiment, tmp_path):
    cfg = compose(
        [f"experiment={experiment}", "claim.smoke=true", "claim.publish=false", f"run_dir={tmp_path}"]
    )
    record = run(cfg)
    m = record["metrics"]
    if experiment.endswith("toy2d_claim"):
        assert {"1rf", "2rf", "3rf", "2rf_distill"} <= set(m["generation"]) and "transfer" in m
        assert (tmp_path / "trajectories.png").exists()
    else:
        assert set(m["fd_vs_nfe"]) == {"1rf", "2rf", "2rf_distill", "ddpm_ddim"}
        assert {"1", "2", "adaptive"} <= set(m["fd_vs_nfe"]["1rf"]) and m["fd_vs_nfe"]["1rf"]["adaptive"][
            "nfe"
        ]["mean"] > 1
        assert (tmp_path / "one_step_samples.png").exists()


def test_cifar10_paper_config_composes():
    cfg = compose(["experiment=rectified_flow/cifar10"])
    assert cfg.model.base_channels == 128 and list(cfg.model.channel_mult) == [1, 2, 2, 2]
    assert cfg.model.num_res_blocks == 4 and cfg.module.ema_decay == 0.999999 and cfg.data.batch_size == 128
    assert cfg.module.prediction == "flow" and cfg.trainer.gradient_clip_val == 1.0
