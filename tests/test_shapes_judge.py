"""The styled-shapes judges (shared/metrics/shapes_judge.py): held-out style accuracy and depth error of the committed
weights, the separations the Gen-1 / video-ControlNet claims rely on (same structure in another style vs another
structure; a video's own edges vs another's), FD_judge behaviour, strict loading with one-line errors, a
deterministic retrain smoke, and the committed record matching the weights."""
from __future__ import annotations

import json

import pytest
import torch

from shared.data.styled_shapes import StyledShapes
from shared.metrics.shapes_judge import (
    DEFAULT_CONTENT_ENCODER_PATH,
    DEFAULT_SHAPES_JUDGE_PATH,
    ShapesJudge,
    depth_edges,
    depth_rmse,
    edge_f1,
    estimate_depth,
    fd_frames,
    load_depth_net,
    load_shapes_judge,
    load_style_net,
    style_accuracy,
)


@pytest.fixture(scope="module")
def judge() -> ShapesJudge:
    return load_shapes_judge()


@pytest.fixture(scope="module")
def test_videos():
    ds = StyledShapes(n=96, frames=8, size=16, split="test", seed=777, with_styles=True)
    items = [ds[i] for i in range(96)]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "style", "depth", "edges", "x_styles")}


def test_style_accuracy_and_depth_error_on_held_out_videos(judge, test_videos):
    v = test_videos
    assert style_accuracy(v["x"][:48], v["style"][:48], judge) > 0.9
    est = estimate_depth(v["x"][:48], judge)
    assert est.shape == (48, 8, 16, 16)
    mean = torch.full_like(v["depth"][:48], float(judge.depth.depth_mean))
    assert depth_rmse(est, v["depth"][:48]) < 0.5 * depth_rmse(mean, v["depth"][:48])


def test_judges_separate_what_the_claims_compare(judge, test_videos):
    """Depth: the same structure in another style is far closer than another structure; edges: a video's judged
    discontinuities match its own edges far better than another video's."""
    v = test_videos
    est = estimate_depth(v["x"][:48], judge)
    other_style = torch.stack([v["x_styles"][i, (int(v["style"][i]) + 1 + i % 5) % 6] for i in range(48)])
    same = depth_rmse(estimate_depth(other_style, judge), est)
    other = depth_rmse(estimate_depth(v["x"][48:], judge), est)
    assert other > 3 * same, (same, other)
    own_f1 = edge_f1(depth_edges(est), v["edges"][:48])
    swapped_f1 = edge_f1(depth_edges(estimate_depth(v["x"][48:], judge)), v["edges"][:48])
    assert own_f1 > swapped_f1 + 0.2, (own_f1, swapped_f1)


def test_fd_frames_ranks_frame_sets(judge, test_videos):
    a, b = test_videos["x"][:48], test_videos["x"][48:]
    real = fd_frames(a, b, judge)
    g = torch.Generator().manual_seed(0)
    # the judge is trained to read noisy samples (pixel noise up to std 0.2, train_shapes_judge.degrade), so the
    # noise here is far beyond that (std 0.5 only raises FD by ~1.3x over the real-vs-real floor of 48 videos)
    noisy = (a + 1.0 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    blank = torch.zeros_like(a)
    assert fd_frames(noisy, b, judge) > 2 * real and fd_frames(blank, b, judge) > 2 * real
    assert fd_frames(b, b, judge) == pytest.approx(0.0, abs=1e-3)


def test_depth_edges_and_f1_closed_forms():
    d = torch.ones(1, 6, 6)
    d[0, 2:4, 2:4] = 0.5
    e = depth_edges(d)
    ring = torch.zeros(1, 6, 6, dtype=torch.bool)
    ring[0, 1:5, 2:4] = True
    ring[0, 2:4, 1:5] = True
    assert torch.equal(e, ring)
    assert edge_f1(e, e) == 1.0 and edge_f1(e, ~e) == 0.0


def test_loading_is_strict_and_missing_files_name_the_retrain_command(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(DEFAULT_SHAPES_JUDGE_PATH))
    state["extra.weight"] = state.pop("style.head.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=ShapesJudge().metadata())
    with pytest.raises(RuntimeError, match=r"missing key\(s\) \['style.head.weight'\].*unexpected key\(s\) "
                                           r"\['extra.weight'\]"):
        load_shapes_judge(bad)
    with pytest.raises(FileNotFoundError, match="train_shapes_judge"):
        load_shapes_judge(tmp_path / "none.safetensors")
    assert not any(p.requires_grad for p in load_style_net().parameters())
    assert not any(p.requires_grad for p in load_depth_net().parameters())


def test_retrain_command_smoke_is_deterministic(tmp_path):
    from shared.metrics.train_shapes_judge import main

    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            main(["--out", str(tmp_path / f"{name}.safetensors"),
                  "--content-out", str(tmp_path / f"{name}_c.safetensors"), "--frames", "64",
                  "--style-steps", "2", "--depth-steps", "2", "--eval-videos", "6"])
    finally:
        torch.set_num_threads(threads)
    rec_a = json.loads((tmp_path / "a.json").read_text())
    rec_b = json.loads((tmp_path / "b.json").read_text())
    assert rec_a["state_sha256"] == rec_b["state_sha256"]
    assert rec_a["command"].startswith("python -m shared.metrics.train_shapes_judge")
    assert {"style_accuracy", "depth_rmse_same_structure_other_style", "depth_rmse_other_structure"} <= \
        rec_a["test"].keys()
    load_shapes_judge(tmp_path / "a.safetensors")
    load_style_net(tmp_path / "a_c.safetensors")


def test_committed_record_matches_weights(judge):
    from shared.metrics.train_judge import state_sha256

    record = json.loads(DEFAULT_SHAPES_JUDGE_PATH.with_suffix(".json").read_text())
    assert record["state_sha256"]["judge"] == state_sha256(judge.state_dict())
    assert record["state_sha256"]["content"] == state_sha256(load_style_net(DEFAULT_CONTENT_ENCODER_PATH).state_dict())
    assert record["command"].startswith("python -m shared.metrics.train_shapes_judge")
