"""Small numpy rasterisation helpers for the synthetic worlds: distances to segments, supersampled
depth-buffered compositing and the box filter that turns samples into antialiased pixels.

Worlds render at ``ss x ss`` sample points per pixel (sample ``(i, j)`` of pixel ``(r, c)`` at
``(c + (j + 1/2) / ss, r + (i + 1/2) / ss)`` in pixel units), test coverage exactly at each sample and
average the samples of a pixel (a box filter): the antialiasing of supersampling. Labels (part ids,
masks) are read at the centre sample of each pixel (``ss`` odd), so they are exact at pixel centres.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DepthBuffer", "View", "box_downsample", "sample_grid", "segment_d2", "segment_distance"]


def sample_grid(size: int, ss: int) -> np.ndarray:
    """Sample coordinates (size * ss,) along one axis, in pixel units."""
    return ((np.arange(size * ss, dtype=np.float32) + 0.5) / ss).astype(np.float32)


def box_downsample(samples: np.ndarray, ss: int) -> np.ndarray:
    """(T, n, n, C) samples -> (T, n / ss, n / ss, C) pixel means (explicit sums over the sample axes:
    several times faster than ``reshape(...).mean(axis=(2, 4))``)."""
    T, n, _, C = samples.shape
    S = n // ss
    rows = samples.reshape(T, S, ss, S * ss * C)
    acc = rows[:, :, 0].copy()
    for i in range(1, ss):
        acc += rows[:, :, i]
    cols = acc.reshape(T, S, S, ss, C)
    out = cols[:, :, :, 0].copy()
    for i in range(1, ss):
        out += cols[:, :, :, i]
    out /= ss * ss
    return out


def segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (T, h, w) from points (``px`` (1, 1, w), ``py`` (1, h, 1)) to segments a->b (T, 2) (x, y),
    and the clamped position along each segment in [0, 1]."""
    d2, t = segment_d2(px, py, a, b)
    return np.sqrt(d2), t


def segment_d2(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance (T, h, w) from sample points (``px`` (1, 1, w), ``py`` (1, h, 1)) to segments
    a->b (T, 2), and the clamped position along each segment in [0, 1]."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    inv = 1.0 / np.maximum(dx * dx + dy * dy, 1e-12)
    rx, ry = px - ax, py - ay
    t = np.clip((rx * dx + ry * dy) * inv, 0.0, 1.0)
    ex, ey = rx - t * dx, ry - t * dy
    return ex * ex + ey * ey, t


class View:
    """A rectangle of the supersampled canvas: slices and its sample coordinates."""

    def __init__(self, rows: slice, cols: slice, px: np.ndarray, py: np.ndarray):
        self.rows, self.cols = rows, cols
        self.grid = (px[cols][None, None, :], py[rows][None, :, None])


class DepthBuffer:
    """Per-sample nearest element (depth test), its colour index and part id, on a (T, n, n) grid."""

    def __init__(self, T: int, n: int, px: np.ndarray, py: np.ndarray):
        self.n, self.px, self.py = n, px, py
        self.depth = np.full((T, n, n), -np.inf, np.float32)
        self.colour = np.zeros((T, n, n), np.int64)  # 0: background; else index into self.palette
        self.part = np.zeros((T, n, n), np.int64)
        self.palette: list[np.ndarray] = []

    def view(self, points: np.ndarray) -> View | None:
        """The samples inside the bounding box of ``points`` (..., 2) in pixel units; None if empty."""
        pts = points.reshape(-1, 2)
        step = self.px[1] - self.px[0] if self.n > 1 else 1.0
        c0 = int(np.clip(np.floor((pts[:, 0].min() - self.px[0]) / step), 0, self.n))
        c1 = int(np.clip(np.ceil((pts[:, 0].max() - self.px[0]) / step) + 1, 0, self.n))
        r0 = int(np.clip(np.floor((pts[:, 1].min() - self.py[0]) / step), 0, self.n))
        r1 = int(np.clip(np.ceil((pts[:, 1].max() - self.py[0]) / step) + 1, 0, self.n))
        if c1 <= c0 or r1 <= r0:
            return None
        return View(slice(r0, r1), slice(c0, c1), self.px, self.py)

    def add(self, view: View, part: int, covered, z, colour, alt_colour, alt=None) -> None:
        """Samples of ``view`` where ``covered`` and strictly nearer than the buffer take this element."""
        d = self.depth[:, view.rows, view.cols]
        zz = np.broadcast_to(z.astype(np.float32)[:, None, None], d.shape)
        win = covered & (zz > d)
        d[win] = zz[win]
        self.palette += [np.asarray(colour, np.float32), np.asarray(alt_colour, np.float32)]
        base = len(self.palette) - 1  # `colour` in the resolved palette (its entry 0 is the background)
        if alt is None:
            idx = np.full(d.shape, base, np.int64)
        else:
            idx = np.where(np.broadcast_to(alt, d.shape), base + 1, base)
        self.colour[:, view.rows, view.cols][win] = idx[win]
        self.part[:, view.rows, view.cols][win] = part

    def resolve(self, background: np.ndarray, ss: int) -> tuple[np.ndarray, np.ndarray]:
        """(3, T, H, W) in [-1, 1] averaged over ss x ss samples, and the part at each pixel's centre sample."""
        palette = np.stack([background.astype(np.float32)] + self.palette)
        rgb = palette[self.colour]  # (T, n, n, 3)
        rgb = box_downsample(rgb, ss)
        part = self.part[:, ss // 2 :: ss, ss // 2 :: ss]
        return (rgb.transpose(3, 0, 1, 2) * 2 - 1).astype(np.float32), part.copy()
