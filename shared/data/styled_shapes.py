"""Styled shapes: one 3D-ish structure of moving shapes rendered in several named styles, with control maps.

The world behind the structure/content papers (Gen-1, Esser et al. ICCV 2023: structure = depth, content =
appearance) and video ControlNets (depth / edge / camera control). It is `ShapesVideo`'s world made
three-dimensional and separable into *structure* and *style*:

- **Structure** (drawn from ``(seed, split, index)``, independent of the style): K shapes (circle, square,
  triangle), each a fronto-parallel sprite at a world depth ``Z`` in ``depth_range`` with a world radius
  in ``world_radius``, seen through a pinhole camera — the apparent radius is ``f * S * R / Z``, so
  nearer shapes look bigger and depth is recoverable from a single frame (up to the spread of ``R``);
  nearer shapes occlude farther ones. Each shape moves in a straight line (`DIRECTIONS4`) and stays inside
  the canvas for the clip when the camera is still. A colour *index* per shape (distinct within a video),
  and optionally a camera trajectory (``camera=True``): a pan in one of `DIRECTIONS4` (the camera
  translates parallel to the image plane, so the scene shifts the other way with parallax: nearer
  surfaces move more) plus a zoom in or out (the focal length grows or shrinks exponentially). The
  background is a textured plane at depth 1.
- **Style** (one of `STYLES`, drawn per item from stream 2 or fixed with ``style=``): a 4-colour palette
  that the colour index picks from, a texture attached to the shapes (flat, stripes, dots, radial shading,
  checker, horizontal stripes; it moves and scales with the shape) and a background pattern attached to
  the background plane (flat, dots, gradient, stripes; it moves with the camera). Textures are smooth and
  faded out where their period falls under ~2 pixels, so small canvases do not alias or flicker.

`render(index, style=s)` renders the structure of ``index`` in any style; ``with_styles=True`` adds
``x_styles`` (every style of this structure), so "same structure, other content" pairs and a style judge's
training data come from one call. Depth, masks, edges, flow and camera maps depend on the structure only.

Item keys (K = ``num_shapes``, T = ``frames``, S = ``size``):
    x (3, T, S, S) in [-1, 1]; caption e.g. "a pink circle moving left and a mint square moving up, pastel
    style" (+ ", camera panning right and zooming in" with a camera); structure_caption (no colour or
    style words); style (long) index into ``self.styles``; style_name (str);
    mask (T, S, S) long: visible instance (0 background, k+1 shape k; coverage >= 1/2 as `ShapesVideo`);
    depth (T, S, S) float: visible world depth (1 for the background); edges (T, S, S) float {0, 1}: pixels
    with a 4-neighbour of another instance — the depth/instance discontinuities (both sides);
    flow (2, T, S, S) float: (dx, dy) pixel motion of the visible surface from frame t to t+1 (the last
    frame's flow goes to the extrapolated frame T); camera (T, 3): (cx, cy, f) camera centre in world units
    and focal scale; camera_map (6, T, S, S): Plücker ray of each pixel, (direction d, moment o x d), d a
    unit vector in world axes (x right, y down, z forward), o = (cx, cy, 0) the camera centre;
    per shape: shape, color (palette index), direction (K,) long; shape_depth, world_radius, speed (K,)
    (speed in px/frame at the base camera); positions (T, K, 2) screen centres (row, col); radii (T, K)
    apparent radius in px; with ``camera=True`` also camera_pan (long, `DIRECTIONS4` of the camera's
    motion) and camera_zoom (long, 0 in, 1 out); with ``with_styles=True`` x_styles (len(styles), 3, T, S, S).

Frames-only mode slices every per-frame key (flow, camera_map and x_styles along their T axis).
Screen coordinates: pixel centres at ``i + 0.5``, the image centre at ``S / 2``; world point ``(X, Y, Z)``
maps to ``col = S/2 + f S (X - cx) / Z``, ``row = S/2 + f S (Y - cy) / Z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.data.video_worlds import _STEPS4, DIRECTIONS4, _World

__all__ = ["STYLES", "Style", "StyledShapes"]


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 127.5 - 1.0, g / 127.5 - 1.0, b / 127.5 - 1.0)


@dataclass(frozen=True)
class Style:
    """A rendering style: 4 named palette colours (RGB in [-1, 1]), a shape texture, a background pattern.

    ``accent`` is the colour value (-1 black, +1 white) the texture mixes towards, by ``shade``.
    ``bg`` is (base, pattern) for flat/dots/stripes backgrounds and (top, bottom) for a gradient.
    """

    palette: tuple[tuple[str, tuple[float, float, float]], ...]
    texture: str
    background: str
    bg: tuple[tuple[float, float, float], tuple[float, float, float]]
    accent: float = -1.0
    shade: float = 0.5


STYLES: dict[str, Style] = {
    "flat": Style(
        (
            ("red", _rgb(230, 40, 40)),
            ("green", _rgb(40, 200, 60)),
            ("blue", _rgb(50, 80, 235)),
            ("yellow", _rgb(240, 220, 40)),
        ),
        texture="flat",
        background="flat",
        bg=(_rgb(0, 0, 0), _rgb(0, 0, 0)),
    ),
    "pastel": Style(
        (
            ("pink", _rgb(250, 165, 200)),
            ("mint", _rgb(150, 235, 195)),
            ("lavender", _rgb(185, 165, 245)),
            ("peach", _rgb(250, 200, 150)),
        ),
        texture="stripes",
        background="flat",
        bg=(_rgb(70, 70, 80), _rgb(70, 70, 80)),
        shade=0.45,
    ),
    "neon": Style(
        (
            ("lime", _rgb(130, 255, 40)),
            ("magenta", _rgb(255, 40, 200)),
            ("cyan", _rgb(40, 230, 255)),
            ("orange", _rgb(255, 140, 0)),
        ),
        texture="dots",
        background="dots",
        bg=(_rgb(10, 10, 50), _rgb(60, 60, 140)),
        accent=1.0,
        shade=0.7,
    ),
    "earth": Style(
        (
            ("brown", _rgb(110, 60, 25)),
            ("olive", _rgb(100, 115, 35)),
            ("ochre", _rgb(205, 140, 30)),
            ("rust", _rgb(165, 55, 25)),
        ),
        texture="radial",
        background="gradient",
        bg=(_rgb(150, 190, 235), _rgb(230, 215, 170)),
        shade=0.6,
    ),
    "mono": Style(
        (
            ("black", _rgb(15, 15, 15)),
            ("charcoal", _rgb(70, 70, 70)),
            ("grey", _rgb(125, 125, 125)),
            ("silver", _rgb(170, 170, 170)),
        ),
        texture="checker",
        background="stripes",
        bg=(_rgb(215, 215, 215), _rgb(245, 245, 245)),
        accent=1.0,
        shade=0.35,
    ),
    "sunset": Style(
        (
            ("crimson", _rgb(225, 30, 60)),
            ("gold", _rgb(255, 200, 30)),
            ("coral", _rgb(255, 125, 80)),
            ("rose", _rgb(250, 160, 205)),
        ),
        texture="hstripes",
        background="gradient",
        bg=(_rgb(20, 20, 70), _rgb(90, 30, 110)),
        shade=0.5,
    ),
}

_TEXTURES = ("flat", "stripes", "dots", "radial", "checker", "hstripes")
_BACKGROUNDS = ("flat", "dots", "gradient", "stripes")
# Texture periods in units of the shape's radius; background period in world units on the plane at depth 1.
_TEX_PERIOD = {"stripes": 0.75, "dots": 0.8, "checker": 0.9, "hstripes": 0.6}
_BG_PERIOD = 1.0 / 6.0
_BG_DEPTH = 1.0


def _fade(period_px: np.ndarray) -> np.ndarray:
    """Contrast of a periodic pattern by its period in pixels: 0 under 2 px (it would alias), 1 from 4 px."""
    return np.clip((period_px - 2.0) / 2.0, 0.0, 1.0)


def _sdf(shape: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (px) to a circle / square / triangle of radius r, as `ShapesVideo._coverage`."""
    if shape == 0:
        return np.sqrt(dy * dy + dx * dx) - r
    if shape == 1:
        return np.maximum(np.abs(dy), np.abs(dx)) - 0.886 * r
    return np.maximum(np.maximum(dy, -0.5 * dy - 0.8660254 * dx), -0.5 * dy + 0.8660254 * dx) - 0.5 * 1.3 * r


