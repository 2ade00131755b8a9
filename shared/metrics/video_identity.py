"""Identity, seam and drift metrics of videos of one moving object (the MovingDigits world and its kin).

Frame consistency on raw pixels (``shared.metrics.video.frame_consistency``) rewards a *static* object: a digit that
moves two pixels per frame overlaps itself little, a different digit at the same place a lot. The metrics here
compare *appearance* after motion compensation, so that they see whether the object is the same, not where it is:

* :func:`ink_centroids` — per frame the ink-weighted centre (row, col) of ``(x + 1) / 2`` (colour averaged);
* :func:`aligned_crops` — a ``crop``-pixel window around each frame's centroid (zero outside the canvas);
* :func:`appearance_consistency` — mean cosine similarity of consecutive frames' aligned crops (1: the same
  object in every frame wherever it moves); ``pairs="first"`` compares every frame with frame 0 instead (drift);
* :func:`seam_consistency` — the same cosine at chosen frame pairs ``(t - 1, t)`` (window boundaries of a long
  video);
* :func:`identity_swapped` — the control clips these metrics must tell apart from real ones: frame ``t`` of clip
  ``b`` taken from clip ``b + t * step`` (every frame a different object, the motion statistics kept);
* :func:`frame_digit_agreement` — the video judge's digit class of each frame (a static clip of it), and the
  fraction of consecutive frames (or of frames vs frame 0) judged alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ink", "ink_consistency", "ink_centroids", "aligned_crops", "appearance_consistency", "seam_consistency",
           "identity_swapped", "frame_digit_agreement", "frame_digits"]


def _check(videos: torch.Tensor) -> torch.Tensor:
    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, C, T, H, W), got shape {tuple(videos.shape)}")
    return videos.float()


def ink(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W) ink in [0, 1]: ``(x + 1) / 2`` averaged over colour (background -1 → 0)."""
    return ((_check(videos) + 1) / 2).clamp(0, 1).mean(dim=1)


def ink_centroids(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) ink-weighted (row, col) centre of every frame (the canvas centre for an empty frame)."""
    m = ink(videos)
    _, _, h, w = m.shape
    mass = m.sum(dim=(2, 3))
    rows = torch.arange(h, dtype=m.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=m.dtype).view(1, 1, 1, w)
    r = (m * rows).sum(dim=(2, 3)) / mass.clamp_min(1e-6)
    c = (m * cols).sum(dim=(2, 3)) / mass.clamp_min(1e-6)
    empty = mass < 1e-6
    r[empty], c[empty] = (h - 1) / 2, (w - 1) / 2
    return torch.stack([r, c], dim=-1)


def aligned_crops(videos: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """(B, T, crop, crop) ink windows centred on each frame's centroid (rounded; zeros outside the canvas).
    ``crop`` defaults to three quarters of the canvas side."""
    m = ink(videos)
    b, t, h, w = m.shape
    crop = int(crop or max(2, (3 * min(h, w)) // 4))
    pad = crop
    padded = F.pad(m, (pad, pad, pad, pad))
    cen = ink_centroids(videos).round().long()
    out = torch.empty(b, t, crop, crop, dtype=m.dtype)
    half = crop // 2
    for i in range(b):
        for j in range(t):
            r0 = int(cen[i, j, 0]) - half + pad
            c0 = int(cen[i, j, 1]) - half + pad
            out[i, j] = padded[i, j, r0:r0 + crop, c0:c0 + crop]
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(-2), b.flatten(-2), dim=-1, eps=1e-6)


def appearance_consistency(videos: torch.Tensor, crop: int | None = None, pairs: str = "consecutive",
                           reduction: str = "mean") -> float | torch.Tensor:
    """Mean cosine of aligned crops of consecutive frames (``pairs="first"``: every frame vs frame 0)."""
    z = aligned_crops(videos, crop)
    if z.shape[1] < 2:
        raise ValueError("appearance_consistency needs at least 2 frames")
    if pairs == "consecutive":
        sim = _cos(z[:, 1:], z[:, :-1])
    elif pairs == "first":
        sim = _cos(z[:, 1:], z[:, :1].expand_as(z[:, 1:]))
    else:
        raise ValueError(f"pairs must be 'consecutive' or 'first', got {pairs!r}")
    per_video = sim.mean(dim=1)
    return per_video if reduction == "none" else float(per_video.mean())


def seam_consistency(videos: torch.Tensor, boundaries: Sequence[int], crop: int | None = None) -> float:
    """Mean cosine of aligned crops of frames ``(t - 1, t)`` for each ``t`` in ``boundaries``."""
    z = aligned_crops(videos, crop)
    idx = [int(t) for t in boundaries]
    if not idx or min(idx) < 1 or max(idx) >= z.shape[1]:
        raise ValueError(f"boundaries must lie in [1, {z.shape[1] - 1}], got {list(boundaries)}")
    prev = torch.tensor([t - 1 for t in idx])
    cur = torch.tensor(idx)
    return float(_cos(z[:, cur], z[:, prev]).mean())


def identity_swapped(videos: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Control clips: frame ``t`` of clip ``b`` is frame ``t`` of clip ``(b + t * step) mod B`` (needs ``B > T *
    step`` so no clip repeats one of its sources)."""
    v = _check(videos)
    b, t = v.shape[0], v.shape[2]
    if b <= (t - 1) * step:
        raise ValueError(f"identity_swapped needs more clips ({b}) than frames x step ({t} x {step})")
    src = (torch.arange(b)[:, None] + step * torch.arange(t)[None, :]) % b   # (B, T)
    return torch.stack([v[src[:, j], :, j] for j in range(t)], dim=2)


