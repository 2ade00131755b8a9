"""EDM preconditioning, the shared EDM teacher, knowledge distillation and progressive distillation."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose
from omegaconf import OmegaConf

from shared.diffusion.edm import (
    EDMPrecond,
    edm_loss,
    edm_loss_weight,
    edm_scalings,
    karras_boundaries,
    nested_grid,
)
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import ddim_sample, euler_sample
from shared.diffusion.schedules import CosineVP, EDMSchedule

PAPERS = ("knowledge_distillation", "progressive_distillation", "consistency_models")


class Zero(torch.nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x)


class Affine(torch.nn.Module):
    """A fixed, non-trivial 'network' F(x, c_noise) = a x + b c_noise."""

    def forward(self, x, t, **kw):
        return 0.7 * x + 0.1 * t.view(-1, 1, 1, 1)


# ---------------------------------------------------------------- preconditioning identities
def test_edm_scalings_at_known_sigmas():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([sd]), sd)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(sd / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (sd * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(sd) / 4)
    c_skip, c_out, c_in, _ = edm_scalings(torch.tensor([1e-6, 80.0]), sd)
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-9) and c_out[0].item() == pytest.approx(0.0, abs=1e-5)
    assert c_skip[1].item() == pytest.approx(sd**2 / (6400 + sd**2))
    assert c_in[1].item() == pytest.approx(1 / math.sqrt(6400.25))
    sig = torch.logspace(-3, 2, 20)
    _, c_out, _, _ = edm_scalings(sig, sd)
    torch.testing.assert_close(edm_loss_weight(sig, sd) * c_out**2, torch.ones(20))   # unit effective target


def test_sigma_data_one_is_v_parameterisation():
    """With sigma_data = 1, D = x/(1+s^2) + s/sqrt(1+s^2) F: Salimans & Ho's x0 = alpha z - sigma_vp v with v = -F."""
    sig = torch.tensor([0.3, 1.0, 5.0])
    x = torch.randn(3, 1, 4, 4)
    net = Affine()
    d = EDMPrecond(net, 1.0).denoise_sigma(x, sig)
    alpha, s_vp = 1 / (1 + sig**2).sqrt(), sig / (1 + sig**2).sqrt()
    z = alpha.view(-1, 1, 1, 1) * x
    v = net(z, 0.25 * sig.log())
    torch.testing.assert_close(d, alpha.view(-1, 1, 1, 1) * z - s_vp.view(-1, 1, 1, 1) * (-v))


def test_zero_network_denoiser_returns_c_skip_x():
    x = torch.randn(4, 1, 8, 8)
    sig = torch.tensor([0.01, 0.5, 2.0, 80.0])
    pre = EDMPrecond(Zero(), 0.5)
    c_skip = edm_scalings(sig, 0.5)[0]
    torch.testing.assert_close(pre.denoise_sigma(x, sig), c_skip.view(-1, 1, 1, 1) * x)
    # and through the shared sampler convention: denoise(x_t, sigma) -> (x0_hat, eps_hat)
    sched = EDMSchedule()
    den = make_denoiser(pre, sched, "x0")
    x0, eps = den(x, sig)
    torch.testing.assert_close(x0, c_skip.view(-1, 1, 1, 1) * x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eps, (x - x0) / sig.view(-1, 1, 1, 1), rtol=1e-4, atol=1e-5)


def test_edm_loss_is_weighted_x0_mse():
    pre = EDMPrecond(Affine(), 0.5)
    x0 = torch.randn(5, 1, 4, 4)
    sig, n = torch.rand(5) + 0.1, torch.randn(5, 1, 4, 4)
    d = pre.denoise_sigma(x0 + sig.view(-1, 1, 1, 1) * n, sig)
    want = (edm_loss_weight(sig, 0.5) * ((d - x0) ** 2).flatten(1).mean(1)).mean()
    torch.testing.assert_close(edm_loss(pre, x0, EDMSchedule(), sigma=sig, noise=n), want)


