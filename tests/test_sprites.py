"""The Sprites world (shared/data/sprite_worlds.py) and its closed-form judge (shared/metrics/sprite_judge.py): the
world renders what its labels say, and the judge separates exactly the properties the video claims compare."""
from __future__ import annotations

import math

import pytest
import torch

from shared.data.sprite_worlds import COLOURS, Sprites, parse_identity
from shared.data.video_worlds import DIRECTIONS8
from shared.metrics.sprite_judge import (
    SpriteJudge,
    fvd_sprites,
    identity_kept,
    independent_frames,
    seam_jump,
    separation,
    shuffle_frames,
    track_seam_jump,
    video_features,
)


def _clips(ds, n=None):
    items = [ds[i] for i in range(n or len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "y", "direction", "positions", "velocity")}


def test_items_are_pure_functions_of_seed_split_index():
    a, b = Sprites(n=8, seed=3)[5], Sprites(n=8, seed=3)[5]
    assert torch.equal(a["x"], b["x"]) and a["caption"] == b["caption"]
    assert not torch.equal(a["x"], Sprites(n=8, seed=4)[5]["x"])
    assert not torch.equal(a["x"], Sprites(n=8, seed=3, split="test")[5]["x"])
    assert a["x"].shape == (3, 8, 16, 16) and a["x"].dtype == torch.float32
    assert a["x"].min() >= -1 and a["x"].max() <= 1


def test_straight_motion_inside_the_canvas_as_labelled():
    ds = Sprites(n=64, frames=16, seed=1)
    for i in range(len(ds)):
        it = ds[i]
        p, v = it["positions"], it["velocity"]
        assert torch.allclose(p[1:] - p[:-1], v.expand(15, 2), atol=1e-5)   # constant velocity, no bounce
        assert math.isclose(float(v.norm()), float(it["speed"]), rel_tol=1e-5)
        steps = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
        step = torch.tensor(steps[int(it["direction"])], dtype=torch.float32)
        assert float(torch.nn.functional.cosine_similarity(v, step, dim=0)) > 0.999
        reach = Sprites.reach("square", float(it["radius"]))                  # the largest reach of these shapes
        assert p.min() >= reach and p.max() <= 16 - reach
        assert it["caption"].endswith(DIRECTIONS8[int(it["direction"])])


def test_rendered_colour_and_frames_only():
    ds = Sprites(n=16, seed=0, identities=["magenta diamond"])
    it = ds[0]
    ink = (it["x"] + 1).amax(0) / 2 > 0.99
    rgb = it["x"].permute(1, 2, 3, 0)[ink]
    assert torch.allclose(rgb, torch.tensor(COLOURS["magenta"]).expand_as(rgb))
    f = Sprites(n=16, seed=0, frames_only=True)[3]
    assert f["x"].shape == (3, 16, 16) and f["positions"].shape == (2,) and "direction" in f


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="identity 'purple blob'"):
        Sprites(identities=["purple blob"])
    with pytest.raises(ValueError, match="identity_swap_at"):
        Sprites(identity_swap_at=8)
    with pytest.raises(ValueError, match="directions"):
        Sprites(directions=[9])
    assert parse_identity("red circle") == ("red", "circle")


def test_judge_reads_real_clips_exactly():
    ds = Sprites(n=128, seed=0, split="test")
    c = _clips(ds)
    judge = SpriteJudge(ds.identities)
    s = judge.scores(c["x"], identity=c["y"], direction=c["direction"])
    for k in ("frame_validity", "identity_consistent", "motion_coherent", "coherent", "identity_accuracy",
              "direction_accuracy"):
        assert s[k] == 1.0, (k, s)
    assert s["identity_coverage"] > 0.9
    clips = judge.clips(c["x"])
    assert torch.allclose(clips["velocity"], c["velocity"], atol=0.05)
    assert torch.allclose(clips["frames"]["centroid"], c["positions"], atol=0.2)   # anti-aliased corners
    img = judge.scores(c["x"][:, :, 0], identity=c["y"])                   # images: T = 1
    assert img["frame_validity"] == 1.0 and img["identity_accuracy"] == 1.0


def test_judge_tells_shapes_of_one_colour_apart():
    ids = [f"red {s}" for s in ("circle", "square", "triangle", "diamond", "plus")]
    c = _clips(Sprites(n=100, seed=2, identities=ids))
    assert SpriteJudge(ids).scores(c["x"], identity=c["y"])["identity_accuracy"] == 1.0


