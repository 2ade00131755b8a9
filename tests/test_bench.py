"""``make bench`` (shared/engine/bench.py): the parameter-count helper, and one tiny configuration end to
end. No timing is asserted — timings belong to ``make bench`` on a quiet machine, not to a test."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.engine import bench


def test_param_match_counts_and_tolerance():
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)  # 110 parameters each
    m = bench.param_match(a, b)
    assert m["ours"] == m["theirs"] == 110 and m["ratio"] == 1.0 and m["within_tol"]
    assert bench.param_match(104, 100)["within_tol"]
    assert bench.param_match(96, 100)["within_tol"]
    off = bench.param_match(106, 100)
    assert not off["within_tol"] and off["rel_diff"] == pytest.approx(0.06)
    assert bench.param_match(110, 100, tol=0.1)["within_tol"]
    with pytest.raises(ValueError):
        bench.param_match(1, 0)


def test_time_interleaved_alternates_order():
    calls = []
    steps = {"ours": lambda: calls.append("o"), "theirs": lambda: calls.append("t")}
    times = bench.time_interleaved(steps, repeats=3, warmup=1)
    assert calls == ["o", "t", "o", "t", "t", "o", "o", "t"]
    assert all(len(v) == 3 for v in times.values())


def test_tiny_unet2d_runs_end_to_end():
    pytest.importorskip("diffusers")
    threads = torch.get_num_threads()
    try:
        row = bench.bench_case("unet2d", "tiny", repeats=1, warmup=0, threads=1, memory=False,
                               log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    # the DDPM-layout U-Nets are the same architecture: parameter counts agree exactly
    assert row["params"]["ours"] == row["params"]["theirs"]
    for mode in ("train", "sample"):
        assert row[mode]["ours_s"] > 0 and row[mode]["theirs_s"] > 0 and row[mode]["ratio"] > 0
    assert "unet2d[tiny]" in bench.format_table([row])


def test_motion_module_unet_matches_diffusers_trainable_parameters():
    """AnimateDiff's motion-module U-Net vs diffusers' UNetMotionModel: with the 2D weights frozen on both
    sides, the trainable (motion-module) parameter counts agree exactly and the totals within 5 %."""
    pytest.importorskip("diffusers")
    case = bench.build_case("motion", "tiny")
    ours, theirs, batch = case.ours(), case.theirs(), case.batch()
    trainable = [sum(p.numel() for p in s.model.parameters() if p.requires_grad) for s in (ours, theirs)]
    assert trainable[0] == trainable[1] > 0
    assert bench.param_match(ours.model, theirs.model, tol=0.07)["within_tol"]
    with torch.no_grad():
        assert ours.forward(ours.model, batch).shape == theirs.forward(theirs.model, batch).shape == batch["x"].shape
