"""A closed-form judge for the Sprites world (`shared.data.sprite_worlds`): identity, validity and motion of every
frame and clip, read off the pixels without a trained network.

Per frame (videos (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1]):

* *ink* ``w = max_c (x_c + 1) / 2`` (the background is black), its *mass* ``sum w`` and *centroid*;
* *colour*: the ink-weighted mean colour, and for each candidate identity the L2 distance (in [0, 1]^3) to its
  colour; *shape error*: ``sum |w - template| / sum template`` where the template is that identity's shape rendered
  at the centroid with the radius that gives the measured mass (`sprite_worlds.shape_coverage`);
* *identity*: the candidate minimising colour distance + shape error; the frame is **valid** when that identity's
  colour distance is at most ``colour_tol``, its shape error at most ``shape_tol`` and the mass lies within
  ``mass_slack`` of the world's range — one clean sprite of a known identity. Blends of two sprites, blurs, smudges
  and empty frames fail.

Per clip:

* ``identity_consistent``: every frame valid and of one identity;
* the centroid track's straight-line fit (least squares over t): ``velocity`` (px/frame), RMS ``residual`` (px);
  ``motion_coherent``: every frame valid, residual at most ``motion_tol`` and speed at least ``min_speed`` (the world's
  sprites always move in straight lines, so real clips are coherent and a per-frame sampler's clips are not);
* ``direction``: the velocity's nearest `DIRECTIONS8` class (-1 when slower than ``min_speed``);
* ``coherent``: identity consistent and motion coherent.

``FVD_judge`` (:func:`fvd_sprites`): the Fréchet distance (FVD's Eq. 1) between Gaussians fitted to per-clip
features read off the same closed-form frame readings (:func:`video_features`: the clip means of the frame features
colour, mass, colour error, shape error and centroid, their mean absolute change between consecutive frames, the
centroid's mean absolute second difference (0 for straight-line motion) and the share of valid frames), so both the
frames' quality and their temporal behaviour count; report it as ``FVD_judge`` (Sprites), never as FVD.

Everything is deterministic and differentiable-free; real clips of the world score 1.0 on validity, identity
consistency and motion coherence (tested), clips with the identity swapped mid-clip score 0 on identity
consistency, clips with shuffled frames or independent frames score ~0 on motion coherence — the separation the
video claims rely on is recorded in their results (`separation`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from shared.data.sprite_worlds import COLOURS, parse_identity, shape_area_factor, shape_coverage

__all__ = ["claim_judge", "SpriteJudge", "separation", "seam_jump", "track_seam_jump", "identity_kept",
           "video_features", "fvd_sprites"]

_DIR8 = torch.tensor([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)], dtype=torch.float32)
_DIR8 = _DIR8 / _DIR8.norm(dim=1, keepdim=True)


class SpriteJudge:
    """Closed-form scores of Sprites clips (module docstring). ``identities`` are the candidates (``"<colour>
    <shape>"``), ``radius`` the world's radius range (for the mass check)."""

    def __init__(self, identities: Sequence[str], radius: Sequence[float] = (2.6, 3.2), colour_tol: float = 0.3,
                 shape_tol: float = 0.5, mass_slack: float = 0.35, motion_tol: float = 0.5, min_speed: float = 0.25,
                 ink_floor: float = 0.15):
        self.identities = tuple(str(i) for i in identities)
        self._parsed = [parse_identity(i) for i in self.identities]
        self.colours = torch.tensor([[(c + 1) / 2 for c in COLOURS[col]] for col, _ in self._parsed])
        areas = [shape_area_factor(s) for _, s in self._parsed]
        self.mass_range = ((1 - mass_slack) * min(areas) * radius[0] ** 2,
                           (1 + mass_slack) * max(areas) * radius[1] ** 2)
        self.ink_floor = float(ink_floor)
        self.colour_tol, self.shape_tol, self.motion_tol, self.min_speed = (float(colour_tol), float(shape_tol),
                                                                            float(motion_tol), float(min_speed))

    # ------------------------------------------------------------------ frames
    @torch.no_grad()
    def frames(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame readings of videos (B, 3, T, H, W) (or images (B, 3, H, W), read as T = 1): ``mass``,
        ``centroid`` (B, T, 2), ``colour`` (B, T, 3), ``identity`` (B, T) (best candidate), ``valid`` (B, T)."""
        if x.ndim == 4:
            x = x[:, :, None]
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"the sprite judge reads RGB videos (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1], "
                             f"got shape {tuple(x.shape)}")
        rgb = ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)          # (B, T, H, W, 3)
        w = self._ink(rgb.amax(dim=-1))                                        # ink (B, T, H, W)
        size = w.shape[-1]
        mass = w.sum(dim=(-2, -1))
        safe = mass.clamp_min(1e-6)
        c = torch.arange(size, dtype=w.dtype) + 0.5
        centroid = torch.stack([(w.sum(-1) * c).sum(-1) / safe, (w.sum(-2) * c).sum(-1) / safe], dim=-1)
        # rgb = colour * coverage on the sprite and ink = coverage (every palette colour has max 1), so the
        # ink-weighted least-squares colour is exact on real frames
        colour = (rgb * w[..., None]).sum(dim=(-3, -2)) / (w * w).sum(dim=(-2, -1)).clamp_min(1e-6)[..., None]
        cdist = (colour[..., None, :] - self.colours).norm(dim=-1)             # (B, T, K)
        shape_err = torch.stack([self._shape_error(w, centroid, mass, s) for _, s in self._parsed], dim=-1)
        score = cdist + shape_err
        best = score.argmin(dim=-1)
        pick = lambda t: t.gather(-1, best[..., None])[..., 0]  # noqa: E731
        lo, hi = self.mass_range
        valid = (pick(cdist) <= self.colour_tol) & (pick(shape_err) <= self.shape_tol) & (mass >= lo) & (mass <= hi)
        return {"mass": mass, "centroid": centroid, "colour": colour, "identity": best, "valid": valid,
                "colour_error": pick(cdist), "shape_error": pick(shape_err)}

    def _ink(self, a: torch.Tensor) -> torch.Tensor:
        """Ink from brightness: values below ``ink_floor`` (faint background noise of samples) count as none."""
        return ((a - self.ink_floor) / (1 - self.ink_floor)).clamp(0, 1)

    def _shape_error(self, w, centroid, mass, shape: str) -> torch.Tensor:
        r = (mass.clamp_min(1e-6) / shape_area_factor(shape)).sqrt()
        template = self._ink(shape_coverage(shape, centroid, r, w.shape[-1]))
        return (w - template).abs().sum(dim=(-2, -1)) / template.sum(dim=(-2, -1)).clamp_min(1.0)

    # ------------------------------------------------------------------ clips
    @torch.no_grad()
    def clips(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-clip readings (see the module docstring): ``identity`` (B,) (first frame's), ``identity_consistent``,
        ``velocity`` (B, 2), ``speed``, ``residual``, ``motion_coherent``, ``direction``, ``coherent``, and the
        per-frame ``frames`` dict."""
        f = self.frames(x)
        valid, ident, cen = f["valid"], f["identity"], f["centroid"]
        T = valid.shape[1]
        all_valid = valid.all(dim=1)
        consistent = all_valid & (ident == ident[:, :1]).all(dim=1)
        t = torch.arange(T, dtype=cen.dtype)
        tc = t - t.mean()
        if T > 1:
            slope = (tc[None, :, None] * (cen - cen.mean(dim=1, keepdim=True))).sum(1) / (tc ** 2).sum()
            fit = cen.mean(dim=1, keepdim=True) + tc[None, :, None] * slope[:, None]
            residual = ((cen - fit) ** 2).sum(-1).mean(1).sqrt()
        else:
            slope, residual = torch.zeros(cen.shape[0], 2), torch.zeros(cen.shape[0])
        speed = slope.norm(dim=-1)
        direction = (slope / speed.clamp_min(1e-6)[:, None] @ _DIR8.T).argmax(dim=1)
        direction = torch.where(speed >= self.min_speed, direction, torch.full_like(direction, -1))
        residual = torch.where(all_valid, residual, torch.full_like(residual, math.inf))
        motion = all_valid & (residual <= self.motion_tol) & (speed >= self.min_speed)
        return {"identity": ident[:, 0], "identity_consistent": consistent, "velocity": slope, "speed": speed,
                "residual": residual, "motion_coherent": motion, "direction": direction,
                "coherent": consistent & motion, "frames": f}

    @torch.no_grad()
    def scores(self, x: torch.Tensor, identity=None, direction=None, domain: Sequence[int] | None = None) -> dict:
        """Means over the clips (finite floats): ``frame_validity``, ``identity_consistent``, ``identity_agreement``
        (consecutive frame pairs both valid and alike), ``motion_coherent``, ``coherent``, ``identity_coverage``
        (normalised entropy of the identities of the valid frames: 1 = every candidate equally often); with
        targets: ``identity_accuracy`` (every frame valid and the target identity), ``direction_accuracy``; with
        ``domain`` (identity indices): ``domain_accuracy`` (fraction of valid frames whose identity lies in it)."""
        c = self.clips(x)
        f = c["frames"]
        valid, ident = f["valid"], f["identity"]
        out = {"frame_validity": float(valid.float().mean()),
               "identity_consistent": float(c["identity_consistent"].float().mean()),
               "motion_coherent": float(c["motion_coherent"].float().mean()),
               "coherent": float(c["coherent"].float().mean())}
        if valid.shape[1] > 1:
            pair = valid[:, 1:] & valid[:, :-1] & (ident[:, 1:] == ident[:, :-1])
            out["identity_agreement"] = float(pair.float().mean())
        k = len(self.identities)
        ids = ident[valid]
        if len(ids) and k > 1:
            p = torch.bincount(ids, minlength=k).float() / len(ids)
            out["identity_coverage"] = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(k))
        else:
            out["identity_coverage"] = 0.0
        if identity is not None:
            target = torch.as_tensor(identity).long().view(-1, 1)
            out["identity_accuracy"] = float((valid & (ident == target)).all(dim=1).float().mean())
        if direction is not None:
            out["direction_accuracy"] = float((c["direction"] == torch.as_tensor(direction).long()).float().mean())
        if domain is not None:
            inside = torch.isin(ident, torch.as_tensor(list(domain)).long()) & valid
            out["domain_accuracy"] = float(inside.sum() / valid.sum().clamp_min(1))
        return out


@torch.no_grad()
def video_features(judge: SpriteJudge, x: torch.Tensor) -> torch.Tensor:
    """Per-clip features (B, 19) of videos (B, 3, T, H, W), T >= 3, from :meth:`SpriteJudge.frames`: the clip mean
    of the 8 frame features (colour (3, clipped to [0, 1]: the least-squares colour of a near-empty frame is
    unbounded), mass / the world's largest mass, colour error and shape error (each capped at 2),
    centroid in pixels (2)), their mean absolute change between consecutive frames (8), the centroid's mean absolute
    second difference in pixels (2) and the share of valid frames (1)."""
    f = judge.frames(x)
    cen = f["centroid"]
    per_frame = torch.cat([f["colour"].clamp(0, 1), (f["mass"] / judge.mass_range[1])[..., None],
                           f["colour_error"].clamp(max=2.0)[..., None], f["shape_error"].clamp(max=2.0)[..., None],
                           cen], dim=-1)                                                   # (B, T, 8)
    if per_frame.shape[1] < 3:
        raise ValueError(f"FVD_judge (Sprites) reads clips of at least 3 frames, got {per_frame.shape[1]}")
    change = (per_frame[:, 1:] - per_frame[:, :-1]).abs().mean(1)
    curvature = (cen[:, 2:] - 2 * cen[:, 1:-1] + cen[:, :-2]).abs().mean(1)
    return torch.cat([per_frame.mean(1), change, curvature, f["valid"].float().mean(1, keepdim=True)], dim=-1)


def fvd_sprites(judge: SpriteJudge, generated: torch.Tensor, reference: torch.Tensor) -> float:
    """``FVD_judge`` (Sprites): Fréchet distance of :func:`video_features` of ``generated`` and ``reference`` clips
    (both (B, 3, T, H, W) in [-1, 1])."""
    from shared.metrics.frechet import fd_from_features

    return fd_from_features(video_features(judge, generated), video_features(judge, reference))


def shuffle_frames(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each clip's frames in a random order (a clip with its appearance kept and its motion destroyed)."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.stack([torch.randperm(x.shape[2], generator=g) for _ in range(x.shape[0])])
    return torch.stack([x[i][:, perm[i]] for i in range(x.shape[0])])


def independent_frames(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frame t of clip i taken from a random other clip: what sampling an image model frame by frame gives."""
    g = torch.Generator().manual_seed(int(seed))
    b, t = x.shape[0], x.shape[2]
    src = torch.randint(0, b, (b, t), generator=g)
    return torch.stack([torch.stack([x[src[i, k], :, k] for k in range(t)], dim=1) for i in range(b)])


def separation(judge: SpriteJudge, real: torch.Tensor, swapped: torch.Tensor | None = None, seed: int = 0) -> dict:
    """The judge on real clips with and without the properties the claims compare: ``real`` as drawn,
    ``swapped`` (the same clips with the identity swapped mid-clip, from the world's ``identity_swap_at``),
    ``shuffled`` (frames permuted), ``independent`` (frames of different clips). Returns ``{variant: scores}``."""
    out = {"real": judge.scores(real), "shuffled": judge.scores(shuffle_frames(real, seed)),
           "independent": judge.scores(independent_frames(real, seed + 1))}
    if swapped is not None:
        out["swapped"] = judge.scores(swapped)
    return out


def claim_judge(cfg, extra_identities=()) -> SpriteJudge:
    """The judge of a Sprites claim: the world's identities (``cfg.data.train.identities``, plus
    ``extra_identities`` such as a fine-tuning claim's new one, indexed after them), its radius range and the
    claim's ``claim.judge`` options."""
    ids = list(cfg.data.train.identities) + [str(i) for i in extra_identities]
    return SpriteJudge(ids, radius=tuple(cfg.data.train.radius), **dict(cfg.claim.get("judge") or {}))


def claim_scores(judge: SpriteJudge, videos: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor | None = None,
                 key: str = "{metric}") -> dict[str, float]:
    """What a Sprites claim reports for ``videos`` (B, C, T, H, W) prompted with identities ``labels`` (and commanded
    ``directions``, if given): :meth:`SpriteJudge.scores`, ``frame_identity_accuracy`` (share of frames valid and of
    the prompted identity) and ``appearance`` (cosine of consecutive frames' aligned crops), keyed
    ``key.format(metric=name)`` in sorted order."""
    from shared.metrics.video_identity import appearance_consistency

    s = dict(judge.scores(videos, identity=labels, **({} if directions is None else {"direction": directions})))
    f = judge.frames(videos)
    s["frame_identity_accuracy"] = float((f["valid"] & (f["identity"] == labels.long().view(-1, 1))).float().mean())
    s["appearance"] = appearance_consistency(videos)
    return {key.format(metric=k): float(v) for k, v in sorted(s.items())}



def track_seam_jump(centroid: torch.Tensor, valid: torch.Tensor, boundaries: Sequence[int]) -> float:
    """The position jump at window seams of centroid tracks ``centroid`` (B, T, 2) with per-frame ``valid`` (B, T):
    the mean displacement ``|c_t - c_{t-1}|`` (px) over the frame pairs that straddle a seam (``t`` in
    ``boundaries``) minus the mean over the other consecutive pairs, each pooled over the clips and counting only
    pairs whose two frames are valid. A sprite moving in a straight line at constant velocity has none (0); windows
    drawn independently and put side by side jump at their seams (> 0). NaN when either pool is empty."""
    idx = sorted({int(t) for t in boundaries})
    T = centroid.shape[1]
    if not idx or min(idx) < 1 or max(idx) >= T:
        raise ValueError(f"boundaries must lie in [1, {T - 1}], got {list(boundaries)}")
    step = (centroid[:, 1:] - centroid[:, :-1]).norm(dim=-1)          # (B, T-1): pair (t-1, t) at index t-1
    ok = valid[:, 1:] & valid[:, :-1]
    seam = torch.zeros(T - 1, dtype=torch.bool)
    seam[[t - 1 for t in idx]] = True
    at, within = ok & seam, ok & ~seam
    if not at.any() or not within.any():
        return math.nan
    return float(step[at].mean() - step[within].mean())


def seam_jump(judge: SpriteJudge, videos: torch.Tensor, boundaries: Sequence[int]) -> float:
    """:func:`track_seam_jump` of the judge's centroid tracks of ``videos`` (B, 3, T, H, W)."""
    f = judge.frames(videos)
    return track_seam_jump(f["centroid"], f["valid"], boundaries)


def identity_kept(judge: SpriteJudge, videos: torch.Tensor) -> float:
    """Identity drift over a video: the share of frames ``t >= 1`` whose judged identity is frame 0's, among the
    frames valid together with their video's frame 0 (pooled over the clips; NaN if there is none). Real videos
    keep theirs (1.0); clips of independent identities put side by side do not."""
    f = judge.frames(videos)
    ok = f["valid"][:, 1:] & f["valid"][:, :1]
    if not ok.any():
        return math.nan
    same = f["identity"][:, 1:] == f["identity"][:, :1]
    return float(same[ok].float().mean())
