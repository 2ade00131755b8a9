"""Identity / seam / drift metrics (shared/metrics/video_identity.py) on the MovingDigits world: a real clip keeps its
appearance exactly (integer motion), identity-swapped clips do not; centroids follow the world's positions; the
labelled comparison GIF writer (shared/engine/video_io.save_labelled_rows)."""
from __future__ import annotations

import pytest
import torch

from shared.data.video_worlds import MovingDigits
from shared.engine.video_io import save_labelled_rows
from shared.metrics.video_identity import (
    aligned_crops,
    appearance_consistency,
    identity_swapped,
    ink_centroids,
    seam_consistency,
)


def clips(n=24, frames=8, seed=5):
    w = MovingDigits(n=n, frames=frames, size=16, split="test", seed=seed)
    items = [w[i] for i in range(n)]
    return torch.stack([it["x"] for it in items]), torch.stack([it["positions"] for it in items])


def test_centroids_follow_the_digit_and_real_clips_keep_their_appearance():
    x, pos = clips()
    cen = ink_centroids(x)
    # the digit's ink centroid moves exactly as its top-left corner (integer motion, digit pasted whole)
    torch.testing.assert_close(cen[:, 1:] - cen[:, :1], pos[:, 1:, 0] - pos[:, :1, 0], atol=1e-4, rtol=0)
    assert appearance_consistency(x) == pytest.approx(1.0, abs=1e-5)
    assert appearance_consistency(x, pairs="first") == pytest.approx(1.0, abs=1e-5)
    swapped = identity_swapped(x)
    assert appearance_consistency(swapped) < 0.8
    assert aligned_crops(x, crop=10).shape == (24, 8, 10, 10)


def test_identity_swapped_takes_every_frame_from_another_clip_and_seams():
    x, _ = clips()
    s = identity_swapped(x, step=2)
    for b in (0, 5):
        for t in range(8):
            assert torch.equal(s[b, :, t], x[(b + 2 * t) % 24, :, t])
    with pytest.raises(ValueError, match="needs more clips"):
        identity_swapped(x[:5])
    a, _ = clips(seed=6)
    long = torch.cat([x, a], dim=2)                # two different clips back to back: a seam at frame 8
    assert seam_consistency(long, [8]) < 0.8 < seam_consistency(long, [4, 12])
    with pytest.raises(ValueError, match="boundaries must lie in"):
        seam_consistency(long, [16])


def test_labelled_rows_gif(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    rows = {"baseline": torch.rand(3, 1, 4, 8, 8, generator=g), "method\nname": torch.rand(2, 1, 6, 8, 8, generator=g)}
    p = save_labelled_rows(rows, tmp_path / "cmp.gif", scale=2)
    im = Image.open(p)
    assert im.n_frames == 6 and im.size[1] == 2 * (8 * 2 + 2 * 2)
    with pytest.raises(ValueError, match="at least one"):
        save_labelled_rows({}, tmp_path / "x.gif")
    # a list of pairs keeps its order; the frame counter adds one 14-pixel header line
    p = save_labelled_rows(list(rows.items()), tmp_path / "cmp_t.gif", scale=2, frame_counter=True)
    assert Image.open(p).size[1] == im.size[1] + 14 and Image.open(p).n_frames == 6
    with pytest.raises(ValueError, match=r"save_labelled_rows writes \.gif or \.mp4, got '.*cmp\.png'"):
        save_labelled_rows(rows, tmp_path / "cmp.png")
    assert not (tmp_path / "cmp.png").exists()


def test_video_scores_and_real_vs_swapped():
    from shared.metrics.video_identity import real_vs_swapped, video_scores

    x, _ = clips(n=12)
    s = video_scores(x, ("appearance", "ink_consistency"), key="{metric}_real")
    assert list(s) == ["appearance_real", "ink_consistency_real"]
    assert s["appearance_real"] == pytest.approx(appearance_consistency(x))
    with pytest.raises(ValueError, match="unknown video score 'lpips'"):
        video_scores(x, ("lpips",))
    with pytest.raises(ValueError, match="'fvd_judge' needs real="):
        video_scores(x, ("fvd_judge",))
    checks = real_vs_swapped(x, ("appearance", "ink_consistency"))
    assert set(checks) == {"appearance_real", "appearance_swapped", "ink_consistency_real", "ink_consistency_swapped"}
    # the controls must be separable: real clips keep their appearance, swapped ones do not
    assert checks["appearance_real"] > checks["appearance_swapped"] + 0.1
