"""Sprites: a video world whose identity and motion a tiny model can learn and a closed-form judge can read.

Why another world. On MovingDigits (`shared.data.video_worlds`) the video claims' effects were invisible at CPU
scale: a 0.2M-parameter image model cannot draw a handwritten digit's identity well at 16x16, so "the video model
keeps the digit across frames" was untestable, and the learned video judge read identity at chance on the models'
frames. Here each clip shows **one sprite of a few identities with strong appearance** (a distinct colour and shape
each: "red circle", "green square", ...) moving **in a straight line at constant velocity** (no bounce: the start is
chosen so the sprite stays inside the canvas for the whole clip). So

* a per-frame image model draws valid sprites easily (the image floor is reachable in minutes), but sampling frames
  independently gives a new identity and a new position in every frame;
* whether a video keeps its identity and moves coherently is a property a closed-form judge measures exactly
  (`shared.metrics.sprite_judge`: colour/shape per frame, the centroid track's straight-line residual);
* the continuation of a clip is determined by its first frames (identity and velocity), so extension can be
  scored against the world's true continuation.

Rendering: anti-aliased signed-distance shapes (as `ShapesVideo`), centres at sub-pixel positions, RGB in [-1, 1]
on a black background; a 16x16x8 clip renders in well under a millisecond per frame. Item ``i`` is a pure function
of ``(seed, split, i)`` (`video_worlds._World`). ``frames_only=True`` yields single frames for image models.

Directions follow ``video_worlds.DIRECTIONS8`` (right, up-right, up, up-left, left, down-left, down, down-right;
rows grow downward); the velocity has Euclidean length ``speed`` px/frame along that direction.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from shared.data.video_worlds import DIRECTIONS8, _World

__all__ = ["COLOURS", "SHAPES", "Sprites", "parse_identity", "shape_coverage", "shape_area_factor"]

COLOURS = {   # RGB in [-1, 1]: the corners of the colour cube, far apart for the judge
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "magenta": (1.0, -1.0, 1.0),
    "cyan": (-1.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle", "diamond", "plus")
_UNIT8 = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)], dtype=np.float64)
_UNIT8 /= np.linalg.norm(_UNIT8, axis=1, keepdims=True)


def parse_identity(name: str) -> tuple[str, str]:
    """``"red circle"`` -> ``("red", "circle")``; a one-line error for anything else."""
    parts = str(name).split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f"identity {name!r} must be '<colour> <shape>' with colour in {sorted(COLOURS)} "
                         f"and shape in {list(SHAPES)}")
    return parts[0], parts[1]


def shape_area_factor(shape: str) -> float:
    """Area of ``shape`` at radius ``r`` divided by ``r**2`` (the judge's expected ink mass)."""
    return {"circle": math.pi, "square": (2 * 0.886) ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.3 ** 2,
            "diamond": math.pi, "plus": 8 * 1.2 * 0.45 - 4 * 0.45 ** 2}[shape]


def shape_coverage(shape: str, centres, radius, size: int):
    """Anti-aliased coverage in [0, 1] of ``shape`` centred at ``centres`` (..., 2) (row, col, pixel units, pixel
    centres at +0.5) with ``radius`` (broadcastable to ``centres[..., 0]``) on a ``size`` x ``size`` canvas:
    (..., size, size). Works on numpy arrays and torch tensors alike (the judge renders templates with it)."""
    lib = torch if isinstance(centres, torch.Tensor) else np
    c = lib.arange(size, dtype=centres.dtype) + 0.5 if lib is np else \
        torch.arange(size, dtype=centres.dtype, device=centres.device) + 0.5
    r = radius if lib is np else torch.as_tensor(radius, dtype=centres.dtype, device=centres.device)
    r = r[..., None, None]
    dy = c[:, None] - centres[..., 0, None, None]      # (..., H, 1)
    dx = c[None, :] - centres[..., 1, None, None]      # (..., 1, W)
    ady, adx = abs(dy), abs(dx)
    mx = lib.maximum
    if shape == "circle":
        sdf = (dy * dy + dx * dx) ** 0.5 - r
    elif shape == "square":                            # about the circle's area
        sdf = mx(ady, adx) - 0.886 * r
    elif shape == "triangle":                          # upward equilateral, circumradius 1.3 r
        sdf = mx(mx(dy, -0.5 * dy - 0.8660254 * dx), -0.5 * dy + 0.8660254 * dx) - 0.65 * r
    elif shape == "diamond":                           # half-diagonal r sqrt(pi / 2): the circle's area
        sdf = (ady + adx - 1.2533141 * r) * 0.70710678
    elif shape == "plus":                              # two bars, half-length 1.2 r, half-thickness 0.45 r
        bar = lambda a, b: mx(a - 1.2 * r, b - 0.45 * r)  # noqa: E731
        sdf = lib.minimum(bar(adx, ady), bar(ady, adx))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(SHAPES)}")
    out = 0.5 - sdf
    return out.clip(0.0, 1.0) if lib is np else out.clamp(0.0, 1.0)


