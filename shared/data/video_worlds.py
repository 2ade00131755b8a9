"""Synthetic video worlds with ground truth: bouncing MNIST-style digits and captioned shapes.

`MovingDigits` is the "Moving MNIST" world of Srivastava et al. 2015 (Unsupervised Learning of
Video Representations using LSTMs, Sec. 3) built from the 8x8 handwritten digits bundled with
scikit-learn, so it needs no download. `ShapesVideo` is a captioned world of coloured shapes moving
at known depths, with per-frame instance masks and depth maps: the ground truth that text-to-video,
depth- or mask-conditioned and motion-control papers can be scored against.

Conventions (shared/README.md): a video item is ``{"x": (C, T, H, W) float32 in [-1, 1], "caption":
str, ...ground truth}``; item ``i`` is a pure function of ``(seed, split, i)``, generated on the fly
(a 16x32x32 video renders in well under a millisecond per frame). ``frames_only=True`` (or the
`VideoFrames` wrapper, which works for any video dataset) turns a world into a dataset of
independent single frames ``(C, H, W)`` for training the image model a video model is inflated from.

Direction classes (screen coordinates, rows grow downward):
    MovingDigits: 8 classes, ``DIRECTIONS8 = (right, up-right, up, up-left, left, down-left, down,
    down-right)``, i.e. counter-clockwise in 45 degree steps; the label is the *initial* direction,
    and the start position is chosen so that the first bounce happens no earlier than step
    ``max(2, T // 4)`` — the labelled direction is always visible at the start of the clip.
    ShapesVideo: 4 classes, ``DIRECTIONS4 = (right, up, left, down)``; shapes never leave the
    canvas (start and speed are chosen so), so the caption's direction holds for the whole clip.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "DIRECTIONS4",
    "DIRECTIONS8",
    "MovingDigits",
    "ShapesVideo",
    "VideoFrames",
    "digits_split",
]

DIRECTIONS8 = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
# (d_row, d_col) unit steps for the 8 directions; diagonals move one pixel on each axis per unit.
_STEPS8 = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)], dtype=np.int64)
DIRECTIONS4 = ("right", "up", "left", "down")
_STEPS4 = np.array([(0, 1), (-1, 0), (0, -1), (1, 0)], dtype=np.float64)

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_DIGITS_SPLIT_SEED = 0


def _split_id(split: str) -> int:
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    return _SPLIT_IDS[split]


@functools.lru_cache(maxsize=4)
def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sklearn 8x8 digits of one split: ``(images (N, 8, 8) in [0, 1], labels (N,) long)``.

    The split is the image world's (`shared.data.digits.split_indices`, split seed 0: 70 % train,
    15 % val, 15 % test), so test videos show digit images that no train video, no image model
    trained on the digits train split and neither judge has seen.
    """
    from sklearn.datasets import load_digits

    from shared.data.digits import split_indices

    _split_id(split)
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(data.target.astype(np.int64))
    idx = torch.sort(split_indices(split, seed=_DIGITS_SPLIT_SEED)).values
    return images[idx].contiguous(), labels[idx].contiguous()


def _frame_item(item: dict, t: int, per_frame_keys: Sequence[str], time_axes: dict[str, int] | None = None) -> dict:
    """Slice frame ``t`` out of a video item: ``x`` becomes (C, H, W), per-frame ground truth loses T.

    ``per_frame_keys`` have time first; ``time_axes`` names other per-frame keys and their time axis
    (e.g. ``{"flow": 1}`` for a (2, T, H, W) flow).
    """
    time_axes = dict(time_axes or {})
    out = {k: v for k, v in item.items() if k not in per_frame_keys and k not in time_axes and k != "x"}
    out["x"] = item["x"][:, t]
    for k in per_frame_keys:
        if k in item:
            out[k] = item[k][t]
    for k, axis in time_axes.items():
        if k in item:
            out[k] = item[k].select(axis, t)
    out["frame_index"] = torch.tensor(t, dtype=torch.long)
    if "frame_caption" in item:
        out["caption"] = item["frame_caption"]
        out.pop("frame_caption")
    return out


