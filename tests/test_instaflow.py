"""InstaFlow (papers/instaflow): the class-conditional pipeline — label dropout, guided reflow pairs keep
their
condition, the stage module, config and the claim pipeline (smoke), plus the slow claim test (``-m
claims``)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from shared.diffusion.flow import CouplingDataset
from shared.diffusion.schedules import FlowSchedule
from shared.engine.stages import save_reflow_pairs
from shared.engine.train import run
from shared.nn.mlp import TimeMLP


def small_module(**kw):
    from papers.instaflow.module import InstaFlow

    return InstaFlow(
        TimeMLP(dim=2, hidden=16, depth=2, emb_dim=8, num_classes=3),
        FlowSchedule(),
        ema_decay=None,
        sample_shape=[2],
        **kw,
    )


def test_instaflow_needs_a_conditional_network():
    from papers.instaflow.module import InstaFlow

    with pytest.raises(ValueError, match="num_classes"):
        InstaFlow(TimeMLP(dim=2, hidden=8, depth=1, emb_dim=8), FlowSchedule(), sample_shape=[2])


def test_guided_pairs_keep_their_labels_and_follow_the_guided_ode(tmp_path):
    """Pairs from a CFG teacher: X_1 is the guided ODE's output for the pair's own label (cond and null
    differ)."""
    torch.manual_seed(0)
    m = small_module()
    with torch.no_grad():
        m.net.label_embed.table.weight.mul_(5.0)  # make the condition matter
    z, y = torch.randn(30, 2), torch.arange(30) % 3
    nfe = save_reflow_pairs(m, z, tmp_path / "p.safetensors", y, guidance_scale=2.0, rtol=1e-5, batch_size=16)
    assert nfe > 2
    ds = CouplingDataset(path=str(tmp_path / "p.safetensors"))
    assert torch.equal(ds.y, y) and torch.equal(ds.noise, z)
    from shared.diffusion.flow import solve_ode

    x_g, _ = solve_ode(m.denoiser(True, {"y": y[:16]}, 2.0), z[:16], m.schedule, "rk45", rtol=1e-5, atol=1e-5)
    x_c, _ = solve_ode(m.denoiser(True, {"y": y[:16]}, 1.0), z[:16], m.schedule, "rk45", rtol=1e-5, atol=1e-5)
    assert torch.allclose(ds.x[:16], x_g, atol=1e-5)
    assert not torch.allclose(x_g, x_c, atol=1e-3)


def test_training_loss_uses_pairs_labels_and_drops_them_for_cfg():
    torch.manual_seed(1)
    m = small_module(cond_drop_prob=1.0)  # every label dropped -> same loss as the null label
    batch = {"x": torch.randn(8, 2), "noise": torch.randn(8, 2), "y": torch.arange(8) % 3}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dropped = m.training_loss(batch, g())
    null = m.training_loss({**batch, "y": torch.full((8,), 3)}, g())
    assert torch.allclose(dropped, null)
    m.stage = "distill"
    with pytest.raises(ValueError, match="noise"):
        m.training_loss({"x": batch["x"], "y": batch["y"]}, g())
    assert m.training_loss(batch, g()) > 0


def test_digits_claim_config_builds_the_conditional_module():
    cfg = compose(["experiment=instaflow/digits_claim"])
    assert cfg.model.num_classes == 10 and cfg.module.cond_drop_prob > 0 and cfg.claim.guidance > 1
    module = instantiate(cfg.module)
    assert module.prediction == "flow" and module.net.null_label == 10


def test_claim_pipeline_runs_in_smoke_mode(tmp_path):
    cfg = compose(
        [
            "experiment=instaflow/digits_claim",
            "claim.smoke=true",
            "claim.publish=false",
            f"run_dir={tmp_path}",
        ]
    )
    m = run(cfg)["metrics"]
    assert {"distill_2rf", "distill_1rf", "2rf_1step", "teacher_guided_1step"} <= set(m["one_step"])
    assert 0.0 <= m["one_step"]["distill_2rf"]["judge_accuracy"]["mean"] <= 1.0
    assert m["fd_vs_nfe"]["instaflow_distill_2rf"]["1"]["nfe"] == 1
    assert (tmp_path / "grid_distill_2rf.png").exists() and (tmp_path / "grid_distill_1rf.png").exists()