class Sprites(_World):
    """One coloured sprite per clip, moving in a straight line at constant velocity (module docstring).

    Args:
        n, frames, size, seed, split, frames_only: as every world (`video_worlds._World`).
        identities: the sprite identities, ``"<colour> <shape>"`` strings; label ``y`` indexes this list.
        radius: (min, max) sprite radius in pixels (drawn uniformly per clip).
        speed: (min, max) speed in px/frame (Euclidean, along one of the 8 directions), drawn per clip and capped so
            the sprite stays inside the canvas for the whole clip.
        directions: the direction classes (indices into ``DIRECTIONS8``) clips may move in; ``None`` = all 8.
        identity_swap_at: for judge checks only — from this frame on, the clip shows a *different* identity on the
            same trajectory ("identity swapped mid-clip"); ``None`` (default) never.

    Item keys: ``x`` (3, T, H, W); ``y`` identity index; ``direction`` (index into ``DIRECTIONS8``; ``motion`` the
    same); ``speed`` px/frame; ``radius``; ``velocity`` (2,) px/frame (d_row, d_col); ``positions`` (T, 2) centres
    (row, col); ``caption`` e.g. "red circle moving up-left" (frames: "red circle").
    """

    per_frame_keys = ("positions",)

    def __init__(self, n: int = 1024, frames: int = 8, size: int = 16,
                 identities: Sequence[str] = ("red circle", "green square", "blue triangle", "yellow plus"),
                 radius: Sequence[float] = (2.6, 3.2), speed: Sequence[float] = (0.6, 1.2),
                 directions: Sequence[int] | None = None, identity_swap_at: int | None = None,
                 seed: int = 0, split: str = "train", frames_only: bool = False):
        super().__init__(n, frames, size, seed, split, frames_only)
        self.identities = tuple(str(i) for i in identities)
        if not self.identities:
            raise ValueError("identities must name at least one '<colour> <shape>' sprite")
        self._parsed = [parse_identity(i) for i in self.identities]
        self.radius = (float(radius[0]), float(radius[1]))
        self.speed = (float(speed[0]), float(speed[1]))
        if not 0 < self.radius[0] <= self.radius[1] or 2 * 1.3 * self.radius[1] + 1 > self.size:
            raise ValueError(f"radius {radius} must be positive, ordered and fit the {self.size}-pixel canvas")
        if not 0 <= self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed {speed} must be non-negative and ordered")
        self.directions = tuple(range(8)) if directions is None else tuple(int(d) for d in directions)
        if not self.directions or not all(0 <= d < 8 for d in self.directions):
            raise ValueError(f"directions must be indices into DIRECTIONS8 (0-7), got {directions}")
        if identity_swap_at is not None and not 0 < int(identity_swap_at) < self.frames:
            raise ValueError(f"identity_swap_at must lie in (0, frames={self.frames}), got {identity_swap_at}")
        if identity_swap_at is not None and len(self.identities) < 2:
            raise ValueError("identity_swap_at needs at least two identities")
        self.identity_swap_at = None if identity_swap_at is None else int(identity_swap_at)

    @staticmethod
    def reach(shape: str, r: float) -> float:
        """How far the sprite extends from its centre (the triangle's circumradius is 1.3 r)."""
        return r * {"triangle": 1.3, "diamond": 1.2533141, "plus": 1.2, "square": 0.886 * math.sqrt(2)}.get(shape, 1.0)

    def _render(self, identity: int, positions: np.ndarray, r: float) -> np.ndarray:
        colour, shape = self._parsed[identity]
        a = shape_coverage(shape, positions.astype(np.float32), np.float32(r), self.size)  # (T, H, W)
        col = np.asarray(COLOURS[colour], dtype=np.float32).reshape(3, 1, 1, 1)
        return (-1.0 + (col + 1.0) * a[None]).astype(np.float32)

    def video(self, index: int) -> dict:
        rng = self._rng(index)
        T, S = self.frames, self.size
        identity = int(rng.integers(len(self.identities)))
        direction = self.directions[int(rng.integers(len(self.directions)))]
        r = float(rng.uniform(*self.radius))
        # keep every shape inside with the largest reach of any identity, so the trajectory does not depend on it
        reach = max(self.reach(s, r) for _, s in self._parsed)
        lo, hi = reach + 0.5, S - reach - 0.5
        room = max(hi - lo, 0.0)
        unit = _UNIT8[direction]
        axis = np.abs(unit).max()
        top = min(self.speed[1], room / max(T - 1, 1) / axis)
        sp = float(rng.uniform(min(self.speed[0], top), top))
        v = unit * sp
        travel = np.abs(v) * (T - 1)
        start = np.empty(2)
        for a in range(2):
            start[a] = rng.uniform(lo, max(hi - travel[a], lo))
            if v[a] < 0:
                start[a] += travel[a]
        positions = start[None] + np.arange(T)[:, None] * v[None]          # (T, 2)
        x = self._render(identity, positions, r)
        other = identity
        if self.identity_swap_at is not None:
            swap_rng = np.random.default_rng([self.seed, self._split, int(index), 3])
            other = int(swap_rng.integers(len(self.identities) - 1))
            other += other >= identity
            k = self.identity_swap_at
            x[:, k:] = self._render(other, positions[k:], r)
        name = self.identities[identity]
        return {
            "x": torch.from_numpy(x),
            "y": torch.tensor(identity, dtype=torch.long),
            "direction": torch.tensor(direction, dtype=torch.long),
            "motion": torch.tensor(direction, dtype=torch.long),
            "speed": torch.tensor(sp, dtype=torch.float32),
            "radius": torch.tensor(r, dtype=torch.float32),
            "velocity": torch.from_numpy(v.astype(np.float32)),
            "positions": torch.from_numpy(positions.astype(np.float32)),
            "caption": f"{name} moving {DIRECTIONS8[direction]}",
            "frame_caption": name,
            **({"y_after_swap": torch.tensor(other, dtype=torch.long)} if self.identity_swap_at is not None else {}),
        }