class _World(Dataset):
    """Common plumbing: length, seeding and the frames-only mode."""

    per_frame_keys: tuple[str, ...] = ()
    # Per-frame keys whose time axis is not the first, with that axis (e.g. {"flow": 1} for (2, T, H, W)).
    time_axes: dict[str, int] = {}

    def __init__(self, n: int, frames: int, size: int, seed: int, split: str, frames_only: bool):
        if n <= 0 or frames <= 0 or size <= 0:
            raise ValueError(f"n, frames and size must be positive, got {n=}, {frames=}, {size=}")
        self.n, self.frames, self.size, self.seed, self.split = (
            int(n),
            int(frames),
            int(size),
            int(seed),
            split,
        )
        self.frames_only = bool(frames_only)
        self._split = _split_id(split)

    def __len__(self) -> int:
        return self.n

    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._split, int(index), stream])

    def video(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.n}")
        item = self.video(index)
        if self.frames_only:
            t = int(self._rng(index, stream=1).integers(self.frames))
            return _frame_item(item, t, self.per_frame_keys, self.time_axes)
        item.pop("frame_caption", None)
        return item

    def random_frame(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """One frame ``(C, H, W)`` of video ``index`` at a time drawn from ``rng`` (joint batches)."""
        return self.video(index)["x"][:, int(rng.integers(self.frames))]


class MovingDigits(_World):
    """Bouncing sklearn digits on a black canvas.

    Args:
        n: number of videos.
        frames: T.
        size: canvas side (H = W).
        digit_size: side of the pasted digit; ``None`` means ``size // 2`` (16 on a 32 canvas, 8 on
            16). Other sizes than 8 are resampled bilinearly from the 8x8 image.
        num_digits: digits per video (overlaps combine with ``max``).
        speeds: pixel steps per frame on each moving axis (diagonals move this much on both axes).
        seed, split: item ``i`` is a pure function of ``(seed, split, i)``; split ``test`` uses the
            held-out digit images (`digits_split`, the image digits world's split).
        frames_only: yield independent single frames ``(1, H, W)`` instead of videos.

    Item keys: ``x`` (1, T, H, W); ``y`` digit class; ``direction`` initial direction class
    (`DIRECTIONS8`; ``motion`` is the same label, for motion classifiers); ``speed`` (float px/frame);
    ``positions`` (T, num_digits, 2) top-left (row, col) per frame; ``caption`` e.g.
    "digit 3 moving up-left". With ``num_digits > 1`` the labels have a trailing ``num_digits`` axis.
    """

    per_frame_keys = ("positions",)

    def __init__(
        self,
        n: int = 1024,
        frames: int = 16,
        size: int = 32,
        digit_size: int | None = None,
        num_digits: int = 1,
        speeds: Sequence[int] = (1, 2),
        seed: int = 0,
        split: str = "train",
        frames_only: bool = False,
    ):
        super().__init__(n, frames, size, seed, split, frames_only)
        self.digit_size = int(digit_size) if digit_size is not None else self.size // 2
        if not 0 < self.digit_size <= self.size:
            raise ValueError(f"digit_size must lie in (0, size={self.size}], got {self.digit_size}")
        self.num_digits = int(num_digits)
        self.room = self.size - self.digit_size  # top-left coordinate range [0, room]
        self.speeds = tuple(int(s) for s in speeds)
        if not self.speeds or min(self.speeds) <= 0:
            raise ValueError(f"speeds must be positive integers, got {speeds}")
        if self.room > 0 and max(self.speeds) > self.room:
            raise ValueError(f"speed {max(self.speeds)} exceeds the free room {self.room} of the canvas")
        images, labels = digits_split(split)
        if self.digit_size != 8:
            images = F.interpolate(
                images[:, None], size=(self.digit_size,) * 2, mode="bilinear", align_corners=False
            )[:, 0].clamp(0, 1)
        # Rendering runs in numpy: single-threaded, so tiny per-item ops never wait on busy cores.
        self._images, self._labels = images.numpy(), labels.numpy()

    def _trajectory(self, rng: np.random.Generator, direction: int, speed: int) -> np.ndarray:
        """Integer top-left positions (T, 2) bouncing off the walls: reflect the position and the velocity."""
        v = _STEPS8[direction] * speed
        room = self.room
        # Keep the labelled direction visible: no bounce before step k on either moving axis.
        k = min(self.frames - 1, max(2, self.frames // 4))
        p = np.empty(2, dtype=np.int64)
        for a in range(2):
            if v[a] == 0 or room == 0:
                p[a] = rng.integers(0, room + 1)
                continue
            k_a = min(k, room // abs(int(v[a])))
            lo, hi = (0, room - v[a] * k_a) if v[a] > 0 else (-v[a] * k_a, room)
            p[a] = rng.integers(lo, hi + 1)
        out = np.empty((self.frames, 2), dtype=np.int64)
        for t in range(self.frames):
            out[t] = p
            p = p + v
            for a in range(2):
                if p[a] < 0:
                    p[a], v[a] = -p[a], -v[a]
                elif p[a] > room:
                    p[a], v[a] = 2 * room - p[a], -v[a]
        return out

    def video(self, index: int) -> dict:
        rng = self._rng(index)
        T, S, D = self.frames, self.size, self.digit_size
        canvas = np.zeros((T, S, S), dtype=np.float32)
        digits, directions, speeds, positions = [], [], [], []
        ar = np.arange(D)
        t_idx = np.arange(T)[:, None, None]
        for _ in range(self.num_digits):
            j = int(rng.integers(len(self._labels)))
            direction = int(rng.integers(len(DIRECTIONS8)))
            speed = self.speeds[int(rng.integers(len(self.speeds)))]
            pos = self._trajectory(rng, direction, speed)
            rows = (pos[:, 0:1] + ar)[:, :, None]  # (T, D, 1)
            cols = (pos[:, 1:2] + ar)[:, None, :]  # (T, 1, D)
            canvas[t_idx, rows, cols] = np.maximum(canvas[t_idx, rows, cols], self._images[j])
            digits.append(int(self._labels[j]))
            directions.append(direction)
            speeds.append(float(speed))
            positions.append(pos)
        caption = " and ".join(f"digit {d} moving {DIRECTIONS8[k]}" for d, k in zip(digits, directions))
        one = self.num_digits == 1

        def lab(values, dtype):
            t = torch.tensor(values, dtype=dtype)
            return t[0] if one else t

        direction = lab(directions, torch.long)
        return {
            "x": torch.from_numpy(canvas * 2 - 1)[None],
            "y": lab(digits, torch.long),
            "direction": direction,
            "motion": direction.clone(),
            "speed": lab(speeds, torch.float32),
            "positions": torch.from_numpy(np.stack(positions, axis=1).astype(np.float32)),
            "caption": caption,
            "frame_caption": " and ".join(f"digit {d}" for d in digits),
        }


class ShapesVideo(_World):
    """Captioned coloured shapes (circle, square, triangle) moving in front of each other.

    Each shape has a colour (distinct within a video), a depth in (0, 1) (smaller is nearer; shapes
    are composited far to near, so nearer shapes occlude farther ones; the background has depth 1),
    and a straight motion in one of `DIRECTIONS4` at a sub-pixel speed (anti-aliased rendering of
    signed distance functions, all frames at once). Shapes stay inside the canvas for the whole clip.

    Item keys: ``x`` (3, T, H, W); ``caption`` shapes listed near to far, e.g. "a red circle moving
    left and a blue square moving up"; ``mask`` (T, H, W) long visible instance id (0 background,
    k+1 for shape k); ``depth`` (T, H, W) visible depth; per shape (K = num_shapes): ``shape``,
    ``color``, ``direction`` (K,) long, ``shape_depth``, ``radius``, ``speed`` (K,), ``velocity`` (K, 2)
    px/frame (d_row, d_col), ``positions`` (T, K, 2) centres (row, col). Shapes are indexed near to far.
    """

    SHAPES = ("circle", "square", "triangle")
    COLORS = {
        "red": (1.0, -1.0, -1.0),
        "green": (-1.0, 1.0, -1.0),
        "blue": (-1.0, -1.0, 1.0),
        "yellow": (1.0, 1.0, -1.0),
        "magenta": (1.0, -1.0, 1.0),
        "cyan": (-1.0, 1.0, 1.0),
    }
    per_frame_keys = ("mask", "depth", "positions")

    def __init__(
        self,
        n: int = 1024,
        frames: int = 16,
        size: int = 32,
        num_shapes: int = 2,
        colors: Sequence[str] = ("red", "green", "blue", "yellow"),
        radius: Sequence[float] = (0.14, 0.2),
        speed: Sequence[float] = (0.02, 0.04),
        seed: int = 0,
        split: str = "train",
        frames_only: bool = False,
    ):
        """``radius`` and ``speed`` ranges are fractions of the canvas side (speed per frame)."""
        super().__init__(n, frames, size, seed, split, frames_only)
        self.colors = tuple(colors)
        unknown = [c for c in self.colors if c not in self.COLORS]
        if unknown:
            raise ValueError(f"unknown colours {unknown}; choose from {sorted(self.COLORS)}")
        self.num_shapes = int(num_shapes)
        if not 1 <= self.num_shapes <= len(self.colors):
            raise ValueError(f"num_shapes must lie in [1, {len(self.colors)}] (distinct colours per video)")
        self.radius = (float(radius[0]), float(radius[1]))
        self.speed = (float(speed[0]), float(speed[1]))
        c = np.arange(self.size, dtype=np.float32) + 0.5  # pixel centres
        self._rows, self._cols = c[:, None], c[None, :]
        self._palette = np.array([self.COLORS[c] for c in self.colors], dtype=np.float32)

    def _coverage(self, shape: int, centre: np.ndarray | torch.Tensor, r: float) -> np.ndarray:
        """Anti-aliased coverage (T, H, W) in [0, 1] of one shape at centres (T, 2), in numpy."""
        centre = np.asarray(centre, dtype=np.float32)
        dy = self._rows[None] - centre[:, 0, None, None]  # (T, H, 1)
        dx = self._cols[None] - centre[:, 1, None, None]  # (T, 1, W)
        if shape == 0:  # circle
            sdf = np.sqrt(dy * dy + dx * dx) - r
        elif shape == 1:  # square of about the circle's area
            sdf = np.maximum(np.abs(dy), np.abs(dx)) - 0.886 * r
        else:  # upward equilateral triangle, circumradius 1.3 r: three half-planes at the inradius
            R = 1.3 * r
            sdf = np.maximum(np.maximum(dy, -0.5 * dy - 0.8660254 * dx), -0.5 * dy + 0.8660254 * dx) - 0.5 * R
        return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)

    def video(self, index: int) -> dict:
        rng = self._rng(index)
        T, S, K = self.frames, self.size, self.num_shapes
        shapes = rng.integers(len(self.SHAPES), size=K)
        colors = rng.permutation(len(self.colors))[:K]
        directions = rng.integers(len(DIRECTIONS4), size=K)
        depths = np.sort(rng.uniform(0.1, 0.9, size=K))  # index 0 is the nearest
        radii = rng.uniform(*self.radius, size=K) * S
        starts, velocities, speeds = [], [], []
        for k in range(K):
            r = radii[k] * (1.3 if shapes[k] == 2 else 1.0)  # triangles reach further from the centre
            lo, hi = r + 0.5, S - r - 0.5  # centre range that keeps the shape inside the canvas
            room = max(hi - lo, 0.0)
            top = min(self.speed[1] * S, room / max(T - 1, 1))
            sp = rng.uniform(min(self.speed[0] * S, top), top)
            v = _STEPS4[directions[k]] * sp
            travel = np.abs(v) * (T - 1)
            start = np.empty(2)
            for a in range(2):
                start[a] = rng.uniform(lo, max(hi - travel[a], lo))
                if v[a] < 0:  # moving toward smaller coordinates: start near the far side
                    start[a] += travel[a]
            starts.append(start)
            velocities.append(v)
            speeds.append(sp)
        t = np.arange(T, dtype=np.float32)[:, None, None]
        vel = np.stack(velocities).astype(np.float32)
        positions = np.stack(starts).astype(np.float32)[None] + t * vel[None]  # (T, K, 2)
        img = np.full((3, T, S, S), -1.0, dtype=np.float32)
        mask = np.zeros((T, S, S), dtype=np.int64)
        depth = np.ones((T, S, S), dtype=np.float32)
        for k in reversed(range(K)):  # far to near: the painter's algorithm gives occlusion by depth
            a = self._coverage(int(shapes[k]), positions[:, k], float(radii[k]))
            col = self._palette[colors[k]].reshape(3, 1, 1, 1)
            img += (col - img) * a
            inside = a >= 0.5
            mask[inside] = k + 1
            depth[inside] = depths[k]
        names = [f"{self.colors[colors[k]]} {self.SHAPES[shapes[k]]}" for k in range(K)]
        caption = " and ".join(f"a {nm} moving {DIRECTIONS4[directions[k]]}" for k, nm in enumerate(names))
        return {
            "x": torch.from_numpy(img),
            "caption": caption,
            "frame_caption": " and ".join(f"a {nm}" for nm in names),
            "mask": torch.from_numpy(mask),
            "depth": torch.from_numpy(depth),
            "shape": torch.from_numpy(shapes.astype(np.int64)),
            "color": torch.from_numpy(colors.astype(np.int64)),
            "direction": torch.from_numpy(directions.astype(np.int64)),
            "shape_depth": torch.tensor(depths, dtype=torch.float32),
            "radius": torch.tensor(radii, dtype=torch.float32),
            "speed": torch.tensor(speeds, dtype=torch.float32),
            "velocity": torch.from_numpy(vel),
            "positions": torch.from_numpy(positions),
        }


class VideoFrames(Dataset):
    """Independent single frames of any video dataset: item ``i`` is frame ``t_i`` of video ``i``.

    ``t_i`` is drawn from ``(seed, i)``; ``x`` becomes (C, H, W) and the per-frame ground truth named
    in ``dataset.per_frame_keys`` and ``dataset.time_axes`` (if any) is sliced to that frame.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)
        self.per_frame_keys = tuple(getattr(dataset, "per_frame_keys", ()))
        self.time_axes = dict(getattr(dataset, "time_axes", {}))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        # A world's raw video item still has its frame caption (no motion words).
        item = self.dataset.video(index) if isinstance(self.dataset, _World) else self.dataset[index]
        T = item["x"].shape[1]
        t = int(np.random.default_rng([self.seed, int(index)]).integers(T))
        return _frame_item(item, t, self.per_frame_keys, self.time_axes)
