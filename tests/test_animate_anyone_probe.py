"""Animate Anyone's budget probe (``python -m papers.animate_anyone.budget_probe``): a quick run trains the stage-1
ReferenceNet variant step by step, continuing exactly (the weights at the last step equal one uninterrupted run's),
and writes the per-step JSON; the reference-loss gap measures use of the reference; bad input is one line."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from papers.animate_anyone.budget_probe import frame_pairs, main, reference_losses, settings
from shared.diffusion.schedules import CosineVP
from shared.engine.claims import PROJECT_ROOT

EXP = "experiment=animate_anyone/puppets_claim_v2"


def test_budget_probe_quick_run_continues_exactly_and_writes_the_table(tmp_path):
    from safetensors.torch import load_file

    from papers.animate_anyone.budget_probe import train_to
    from shared.engine.compose import compose

    results = PROJECT_ROOT / "papers" / "animate_anyone" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    run = tmp_path / "probe"
    over = [EXP, "quick=true", "claim.seeds=[99]"]
    out = main([*over, f"run_dir={run}", "++probe.steps=[2,4]"])
    saved = json.loads((run / "budget_probe.json").read_text())
    assert saved["steps"] == [2, 4] and saved["seeds"] == [99] and saved["variants"] == ["image"] and saved["complete"]
    assert saved["claim_budget"] == {"image": 1000} and saved["quick"] is True
    assert saved["real"]["identity_acc"] == 1.0 and saved["chance"]["identity_acc_heldout"] == pytest.approx(1 / 3)
    assert len(saved["noise_levels"]["logsnr"]) == 5 and saved["noise_levels"]["prediction"] == "v"
    points = saved["per_seed"]["99"]["image"]
    assert [p["step"] for p in points] == [2, 4] and saved["wall_time_s"] > 0
    for p in points:
        for k in ("identity_acc", "identity_acc_heldout", "psnr", "fvd_judge", "loss_right", "loss_swapped"):
            assert 0.0 <= p[k] < 100.0, k
        assert p["loss_gap"] == pytest.approx(p["loss_swapped"] - p["loss_right"])
        assert len(p["loss_gap_per_level"]) == 5 and p["train_s"] > 0 and p["eval_s"] > 0
    assert points[0]["loss_right"] != points[1]["loss_right"]   # training went on between the steps
    assert out["per_seed"] == saved["per_seed"]
    # step 4, reached through step 2, is the model of one uninterrupted 4-step run (what a claim at that budget trains)
    cfg = compose([*over, "logger=none", f"run_dir={tmp_path / 'direct'}"])
    train_to(cfg, "image", "probe_image_seed99", 99, 4, {})
    a = load_file(run / "probe_image_seed99" / "export_step0000004.safetensors")
    b = load_file(tmp_path / "direct" / "probe_image_seed99" / "export_step0000004.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    step2 = load_file(run / "probe_image_seed99" / "export_step0000002.safetensors")
    assert not all(torch.equal(a[k], step2[k]) for k in a)
    resumes = json.loads((run / "probe_image_seed99" / "run.json").read_text())["resumes"]
    assert [(r["step"], r["budget"]["trainer.max_steps"]["now"]) for r in resumes] == [(2, 4)]   # continued, not redone
    # a re-run in the folder keeps the figures it has and continues from step 4; it cannot go back below that
    more = main([*over, f"run_dir={run}", "++probe.steps=[2,4,6]"])["per_seed"]["99"]["image"]
    assert [p.get("reused", False) for p in more] == [True, True, False] and more[:2] == [
        {**p, "reused": True} for p in points]
    resumes = json.loads((run / "probe_image_seed99" / "run.json").read_text())["resumes"]
    assert [r["step"] for r in resumes] == [2, 4]
    with pytest.raises(ValueError, match=r"already trained to step 6, past probe.steps \[3\]") as e:
        main([*over, f"run_dir={run}", "++probe.steps=[3,8]"])
    assert "\n" not in str(e.value)
    assert json.loads((run / "budget_probe.json").read_text())["complete"] is True
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before   # nothing published


def _cfg(*extra):
    from shared.engine.compose import compose

    return compose([EXP, *extra])


@pytest.mark.parametrize("extra, protocol, match", [
    ((), [], "run_dir is missing"),
    (("run_dir=/tmp/x", "claim.seeds=[99]", "++probe.steps=[4,2]"), [], r"probe.steps=\[4, 2\] must be strictly"),
    (("run_dir=/tmp/x", "claim.seeds=[99]", "++probe.steps=[2,2]"), [], r"probe.steps=\[2, 2\] must be strictly"),
    (("run_dir=/tmp/x", "claim.seeds=[99]", "++probe.steps=[0,2]"), [], r"probe.steps=\[0, 2\] must be"),
    (("run_dir=/tmp/x", "claim.seeds=[99]", "++probe.levels=[0.5,1.0]"), [], r"probe.levels=\[0.5, 1.0\]"),
    (("run_dir=/tmp/x", "claim.seeds=[99]", "++probe.step=[2]"), [], "probe.step is not a probe setting"),
    (("run_dir=/tmp/x",), [0, 1], r"claim.seeds=\[0, 1\] holds the protocol seed"),
    ((f"run_dir={PROJECT_ROOT / 'papers' / 'animate_anyone' / 'results'}", "claim.seeds=[99]"), [], "under papers/"),
])
def test_budget_probe_refuses_bad_input_in_one_line(extra, protocol, match):
    with pytest.raises(ValueError, match=match) as e:
        settings(_cfg(*extra), protocol)
    assert "\n" not in str(e.value)


def test_budget_probe_settings_defaults_and_protocol_seeds():
    s = settings(_cfg("run_dir=/tmp/x", "claim.seeds=[99,98]"), [0, 1])
    assert s["steps"] == [250, 500, 1000, 1500, 2000, 3000] and s["variants"] == ["image"] and s["seeds"] == [99, 98]
    s = settings(_cfg("run_dir=/tmp/x", "++probe.allow_protocol_seeds=true", "++probe.embed=true"), [0, 1])
    assert s["seeds"] == [0, 1] and s["variants"] == ["image", "image_embed"]
    assert settings(_cfg("run_dir=/tmp/x", "quick=true"), [0, 1])["steps"] == [2, 4]   # quick: numbers mean nothing
    with pytest.raises(ValueError, match="run_dir is missing"):
        main([EXP, "claim.seeds=[99]"])


def test_frame_pairs_swap_in_the_next_clip_of_another_identity():
    b, t = 4, 3
    clips = {"x": torch.randn(b, 3, t, 8, 8), "pose_map": torch.randn(b, 3, t, 8, 8),
             "reference": torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 8, 8).clone(),
             "identity": torch.tensor([3, 3, 7, 11])}
    p = frame_pairs(clips)
    assert p["x"].shape == (b * t, 3, 8, 8) and torch.equal(p["x"][t + 1], clips["x"][1, :, 1])
    assert torch.equal(p["pose_map"][t + 1], clips["pose_map"][1, :, 1])
    assert p["reference"][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert p["swapped"][:, 0, 0, 0].tolist() == [2, 2, 2, 2, 2, 2, 3, 3, 3, 0, 0, 0]
    clips["identity"] = torch.tensor([7, 7, 7, 7])
    with pytest.raises(ValueError, match="claim.num_samples=4: the evaluation clips hold one identity"):
        frame_pairs(clips)


def _stub(net):
    return SimpleNamespace(sampling_net=lambda use_ema=True: net, schedule=CosineVP(-20.0, 20.0), prediction="x0",
                           loss_weighting="simple", training_noise=lambda x0, g: None,
                           condition=lambda batch, drop=False: {"reference": batch["reference"],
                                                                "guide": batch["pose_map"]})


def test_reference_losses_measure_how_much_the_right_reference_helps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    pairs = {"x": x, "pose_map": torch.zeros_like(x), "reference": x.clone(), "swapped": x.roll(1, 0)}
    copier = _stub(lambda x_t, t, reference, guide: reference)   # predicts x0 = its reference
    out = reference_losses(copier, pairs, [0.2, 0.8], seed=3)
    assert out["loss_right"] == 0.0 and out["loss_swapped"] == pytest.approx(float((x.roll(1, 0) - x).pow(2).mean()))
    assert out["loss_gap"] > 0 and len(out["loss_gap_per_level"]) == 2
    blind = _stub(lambda x_t, t, reference, guide: 0.5 * x_t)   # ignores the reference
    a, b = reference_losses(blind, pairs, [0.2, 0.8], seed=3), reference_losses(blind, pairs, [0.2, 0.8], seed=3)
    assert a == b and a["loss_gap"] == 0.0 and a["loss_right_per_level"][0] != a["loss_right_per_level"][1]
    assert reference_losses(blind, pairs, [0.2, 0.8], seed=4)["loss_right"] != a["loss_right"]   # the seed is the noise