def test_judge_separates_the_properties_the_claims_compare():
    ds = Sprites(n=128, seed=0, split="test")
    real = _clips(ds)["x"]
    swapped = _clips(Sprites(n=128, seed=0, split="test", identity_swap_at=4))["x"]
    sep = separation(SpriteJudge(ds.identities), real, swapped)
    assert sep["real"]["coherent"] == 1.0
    assert sep["swapped"]["identity_consistent"] == 0.0 and sep["swapped"]["motion_coherent"] > 0.95
    assert sep["shuffled"]["motion_coherent"] < 0.05 and sep["shuffled"]["identity_consistent"] == 1.0
    assert sep["independent"]["identity_consistent"] < 0.05 and sep["independent"]["motion_coherent"] < 0.05
    assert shuffle_frames(real, 0).shape == real.shape == independent_frames(real, 0).shape


def test_fvd_judge_is_small_between_real_sets_and_large_for_broken_time_or_frames():
    """FVD_judge (Sprites) of two sets of real clips is near 0 (exactly 0 for a set against itself); shuffled frames,
    frames of independent clips, frozen clips (no motion) and noisy frames are each many times farther."""
    ids = Sprites(n=1).identities
    judge = SpriteJudge(ids)
    a, b = (_clips(Sprites(n=64, seed=s, split="test"))["x"] for s in (2000, 4000))
    assert video_features(judge, a).shape == (64, 19)
    assert fvd_sprites(judge, a, a) < 1e-6
    floor = fvd_sprites(judge, b, a)
    frozen = b[:, :, :1].expand_as(b).contiguous()
    noisy = (b + 0.3 * torch.randn(b.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for broken in (shuffle_frames(b, 0), independent_frames(b, 1), frozen, noisy):
        assert fvd_sprites(judge, broken, a) > 5 * floor
    with pytest.raises(ValueError, match="at least 3 frames"):
        fvd_sprites(judge, b[:, :, :2], a[:, :, :2])


def test_judge_rejects_blends_and_empty_frames_but_tolerates_faint_noise():
    ds = Sprites(n=64, seed=0)
    x = _clips(ds)["x"]
    judge = SpriteJudge(ds.identities)
    blend = (x + x.roll(1, 0)) / 2
    assert judge.scores(blend)["frame_validity"] < 0.2
    empty = judge.scores(torch.full_like(x, -1.0), identity=torch.zeros(64), direction=torch.zeros(64), domain=[0])
    assert empty["frame_validity"] == 0.0 and all(math.isfinite(v) for v in empty.values())   # summaries need finite
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert judge.scores(noisy)["coherent"] == 1.0
    with pytest.raises(ValueError, match="RGB videos"):
        judge.scores(x[:, :1])


def test_seam_jump_is_zero_for_a_straight_mover_and_positive_for_shifted_windows():
    t = torch.arange(24, dtype=torch.float32)
    straight = torch.stack([3 + 0.25 * t, 4 + 0.2 * t], dim=-1)[None]          # (1, 24, 2): constant velocity
    valid = torch.ones(1, 24, dtype=torch.bool)
    assert abs(track_seam_jump(straight, valid, [8, 16])) < 1e-6
    shifted = straight.clone()
    shifted[:, 8:16] += torch.tensor([2.0, -1.0])                                # the middle window moved away
    shifted[:, 16:] += torch.tensor([-1.0, 1.5])
    assert track_seam_jump(shifted, valid, [8, 16]) > 1.5
    # pairs with an invalid frame do not count; no valid seam pair at all is NaN
    invalid = valid.clone()
    invalid[:, [8, 16]] = False
    assert math.isnan(track_seam_jump(shifted, invalid, [8, 16]))
    with pytest.raises(ValueError, match="boundaries"):
        track_seam_jump(straight, valid, [24])


def test_seam_jump_and_identity_kept_separate_real_long_videos_from_concatenated_clips():
    world = dict(identities=("red circle", "green square", "blue triangle", "yellow plus"), speed=(0.2, 0.28))
    judge = SpriteJudge(world["identities"], min_speed=0.1)
    real = _clips(Sprites(n=48, frames=24, seed=5, split="test", **world))["x"]
    concat = torch.cat([_clips(Sprites(n=48, frames=8, seed=6 + k, split="test", **world))["x"] for k in range(3)],
                       dim=2)
    assert abs(seam_jump(judge, real, [8, 16])) < 0.05 and seam_jump(judge, concat, [8, 16]) > 1.0
    assert identity_kept(judge, real) == 1.0 and identity_kept(judge, concat) < 0.7
    assert judge.scores(real)["motion_coherent"] == 1.0 and judge.scores(concat)["motion_coherent"] < 0.1