def test_ddim_on_edm_schedule_is_euler():
    sched, pre = EDMSchedule(), EDMPrecond(Affine(), 0.5)
    den = make_denoiser(pre, sched, "x0")
    x = torch.randn(3, 1, 4, 4) * 80
    times = nested_grid(sched, 6)
    torch.testing.assert_close(ddim_sample(den, x, sched, times=times), euler_sample(den, x, sched, times=times))


def test_nested_grid_halves_and_boundaries():
    sched = EDMSchedule()
    for n in (1, 2, 4, 8):
        torch.testing.assert_close(nested_grid(sched, 2 * n)[::2], nested_grid(sched, n))
    assert nested_grid(sched, 1).tolist() == pytest.approx([80.0])
    b = karras_boundaries(sched, 18)
    assert b[0].item() == pytest.approx(0.002) and b[-1].item() == pytest.approx(80.0) and (b.diff() > 0).all()


# ---------------------------------------------------------------- progressive distillation's target
@pytest.mark.parametrize("schedule", [EDMSchedule(), CosineVP()], ids=["ve", "vp"])
def test_pd_target_is_two_teacher_ddim_steps(schedule):
    from papers.progressive_distillation.module import ddim_step, pd_target

    torch.manual_seed(0)
    if isinstance(schedule, EDMSchedule):
        teacher = make_denoiser(EDMPrecond(Affine(), 0.5), schedule, "x0")
        t, t1, t2 = 3.0, 1.0, 0.2
    else:
        w = torch.randn(1, 1, 4, 4) * 0.1
        teacher = make_denoiser(lambda x, tn: 0.5 * x + w, schedule, "eps")
        t, t1, t2 = 0.8, 0.6, 0.4
    z = torch.randn(4, 1, 4, 4)
    tb = lambda v: torch.full((4,), v)  # noqa: E731
    # two teacher DDIM steps t -> t1 -> t2 (the shared sampler, trajectory entry 2)
    _, traj = ddim_sample(teacher, z, schedule, times=[t, t1, t2, t2 / 2], return_trajectory=True)
    z2 = traj[2]
    torch.testing.assert_close(ddim_step(teacher, ddim_step(teacher, z, tb(t), tb(t1), schedule), tb(t1), tb(t2),
                                         schedule), z2, rtol=1e-5, atol=1e-5)
    a_t, s_t = schedule.alpha_sigma(tb(t))
    a_2, s_2 = schedule.alpha_sigma(tb(t2))
    x_tilde = pd_target(z, z2, a_t, s_t, a_2, s_2)
    # closed form of Salimans & Ho Eq. 8, written out
    r = (s_2 / s_t).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_tilde, (z2 - r * z) / (a_2.view(-1, 1, 1, 1) - r * a_t.view(-1, 1, 1, 1)))
    # one student DDIM step with x0 = x_tilde lands exactly on the teacher's two-step result
    eps_tilde = (z - a_t.view(-1, 1, 1, 1) * x_tilde) / s_t.view(-1, 1, 1, 1)
    one_step = a_2.view(-1, 1, 1, 1) * x_tilde + s_2.view(-1, 1, 1, 1) * eps_tilde
    torch.testing.assert_close(one_step, z2, rtol=1e-4, atol=1e-5)


def test_pd_target_at_the_clean_end_is_the_teacher_sample():
    from papers.progressive_distillation.module import pd_target
    z, z2 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    one, zero = torch.ones(2), torch.zeros(2)
    torch.testing.assert_close(pd_target(z, z2, one, 2 * one, one, zero), z2)


# ---------------------------------------------------------------- configs
def _smoke(paper: str):
    return [f"experiment={paper}/digits_claim", "trainer.max_steps=2", "claim.seeds=[0]", "claim.num_samples=32",
            "claim.publish=false", "claim.teacher_cache=false", "data.batch_size=16"]