def _texture(kind: str, lx: np.ndarray, ly: np.ndarray, r_px: np.ndarray) -> np.ndarray | None:
    """Texture amount in [0, 1] at local coordinates (units of the radius); None for flat."""
    if kind == "flat":
        return None
    if kind == "radial":
        return np.clip(lx * lx + ly * ly, 0.0, 1.0)
    p = _TEX_PERIOD[kind]
    fade = _fade(p * r_px)
    if kind == "stripes":
        return (0.5 + 0.5 * np.cos(2 * np.pi * (lx + ly) / (p * np.sqrt(2.0)))) * _fade(p / np.sqrt(2) * r_px)
    if kind == "hstripes":
        return (0.5 + 0.5 * np.cos(2 * np.pi * ly / p)) * fade
    if kind == "checker":
        return (0.5 + 0.5 * np.cos(2 * np.pi * lx / p) * np.cos(2 * np.pi * ly / p)) * fade
    # dots: a dot of radius p/4 at every lattice point, anti-aliased in pixels
    ux, uy = lx / p, ly / p
    dist = np.sqrt((ux - np.round(ux)) ** 2 + (uy - np.round(uy)) ** 2) * p * r_px  # px
    return np.clip(0.25 * p * r_px - dist + 0.5, 0.0, 1.0) * fade