@torch.no_grad()
def frame_digits(videos: torch.Tensor, judge=None, clip_frames: int = 8) -> torch.Tensor:
    """(B, T) digit class of every frame by the video judge, each frame judged as a static ``clip_frames`` clip."""
    from shared.metrics.video_judge import video_judge_logits

    v = _check(videos)
    b, c, t, h, w = v.shape
    frames = v.permute(0, 2, 1, 3, 4).reshape(b * t, c, 1, h, w).expand(-1, -1, clip_frames, -1, -1)
    return video_judge_logits(frames.contiguous(), "digit", judge).argmax(dim=1).view(b, t)


def frame_digit_agreement(videos: torch.Tensor, judge=None, pairs: str = "consecutive") -> float:
    """Fraction of consecutive frame pairs (``"first"``: frames vs frame 0) whose judged digit class agrees."""
    d = frame_digits(videos, judge)
    if pairs == "consecutive":
        same = d[:, 1:] == d[:, :-1]
    elif pairs == "first":
        same = d[:, 1:] == d[:, :1]
    else:
        raise ValueError(f"pairs must be 'consecutive' or 'first', got {pairs!r}")
    return float(same.float().mean())


def ink_consistency(videos: torch.Tensor) -> float:
    """Frame consistency (``shared.metrics.video.frame_consistency``: mean cosine similarity of consecutive frames)
    of the ink maps ``(x + 1) / 2`` — background pixels contribute nothing, so it reads the digits' strokes."""
    from shared.metrics.video import frame_consistency

    return frame_consistency(videos, feature_fn=lambda f: (f + 1) / 2)


def video_scores(videos: torch.Tensor, metrics: Sequence[str], judge=None, key: str = "{metric}",
                 real: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 directions: torch.Tensor | None = None) -> dict[str, float]:
    """The named scores of ``videos`` (B, C, T, H, W) in the given order, keyed by ``key.format(metric=name)``:
    ``fvd_judge`` (against ``real``), ``appearance`` (:func:`appearance_consistency`), ``digit_agreement``
    (:func:`frame_digit_agreement`), ``digit_accuracy`` (against ``labels``), ``motion_accuracy`` (against
    ``directions``) and ``ink_consistency`` — one place that reads a generated or real video set the same way in
    every MovingDigits claim."""
    from shared.metrics.video_judge import digit_accuracy, fvd_judge, motion_accuracy

    needs = {"fvd_judge": ("real", real), "digit_accuracy": ("labels", labels),
             "motion_accuracy": ("directions", directions)}
    score = {"fvd_judge": lambda v: fvd_judge(v, real, judge), "appearance": appearance_consistency,
             "digit_agreement": lambda v: frame_digit_agreement(v, judge),
             "digit_accuracy": lambda v: digit_accuracy(v, labels, judge),
             "motion_accuracy": lambda v: motion_accuracy(v, directions, judge), "ink_consistency": ink_consistency}
    out = {}
    for m in metrics:
        if m not in score:
            raise ValueError(f"unknown video score {m!r}; expected one of {sorted(score)}")
        if m in needs and needs[m][1] is None:
            raise ValueError(f"video score {m!r} needs {needs[m][0]}=")
        out[key.format(metric=m)] = float(score[m](videos))
    return out


def real_vs_swapped(real: torch.Tensor, metrics: Sequence[str], judge=None, floor: torch.Tensor | None = None,
                    **refs) -> dict[str, float]:
    """A claim's judge checks before any comparison: the named :func:`video_scores` of real clips and of their
    identity-swapped controls (``<metric>_real`` / ``<metric>_swapped``; ``fvd_judge`` of the swapped set against the
    real one), plus ``fvd_judge_real_floor`` — a second real set ``floor`` against ``real`` — when ``floor`` is given.
    The scores must separate the two sets for the claim to be able to see the property it compares."""
    from shared.metrics.video_judge import fvd_judge

    swapped = identity_swapped(real)
    plain = [m for m in metrics if m != "fvd_judge"]
    out = {} if floor is None else {"fvd_judge_real_floor": fvd_judge(floor, real, judge)}
    if "fvd_judge" in metrics:
        out["fvd_judge_swapped"] = fvd_judge(swapped, real, judge)
    out.update(video_scores(real, plain, judge, "{metric}_real", **refs))
    out.update(video_scores(swapped, plain, judge, "{metric}_swapped", **refs))
    return out