@pytest.mark.parametrize("paper", PAPERS)
def test_experiment_configs_compose(paper):
    cfg = compose([f"experiment={paper}/digits_claim"])
    assert cfg.pipeline == f"papers.{paper}.claim.run"
    assert len(cfg.claim.seeds) >= 3
    assert cfg.report and all({"label", "metric", "paper"} <= set(r) for r in cfg.report)
    from hydra.utils import instantiate
    assert type(instantiate(cfg.module)).__name__ == "EDMModule"


def test_one_teacher_recipe_for_the_three_papers():
    keys = ("model", "module", "edm_schedule", "data")
    blocks = []
    for p in PAPERS:
        cfg = compose([f"experiment={p}/digits_claim"])
        block = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
        blocks.append(block | {"steps": cfg.trainer.max_steps})
    assert blocks[0] == blocks[1] == blocks[2]


def test_teacher_ckpt_option_and_kd_pipeline_smoke(tmp_path):
    """The KD pipeline end to end in seconds; then the PD pipeline reusing its teacher through claim.teacher_ckpt."""
    from shared.engine.train import run
    cfg = compose(_smoke("knowledge_distillation") + [
        f"run_dir={tmp_path}/kd", "claim.ddim_steps=[1,2,4]", "claim.student.steps=2",
        "claim.student.module.num_pairs=32", "claim.student.module.teacher_steps=2"])
    rec = run(cfg)
    t = rec["metrics"]["fd_vs_nfe"]
    assert set(t) == {"DDIM (EDM teacher)", "KD student"} and set(t["KD student"]) == {"1"}
    ckpt = tmp_path / "kd" / "teacher_seed0" / "teacher.ckpt"
    assert ckpt.is_file()
    cfg = compose(_smoke("progressive_distillation") + [
        f"run_dir={tmp_path}/pd", f'claim.teacher_ckpt="{tmp_path}/kd/teacher_seed{{seed}}/teacher.ckpt"',
        "claim.ddim_steps=[1,2]", "claim.pd.start_steps=2", "claim.pd.steps_per_round=2"])
    rec = run(cfg)
    assert rec["budget"]["teachers"] == {"0": "teacher_ckpt"}
    assert set(rec["metrics"]["fd_vs_nfe"]["PD"]) == {"1"}
    assert json.loads((tmp_path / "pd" / "results.json").read_text())["metrics"]["fd_vs_nfe"]


def test_few_step_table_reads_results(tmp_path):
    from tools.few_step_table import main
    for paper, method in (("a", "X"), ("b", "Y")):
        d = tmp_path / "papers" / paper / "results"
        d.mkdir(parents=True)
        curve = {"1": {"mean": 10.0, "std": 1.0, "per_seed": [9, 10, 11]}, "4": {"mean": 3.0, "std": 0.5}}
        d.joinpath("c.json").write_text(json.dumps({"paper": paper, "metrics": {"fd_judge_real_floor": 1.4,
                                                    "fd_vs_nfe": {method: curve}}, "budget": {"steps": 5}}))
    # a second protocol of the same paper (another budget) with other numbers gets its own row
    follow = {"1": {"mean": 5.0, "std": 0.1, "per_seed": [5, 5, 5]}}
    (tmp_path / "papers" / "a" / "results" / "c_budget.json").write_text(json.dumps(
        {"paper": "a", "claim": "c_budget", "metrics": {"fd_vs_nfe": {"X": follow}}}))
    md = main(["--root", str(tmp_path)])
    assert "| X | 10.00 ± 1.00 | 3.00 ± 0.50 |" in md and "| Y |" in md and "steps=5" in md
    assert "| X [c_budget] | 5.00 ± 0.10 |" in md and "disagree" not in md.lower()
    assert (tmp_path / "papers" / "few_step_fd_vs_nfe.png").is_file()