class StyledShapes(_World):
    """Shapes at known depths behind a pinhole camera, rendered in named styles (module docstring).

    Args:
        n, frames, size, seed, split, frames_only: as the other worlds (`_World`).
        num_shapes: K (at most 4: distinct palette colours).
        styles: names from `STYLES` this world uses (``style`` indexes this tuple).
        style: None (drawn per item), a name or an index into ``styles``: every item in that style.
        depth_range: world depth of the shapes (the background plane is at 1).
        world_radius: world radius range; the apparent radius is ``S * R / Z`` at the base camera.
        speed: screen speed range, fraction of the canvas side per frame (at the base camera).
        camera: draw a pan + zoom trajectory per item (else a static camera; camera keys still present).
        pan: camera speed range, world units per frame (the background plane at depth 1 moves ``S * pan`` px).
        zoom: zoom rate range, log focal change per frame.
        with_styles: add ``x_styles`` to each item.
    """

    SHAPES = ("circle", "square", "triangle")
    per_frame_keys = ("mask", "depth", "edges", "positions", "radii", "camera")
    time_axes = {"flow": 1, "camera_map": 1, "x_styles": 2}

    def __init__(
        self,
        n: int = 1024,
        frames: int = 16,
        size: int = 32,
        num_shapes: int = 2,
        styles: Sequence[str] = tuple(STYLES),
        style: str | int | None = None,
        depth_range: Sequence[float] = (0.35, 0.85),
        world_radius: Sequence[float] = (0.07, 0.09),
        speed: Sequence[float] = (0.02, 0.04),
        camera: bool = False,
        pan: Sequence[float] = (0.004, 0.012),
        zoom: Sequence[float] = (0.005, 0.02),
        with_styles: bool = False,
        seed: int = 0,
        split: str = "train",
        frames_only: bool = False,
    ):
        super().__init__(n, frames, size, seed, split, frames_only)
        self.styles = tuple(styles)
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or not self.styles:
            raise ValueError(f"unknown styles {unknown or list(styles)}; choose from {sorted(STYLES)}")
        self.style = None if style is None else self._style_index(style)
        self.num_shapes = int(num_shapes)
        if not 1 <= self.num_shapes <= 4:
            raise ValueError(f"num_shapes must lie in [1, 4] (distinct palette colours), got {num_shapes}")
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        if not 0 < self.depth_range[0] <= self.depth_range[1] < _BG_DEPTH:
            raise ValueError(
                f"depth_range must lie in (0, {_BG_DEPTH}) (in front of the background), got {depth_range}"
            )
        self.world_radius = (float(world_radius[0]), float(world_radius[1]))
        self.speed = (float(speed[0]), float(speed[1]))
        self.camera, self.with_styles = bool(camera), bool(with_styles)
        self.pan = (float(pan[0]), float(pan[1]))
        self.zoom = (float(zoom[0]), float(zoom[1]))
        c = np.arange(self.size, dtype=np.float64) + 0.5  # pixel centres
        self._rows, self._cols = c[None, :, None], c[None, None, :]  # (1, S, 1), (1, 1, S)

    def _style_index(self, style: str | int) -> int:
        if isinstance(style, str):
            if style not in self.styles:
                raise ValueError(f"style {style!r} is not one of this world's styles {self.styles}")
            return self.styles.index(style)
        if not 0 <= int(style) < len(self.styles):
            raise ValueError(f"style index {style} out of range for {len(self.styles)} styles")
        return int(style)

    # -- structure ----------------------------------------------------------------------------------------
    def _structure(self, index: int) -> dict:
        rng = self._rng(index)
        T, S, K = self.frames, self.size, self.num_shapes
        shapes = rng.integers(len(self.SHAPES), size=K)
        colors = rng.permutation(4)[:K]
        directions = rng.integers(len(DIRECTIONS4), size=K)
        depths = np.sort(rng.uniform(*self.depth_range, size=K))  # index 0 is the nearest
        R = rng.uniform(*self.world_radius, size=K)
        r_px = R * S / depths  # apparent radius at the base camera (f = 1)
        starts, vel_px, speeds = [], [], []
        for k in range(K):
            reach = r_px[k] * (1.3 if shapes[k] == 2 else 1.0)
            lo, hi = reach + 0.5, S - reach - 0.5
            room = max(hi - lo, 0.0)
            top = min(self.speed[1] * S, room / max(T - 1, 1))
            sp = rng.uniform(min(self.speed[0] * S, top), top)
            v = _STEPS4[directions[k]] * sp  # (d_row, d_col) px/frame
            travel = np.abs(v) * (T - 1)
            start = np.empty(2)
            for a in range(2):
                start[a] = rng.uniform(lo, max(hi - travel[a], lo))
                if v[a] < 0:
                    start[a] += travel[a]
            starts.append(start)
            vel_px.append(v)
            speeds.append(sp)
        starts, vel_px = np.stack(starts), np.stack(vel_px)  # (K, 2) (row, col)
        # World coordinates (X right, Y down): screen = S/2 + S * (X - cx) / Z at the base camera.
        world0 = (starts[:, ::-1] - S / 2) * depths[:, None] / S  # (K, 2) (X, Y)
        world_vel = vel_px[:, ::-1] * depths[:, None] / S
        cam = np.zeros((T + 1, 3))
        cam[:, 2] = 1.0
        pan_dir = zoom_dir = None
        if self.camera:
            crng = self._rng(index, stream=3)
            pan_dir = int(crng.integers(len(DIRECTIONS4)))
            pan_speed = crng.uniform(*self.pan)
            zoom_dir = int(crng.integers(2))
            zoom_rate = crng.uniform(*self.zoom) * (1.0 if zoom_dir == 0 else -1.0)
            t = np.arange(T + 1, dtype=np.float64)
            cam[:, 0] = _STEPS4[pan_dir][1] * pan_speed * t
            cam[:, 1] = _STEPS4[pan_dir][0] * pan_speed * t
            cam[:, 2] = np.exp(zoom_rate * t)
        return {
            "shapes": shapes,
            "colors": colors,
            "directions": directions,
            "depths": depths,
            "R": R,
            "speeds": np.asarray(speeds),
            "world0": world0,
            "world_vel": world_vel,
            "camera": cam,  # (T + 1, 3): one extra frame for the last flow
            "pan_dir": pan_dir,
            "zoom_dir": zoom_dir,
        }

    def _geometry(self, st: dict) -> dict:
        """Everything style-independent: coverage, local texture coordinates, mask, depth, flow, edges, camera."""
        T, S, K = self.frames, self.size, self.num_shapes
        cam = st["camera"]
        cx, cy, f = (cam[:, i][:, None, None] for i in range(3))  # (T + 1, 1, 1)
        t = np.arange(T + 1, dtype=np.float64)[:, None]
        world = st["world0"][None] + t[..., None] * st["world_vel"][None]  # (T + 1, K, 2) (X, Y)
        Z = st["depths"]
        centre_col = S / 2 + f[:, :, 0] * S * (world[..., 0] - cam[:, 0:1]) / Z  # (T + 1, K)
        centre_row = S / 2 + f[:, :, 0] * S * (world[..., 1] - cam[:, 1:2]) / Z
        radii = f[:, :, 0] * S * st["R"] / Z  # (T + 1, K)
        rows, cols = self._rows, self._cols
        cover, local = [], []
        for k in range(K):
            r = radii[:T, k, None, None]
            dy = rows - centre_row[:T, k, None, None]  # (T, S, 1)
            dx = cols - centre_col[:T, k, None, None]  # (T, 1, S)
            a = np.clip(0.5 - _sdf(int(st["shapes"][k]), dy, dx, r), 0.0, 1.0)
            cover.append(a)
            local.append((dx / r, dy / r, r))
        mask = np.zeros((T, S, S), dtype=np.int64)
        depth = np.full((T, S, S), _BG_DEPTH)
        vel = np.zeros((2, T, S, S))
        for k in reversed(range(K)):  # far to near, as the painter composites
            inside = cover[k] >= 0.5
            mask[inside] = k + 1
            depth[inside] = Z[k]
            vel[0][inside] = st["world_vel"][k, 0]
            vel[1][inside] = st["world_vel"][k, 1]
        # Flow of the visible surface from t to t+1: unproject at t with its depth, move, project at t+1.
        ratio = f[1:] / f[:-1]  # (T, 1, 1)
        flow = np.empty((2, T, S, S))
        flow[0] = (ratio - 1) * (cols - S / 2) + f[1:] * S * (vel[0] + cx[:-1] - cx[1:]) / depth
        flow[1] = (ratio - 1) * (rows - S / 2) + f[1:] * S * (vel[1] + cy[:-1] - cy[1:]) / depth
        edges = np.zeros((T, S, S), dtype=bool)
        h = mask[:, :, 1:] != mask[:, :, :-1]
        edges[:, :, 1:] |= h
        edges[:, :, :-1] |= h
        v = mask[:, 1:, :] != mask[:, :-1, :]
        edges[:, 1:, :] |= v
        edges[:, :-1, :] |= v
        # Background plane coordinates and the per-pixel camera rays (Plücker: direction, moment).
        bx = cx[:T] + (cols - S / 2) * _BG_DEPTH / (f[:T] * S)  # (T, 1, S)
        by = cy[:T] + (rows - S / 2) * _BG_DEPTH / (f[:T] * S)  # (T, S, 1)
        ones = np.ones((T, S, S))
        d = np.stack([(cols - S / 2) / (f[:T] * S) * ones, (rows - S / 2) / (f[:T] * S) * ones, ones])
        d /= np.linalg.norm(d, axis=0, keepdims=True)
        o = (cx[:T], cy[:T])
        moment = np.stack([o[1] * d[2], -o[0] * d[2], o[0] * d[1] - o[1] * d[0]])  # o x d with o = (cx, cy, 0)
        return {
            "cover": cover,
            "local": local,
            "mask": mask,
            "depth": depth,
            "flow": flow,
            "edges": edges,
            "bg": (bx, by, f[:T, 0, 0] * S * _BG_PERIOD / _BG_DEPTH),
            "camera_map": np.concatenate([d, moment]),
            "positions": np.stack([centre_row[:T], centre_col[:T]], axis=-1),
            "radii": radii[:T],
        }

    # -- style ----------------------------------------------------------------------------------------------
    def _paint(self, st: dict, geo: dict, style: Style) -> np.ndarray:
        T, S = self.frames, self.size
        b0, b1 = (np.asarray(c).reshape(3, 1, 1, 1) for c in style.bg)
        bx, by, period_px = geo["bg"]
        pp = period_px[:, None, None]
        kind = style.background
        if kind == "flat":
            m = None
        elif kind == "gradient":
            m = np.clip(by + 0.5, 0.0, 1.0) * np.ones((1, 1, S))
        elif kind == "stripes":
            m = (0.5 + 0.5 * np.cos(2 * np.pi * (bx + by) / _BG_PERIOD)) * _fade(pp / np.sqrt(2))
        else:  # dots
            ux, uy = bx / _BG_PERIOD, by / _BG_PERIOD
            dist = np.sqrt((ux - np.round(ux)) ** 2 + (uy - np.round(uy)) ** 2) * pp
            m = np.clip(0.2 * pp - dist + 0.5, 0.0, 1.0) * _fade(pp)
        img = np.broadcast_to(b0, (3, T, S, S)).copy() if m is None else b0 + (b1 - b0) * m[None]
        for k in reversed(range(self.num_shapes)):
            col = np.asarray(style.palette[int(st["colors"][k])][1]).reshape(3, 1, 1, 1)
            lx, ly, r = geo["local"][k]
            tex = _texture(style.texture, lx, ly, r)
            if tex is not None:
                col = col + (style.accent - col) * style.shade * tex[None]
            img = img + (col - img) * geo["cover"][k][None]
        return img.astype(np.float32)

    # -- items ------------------------------------------------------------------------------------------------
    def _caption_parts(self, st: dict, style: str | None) -> tuple[str, str]:
        names = [self.SHAPES[int(s)] for s in st["shapes"]]
        dirs = [DIRECTIONS4[int(d)] for d in st["directions"]]
        cam = ""
        if st["pan_dir"] is not None:
            cam = f", camera panning {DIRECTIONS4[st['pan_dir']]} and zooming {('in', 'out')[st['zoom_dir']]}"
        if style is None:
            return " and ".join(f"a {n} moving {d}" for n, d in zip(names, dirs)) + cam, ""
        pal = STYLES[style].palette
        colours = [pal[int(c)][0] for c in st["colors"]]
        moving = " and ".join(f"a {c} {n} moving {d}" for c, n, d in zip(colours, names, dirs))
        still = " and ".join(f"a {c} {n}" for c, n in zip(colours, names))
        return f"{moving}, {style} style{cam}", f"{still}, {style} style"

    def render(self, index: int, style: str | int | None = None) -> dict:
        """The video item of structure ``index`` in ``style`` (default: the item's own style)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.n}")
        return self._item(index, None if style is None else self._style_index(style))

    def item_style(self, index: int) -> int:
        """The style index of item ``index``: the fixed ``style`` or a draw from ``(seed, split, index)``."""
        if self.style is not None:
            return self.style
        return int(self._rng(index, stream=2).integers(len(self.styles)))

    def _item(self, index: int, style_idx: int | None) -> dict:
        st = self._structure(index)
        geo = self._geometry(st)
        s = self.item_style(index) if style_idx is None else style_idx
        name = self.styles[s]
        caption, frame_caption = self._caption_parts(st, name)
        structure_caption, _ = self._caption_parts(st, None)
        item = {
            "x": torch.from_numpy(self._paint(st, geo, STYLES[name])),
            "caption": caption,
            "frame_caption": frame_caption,
            "structure_caption": structure_caption,
            "style": torch.tensor(s, dtype=torch.long),
            "style_name": name,
            "mask": torch.from_numpy(geo["mask"]),
            "depth": torch.from_numpy(geo["depth"].astype(np.float32)),
            "edges": torch.from_numpy(geo["edges"].astype(np.float32)),
            "flow": torch.from_numpy(geo["flow"].astype(np.float32)),
            "camera": torch.from_numpy(st["camera"][: self.frames].astype(np.float32)),
            "camera_map": torch.from_numpy(geo["camera_map"].astype(np.float32)),
            "shape": torch.from_numpy(st["shapes"].astype(np.int64)),
            "color": torch.from_numpy(st["colors"].astype(np.int64)),
            "direction": torch.from_numpy(st["directions"].astype(np.int64)),
            "shape_depth": torch.tensor(st["depths"], dtype=torch.float32),
            "world_radius": torch.tensor(st["R"], dtype=torch.float32),
            "speed": torch.tensor(st["speeds"], dtype=torch.float32),
            "positions": torch.from_numpy(geo["positions"].astype(np.float32)),
            "radii": torch.from_numpy(geo["radii"].astype(np.float32)),
        }
        if self.camera:
            item["camera_pan"] = torch.tensor(st["pan_dir"], dtype=torch.long)
            item["camera_zoom"] = torch.tensor(st["zoom_dir"], dtype=torch.long)
        if self.with_styles:
            item["x_styles"] = torch.from_numpy(np.stack([self._paint(st, geo, STYLES[nm]) for nm in self.styles]))
        return item

    def video(self, index: int) -> dict:
        return self._item(index, None)
