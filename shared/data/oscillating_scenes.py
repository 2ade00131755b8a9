"""Oscillating scenes: stems, leaves, pendulums and flags swaying in a random wind, with exact per-pixel motion.

The world of Generative Image Dynamics (Li et al., CVPR 2024): a still image, the video that follows it,
and the ground-truth motion texture (the displacement of every pixel of the still over time, Sec. 4.1)
with its spectral volume (the K lowest temporal frequencies of that motion, Eq. 2;
`shared.data.spectral`). On real videos the motion comes from optical flow; here it is known exactly.

Scene (drawn from ``(seed, split, index)``): a static background (sky gradient, textured ground, flag
poles) and ``num_objects`` objects of the ``object_types``, layered in random depth order:

- **stem**: a thin stalk rooted in the ground with a round head; bends sideways, more towards the tip:
  ``dx = sum_k Re q_k(t) phi_k(s)`` with the cantilever-like shapes ``phi_k(s) = 1 - cos((2k-1) pi s / 2)``
  of the height fraction ``s``, and the tip dips (``dy = dx^2 / 2h``) as the stalk bends.
- **leaf**: an ellipse hanging from an anchor point, rotating about it by ``theta = sum_k Re q_k(t)``.
- **pendulum**: a rod and a bob rotating about a pivot by ``theta = sum_k Re q_k(t)``.
- **flag**: a striped strip fixed to a static pole; a wave travels along it:
  ``dy = sum_k Re(q_k(t) exp(-i kappa_k s)) s`` with ``s`` the distance from the pole over the length.

Each object has ``num_modes`` modes with frequencies ``f_k`` (cycles per frame, in ``frequency``), damping
ratios ``zeta_k`` (in ``damping``) and amplitudes ``~ 1/k^2`` summing to the object's amplitude (pixels at
the tip for stems and flags, a fraction ``amplitude`` of the canvas side; radians for leaves and pendulums,
in ``angle``). A scene-wide wind — ``wind_components`` sinusoids with frequencies in ``wind_frequency``,
random weights and phases, reaching objects with a delay that grows left to right — drives every mode as a
damped harmonic oscillator. The complex modal coordinate is the closed-form steady-state response to that
forcing plus a free damped oscillation ("a gust just passed", a fraction ``free`` of the amplitude):

    q_k(t) = a_k [ (1 - c) sum_j W_j H_k(O_j) exp(i(2 pi O_j (t - d) + psi_j)) / B_k
                   + c exp(-zeta_k w_k t) exp(i(w_k sqrt(1 - zeta_k^2) t + phi_k)) ],
    H_k(O) = w_k^2 / (w_k^2 - (2 pi O)^2 + 2 i zeta_k w_k 2 pi O),   w_k = 2 pi f_k,   B_k = sum_j W_j |H_k(O_j)|.

With ``loop=True`` there is no free term and the wind frequencies are whole numbers of cycles per clip, so
the motion is exactly periodic with period ``frames``: frame ``T`` equals frame 0 and the video loops.

Rendering is exact inverse mapping: every object is defined on *material* coordinates ``u``; at time ``t``
a material point is drawn at ``u + D_t(u)``, so each screen pixel is traced back to its material point
(in closed form for rotations, by a converging 1D fixed-point iteration for stems and flags, whose
displacement depends on one coordinate) and shaded with anti-aliased signed distances. The ground truth
follows the same maps: the still's pixel ``p`` shows material point ``u = x_0^{-1}(p)``, and its
displacement at ``t`` is ``u + D_t(u) - p`` — so splatting the still along ``displacement[:, t]`` gives
frame ``t`` (up to anti-aliasing and disocclusions), and with zero amplitude every frame is the still.

Item keys (T = ``frames``, S = ``size``, K = ``num_freqs``, N = ``num_objects``, M = ``num_modes``):
    still (3, S, S) the first frame; x (3, T, S, S) in [-1, 1]; displacement (2, T, S, S) (dx, dy) pixels of
    the still's pixels (0 on the static background; ``displacement[:, 0] = 0``); spectral_volume (K, 4, S, S)
    of ``displacement`` over the T frames (`shared.data.spectral.spectral_volume`); mask (S, S) long: object
    of each still pixel (0 background, i+1 object i; later objects are nearer); caption e.g. "two stems and
    a pendulum swaying in the wind"; object_type (N,) long index into `OBJECTS`; frequency, damping (N, M);
    amplitude (N,) (pixels or radians by type); wind_frequency (wind_components,); loop (bool).
`render(index, times)` gives ``x`` and ``displacement`` at any (fractional, or beyond T) frame times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shared.data.spectral import _check_freqs, spectral_volume
from shared.data.video_worlds import _World

__all__ = ["OBJECTS", "OscillatingScenes"]

OBJECTS = ("stem", "leaf", "pendulum", "flag")
_PX_TYPES = ("stem", "flag")  # amplitude in pixels; the others rotate (radians)
_FIXED_POINT_ITERS = 6
_NUMBERS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_SKY = [((70, 120, 200), (170, 205, 240)), ((40, 60, 120), (230, 150, 110)), ((120, 160, 200), (225, 225, 230))]
_GROUND = [(70, 120, 50), (120, 95, 60), (90, 140, 70)]
_STALK = [(40, 110, 40), (70, 130, 50), (90, 100, 40)]
_BLOOM = [(230, 60, 60), (250, 210, 50), (240, 240, 240), (200, 90, 220), (250, 140, 40)]
_LEAF = [(60, 160, 60), (150, 190, 50), (220, 150, 40), (190, 70, 40)]
_METAL = [(90, 90, 100), (150, 120, 70), (60, 60, 60)]
_FLAG = [((220, 40, 40), (245, 245, 245)), ((40, 80, 200), (250, 210, 50)), ((30, 150, 80), (245, 245, 245))]


def _col(rgb) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64).reshape(3, 1, 1, 1) / 127.5 - 1.0


def _jitter(rng: np.random.Generator, rgb) -> np.ndarray:
    return np.clip(_col(rgb) + rng.uniform(-0.12, 0.12, size=(3, 1, 1, 1)), -1.0, 1.0)


def _cover(sdf: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - sdf, 0.0, 1.0)


class _Object:
    """An object on material coordinates: parts with colours, a displacement law and its inverse."""

    kind = ""

    def bbox(self, S: int) -> tuple[int, int, int, int]:
        y0, y1, x0, x1 = self._extent()
        return max(0, int(np.floor(y0))), min(S, int(np.ceil(y1))), max(0, int(np.floor(x0))), min(S, int(np.ceil(x1)))


class _Stem(_Object):
    kind = "stem"

    def __init__(self, xb, yb, h, w, rh, amp, stalk, bloom):
        self.xb, self.yb, self.h, self.w, self.rh, self.amp = xb, yb, h, w, rh, amp
        self.stalk, self.bloom = stalk, bloom

    def _extent(self):
        reach = 2 * self.amp + self.rh + self.w + 2
        return self.yb - self.h - self.rh - 2, self.yb + 2, self.xb - reach, self.xb + reach

    def _dx(self, uy, q):  # q (M, N, 1, 1) real parts
        s = np.clip((self.yb - uy) / self.h, 0.0, 1.0)
        k = np.arange(1, q.shape[0] + 1).reshape(-1, 1, 1, 1)
        return (q * (1 - np.cos((2 * k - 1) * np.pi * s[None] / 2))).sum(0)

    def forward(self, uy, ux, q):
        dx = self._dx(uy, q)
        return uy + 0.5 * dx * dx / self.h, ux + dx

    def inverse(self, ys, xs, q):
        uy = ys + 0.0 * q[0]  # (N, bh, 1)
        for _ in range(_FIXED_POINT_ITERS):
            dx = self._dx(uy, q)
            uy = ys - 0.5 * dx * dx / self.h
        return uy, xs - self._dx(uy, q)

    def parts(self, uy, ux):
        stalk = np.maximum(np.maximum(np.abs(ux - self.xb) - self.w / 2, uy - (self.yb + 1)), (self.yb - self.h) - uy)
        head = np.sqrt((ux - self.xb) ** 2 + (uy - (self.yb - self.h)) ** 2) - self.rh
        r = np.clip(np.sqrt((ux - self.xb) ** 2 + (uy - (self.yb - self.h)) ** 2) / max(self.rh, 1e-6), 0, 1)
        return [(stalk, self.stalk), (head, self.bloom * (1 - 0.35 * r[None] ** 2) - 0.35 * r[None] ** 2)]


class _Rotor(_Object):
    """A rigid part rotating about a pivot by theta = sum_k Re q_k (leaves and pendulums)."""

    def _rot(self, uy, ux, theta):
        c, s = np.cos(theta), np.sin(theta)
        dy, dx = uy - self.py, ux - self.px
        # Screen axes: x right, y down; positive theta turns +y towards -x (counter-clockwise on screen).
        return self.py + s * dx + c * dy, self.px + c * dx - s * dy

    def forward(self, uy, ux, q):
        return self._rot(uy, ux, q.sum(0))

    def inverse(self, ys, xs, q):
        return self._rot(ys, xs, -q.sum(0))


class _Leaf(_Rotor):
    kind = "leaf"

    def __init__(self, px, py, la, lb, alpha, colour):
        self.px, self.py, self.la, self.lb, self.alpha, self.colour = px, py, la, lb, alpha, colour

    def _extent(self):
        r = 2 * self.la + 2
        return self.py - r, self.py + r, self.px - r, self.px + r

    def parts(self, uy, ux):
        ca, sa = np.cos(self.alpha), np.sin(self.alpha)
        cy, cx = self.py + self.la * ca, self.px + self.la * sa  # hangs down-ish from the anchor
        dy, dx = uy - cy, ux - cx
        major = dy * ca + dx * sa
        minor = -dy * sa + dx * ca
        rho = np.sqrt((major / self.la) ** 2 + (minor / self.lb) ** 2)
        sdf = (rho - 1) * self.lb
        shade = 0.3 * (major / self.la) - 0.25 * (minor / self.lb) ** 2  # smooth: lighter tip, darker rims
        return [(sdf, self.colour + shade[None])]


class _Pendulum(_Rotor):
    kind = "pendulum"

    def __init__(self, px, py, length, w, rb, rod, bob):
        self.px, self.py, self.length, self.w, self.rb, self.rod, self.bob = px, py, length, w, rb, rod, bob

    def _extent(self):
        r = self.length + self.rb + 2
        return self.py - r, self.py + r, self.px - r, self.px + r

    def parts(self, uy, ux):
        rod = np.maximum(np.maximum(np.abs(ux - self.px) - self.w / 2, self.py - uy), uy - (self.py + self.length))
        d = np.sqrt((ux - self.px) ** 2 + (uy - self.py - self.length) ** 2)
        r = np.clip(np.sqrt((ux - self.px + 0.3 * self.rb) ** 2 + (uy - self.py - self.length + 0.3 * self.rb) ** 2)
                    / self.rb, 0, 1.5)  # fmt: skip
        return [(rod, self.rod), (d - self.rb, self.bob * (1 - 0.3 * r[None]) + 0.4 * (1 - r[None]).clip(0))]


class _Flag(_Object):
    kind = "flag"

    def __init__(self, x0, y0, length, height, sign, amp, kappa, colours, bands):
        self.x0, self.y0, self.length, self.height, self.sign, self.amp = x0, y0, length, height, sign, amp
        self.kappa, self.colours, self.bands = kappa, colours, bands

    def _extent(self):
        xa, xb = sorted((self.x0 - self.sign, self.x0 + self.sign * (self.length + 2)))
        return self.y0 - self.amp - 2, self.y0 + self.height + self.amp + 2, xa, xb

    def _s(self, ux):
        return np.clip(self.sign * (ux - self.x0) / self.length, 0.0, 1.0)

    def _dy(self, ux, q):  # q complex (M, N, 1, 1)
        s = self._s(ux)
        wave = np.exp(-1j * self.kappa.reshape(-1, 1, 1, 1) * s[None])
        return (q * wave).real.sum(0) * s

    def forward(self, uy, ux, q):
        dy = self._dy(ux, q)
        return uy + dy, ux - self.sign * 0.5 * dy * dy / self.length

    def inverse(self, ys, xs, q):
        ux = xs + 0.0 * q[0].real  # (N, 1, bw)
        for _ in range(_FIXED_POINT_ITERS):
            dy = self._dy(ux, q)
            ux = xs + self.sign * 0.5 * dy * dy / self.length
        return ys - self._dy(ux, q), ux

    def parts(self, uy, ux):
        t = self.sign * (ux - self.x0)
        sdf = np.maximum(np.maximum(-t, t - self.length), np.maximum(self.y0 - uy, uy - (self.y0 + self.height)))
        # Smooth horizontal bands (a cosine across the height, ``bands`` half-periods): no sub-pixel detail.
        m = 0.5 + 0.5 * np.cos(np.pi * self.bands * (uy - self.y0) / self.height)
        a, b = self.colours
        return [(sdf, b + (a - b) * m[None])]


class OscillatingScenes(_World):
    """Objects swaying with a few damped modes in a random wind; exact motion and spectral volumes (module doc).

    Args:
        n, frames, size, seed, split, frames_only: as the other worlds.
        num_freqs: K bins of the spectral volume (``<= frames // 2 + 1``).
        num_objects, object_types: objects per scene and the kinds drawn (from `OBJECTS`).
        num_modes: modes per object.
        frequency: modal frequency range, cycles per frame.
        damping: damping ratio range.
        amplitude: tip amplitude range of stems and flags, fraction of the canvas side.
        angle: amplitude range of leaves and pendulums, radians.
        wind_frequency: wind frequency range, cycles per frame; wind_components: sinusoids in the wind.
        free: range of the free-oscillation fraction ``c`` (ignored with ``loop``).
        loop: exactly periodic motion with period ``frames``.
    """

    per_frame_keys = ()
    time_axes = {"displacement": 1}

    def __init__(
        self,
        n: int = 1024,
        frames: int = 128,
        size: int = 32,
        num_freqs: int = 16,
        num_objects: int = 3,
        object_types: Sequence[str] = OBJECTS,
        num_modes: int = 2,
        frequency: Sequence[float] = (0.02, 0.08),
        damping: Sequence[float] = (0.01, 0.05),
        amplitude: Sequence[float] = (0.04, 0.1),
        angle: Sequence[float] = (0.1, 0.3),
        wind_frequency: Sequence[float] = (0.008, 0.04),
        wind_components: int = 3,
        free: Sequence[float] = (0.2, 0.6),
        loop: bool = False,
        seed: int = 0,
        split: str = "train",
        frames_only: bool = False,
    ):
        super().__init__(n, frames, size, seed, split, frames_only)
        self.num_freqs = int(num_freqs)
        _check_freqs(self.num_freqs, self.frames)
        self.object_types = tuple(object_types)
        bad = [t for t in self.object_types if t not in OBJECTS]
        if bad or not self.object_types:
            raise ValueError(f"unknown object types {bad or list(object_types)}; choose from {OBJECTS}")
        self.num_objects, self.num_modes = int(num_objects), int(num_modes)
        if self.num_objects < 1 or self.num_modes < 1 or int(wind_components) < 1:
            raise ValueError(f"num_objects, num_modes and wind_components must be >= 1, got "
                             f"{num_objects}, {num_modes}, {wind_components}")  # fmt: skip
        pair = lambda v: (float(v[0]), float(v[1]))
        self.frequency, self.damping, self.amplitude = pair(frequency), pair(damping), pair(amplitude)
        self.angle, self.wind_frequency, self.free = pair(angle), pair(wind_frequency), pair(free)
        if not 0 <= self.damping[0] <= self.damping[1] < 1:
            raise ValueError(f"damping ratios must lie in [0, 1), got {damping}")
        if min(self.frequency) <= 0 or min(self.wind_frequency) <= 0:
            raise ValueError(f"frequencies must be positive, got {frequency=}, {wind_frequency=}")
        self.wind_components = int(wind_components)
        self.loop = bool(loop)

    # -- scene -----------------------------------------------------------------------------------------------
    def _scene(self, index: int) -> dict:
        rng = self._rng(index)
        S, M, J = self.size, self.num_modes, self.wind_components
        sky = _SKY[int(rng.integers(len(_SKY)))]
        ground_y = S * (1 - rng.uniform(0.15, 0.3))
        bg = {
            "sky": (_jitter(rng, sky[0]), _jitter(rng, sky[1])),
            "ground": _jitter(rng, _GROUND[int(rng.integers(len(_GROUND)))]),
            "ground_y": ground_y,
            "ground_phase": rng.uniform(0, 2 * np.pi, size=4),
            "poles": [],
        }
        # The wind: shared by all objects, arriving later further right.
        if self.loop:
            lo = max(1, int(np.ceil(self.wind_frequency[0] * self.frames)))
            hi = max(lo, int(np.floor(self.wind_frequency[1] * self.frames)))
            wind_f = rng.integers(lo, hi + 1, size=J) / self.frames
        else:
            wind_f = rng.uniform(*self.wind_frequency, size=J)
        wind_w = rng.uniform(0.3, 1.0, size=J)
        wind_w /= wind_w.sum()
        wind_phase = rng.uniform(0, 2 * np.pi, size=J)
        lag = rng.uniform(0.0, 10.0)  # frames for the wind to cross the canvas
        objects, params = [], []
        for _ in range(self.num_objects):
            kind = self.object_types[int(rng.integers(len(self.object_types)))]
            if kind in _PX_TYPES:
                amp = rng.uniform(*self.amplitude) * S
            else:
                amp = rng.uniform(*self.angle)
            if kind == "stem":
                h = rng.uniform(0.35, 0.6) * S
                obj = _Stem(
                    xb=rng.uniform(0.12, 0.88) * S, yb=ground_y + 0.5, h=h, w=max(1.2, rng.uniform(0.035, 0.06) * S),
                    rh=rng.uniform(0.05, 0.09) * S, amp=amp,
                    stalk=_jitter(rng, _STALK[int(rng.integers(len(_STALK)))]),
                    bloom=_jitter(rng, _BLOOM[int(rng.integers(len(_BLOOM)))]),
                )  # fmt: skip
                x_ref = obj.xb
            elif kind == "leaf":
                obj = _Leaf(
                    px=rng.uniform(0.15, 0.85) * S, py=rng.uniform(0.08, 0.45) * S, la=rng.uniform(0.1, 0.15) * S,
                    lb=rng.uniform(0.045, 0.07) * S, alpha=rng.uniform(-0.6, 0.6),
                    colour=_jitter(rng, _LEAF[int(rng.integers(len(_LEAF)))]),
                )  # fmt: skip
                x_ref = obj.px
            elif kind == "pendulum":
                obj = _Pendulum(
                    px=rng.uniform(0.2, 0.8) * S, py=rng.uniform(0.03, 0.12) * S, length=rng.uniform(0.3, 0.5) * S,
                    w=max(1.0, 0.03 * S), rb=rng.uniform(0.06, 0.09) * S,
                    rod=_jitter(rng, _METAL[int(rng.integers(len(_METAL)))]),
                    bob=_jitter(rng, _BLOOM[int(rng.integers(len(_BLOOM)))]),
                )  # fmt: skip
                x_ref = obj.px
            else:
                x0 = rng.uniform(0.15, 0.85) * S
                sign = 1.0 if x0 < S / 2 else -1.0
                pair_c = _FLAG[int(rng.integers(len(_FLAG)))]
                obj = _Flag(
                    x0=x0, y0=rng.uniform(0.08, 0.3) * S, length=rng.uniform(0.25, 0.38) * S,
                    height=rng.uniform(0.14, 0.22) * S, sign=sign, amp=amp, kappa=rng.uniform(1.5, 4.0, size=M),
                    colours=(_jitter(rng, pair_c[0]), _jitter(rng, pair_c[1])), bands=int(rng.integers(1, 3)),
                )  # fmt: skip
                bg["poles"].append((x0 - sign * 0.5, obj.y0 - 1.0, max(1.0, 0.035 * S)))
                x_ref = x0
            f = np.sort(rng.uniform(*self.frequency, size=M))
            zeta = rng.uniform(*self.damping, size=M)
            weights = 1.0 / np.arange(1, M + 1) ** 2
            a = amp * weights / weights.sum()
            c = 0.0 if self.loop else rng.uniform(*self.free)
            phase = rng.uniform(0, 2 * np.pi, size=M)
            objects.append(obj)
            params.append({
                "kind": kind, "f": f, "zeta": zeta, "a": a, "c": c, "phase": phase, "amp": amp,
                "delay": lag * x_ref / S,
            })  # fmt: skip
        return {"bg": bg, "objects": objects, "params": params, "wind": (wind_f, wind_w, wind_phase)}

    def _modal(self, p: dict, wind: tuple, times: np.ndarray) -> np.ndarray:
        """Complex modal coordinates q (M, N) of one object at ``times`` (module docstring)."""
        wind_f, wind_w, wind_phase = wind
        w = 2 * np.pi * p["f"][:, None]  # (M, 1)
        zeta = p["zeta"][:, None]
        W = 2 * np.pi * wind_f[None, :]  # (1, J)
        H = w**2 / (w**2 - W**2 + 2j * zeta * w * W)  # (M, J)
        B = (wind_w[None] * np.abs(H)).sum(1, keepdims=True)  # (M, 1)
        t = times[None, None, :]  # (1, 1, N)
        forcing = wind_w[None, :, None] * np.exp(1j * (W[..., None] * (t - p["delay"]) + wind_phase[None, :, None]))
        steady = (H[..., None] * forcing).sum(1) / B  # (M, N)
        q = (1 - p["c"]) * steady
        if p["c"] > 0:
            wd = w * np.sqrt(1 - zeta**2)
            q = q + p["c"] * np.exp(-zeta * w * times[None]) * np.exp(1j * (wd * times[None] + p["phase"][:, None]))
        return p["a"][:, None] * q

    def _background(self, bg: dict) -> np.ndarray:
        S = self.size
        rows = (np.arange(S) + 0.5).reshape(S, 1)
        cols = (np.arange(S) + 0.5).reshape(1, S)
        top, bottom = bg["sky"]
        m = np.clip(rows / bg["ground_y"], 0, 1)[None, None]  # (1, 1, S, 1)
        img = top + (bottom - top) * m * np.ones((1, 1, 1, S))
        ph = bg["ground_phase"]
        tex = np.sin(cols * 1.3 + ph[0]) * np.sin(rows * 1.7 + ph[1]) + 0.5 * np.sin(cols * 0.55 + rows * 0.9 + ph[2])
        ground = bg["ground"] + 0.12 * tex[None, None]
        a = np.clip(rows - bg["ground_y"] + 0.5, 0, 1)[None, None]
        img = img + (ground - img) * a
        for x, y_top, w in bg["poles"]:
            sdf = np.maximum(np.abs(cols - x) - w / 2, y_top - rows) * np.ones((S, S))
            sdf = np.maximum(sdf, rows - bg["ground_y"] - 1)
            img = img + (_col((80, 70, 60)) - img) * _cover(sdf)[None, None]
        return img[:, 0]  # (3, S, S)

    # -- rendering ----------------------------------------------------------------------------------------------
    def _render(self, scene: dict, times: np.ndarray) -> dict:
        S, N = self.size, len(times)
        times = np.asarray(times, dtype=np.float64)
        img = np.repeat(self._background(scene["bg"])[:, None], N, axis=1)  # (3, N, S, S)
        mask = np.zeros((S, S), dtype=np.int64)
        disp = np.zeros((2, N, S, S))
        zero = np.zeros(1)
        for i, (obj, p) in enumerate(zip(scene["objects"], scene["params"])):
            y0, y1, x0, x1 = obj.bbox(S)
            if y1 <= y0 or x1 <= x0:
                continue
            ys = (np.arange(y0, y1) + 0.5).reshape(1, -1, 1)
            xs = (np.arange(x0, x1) + 0.5).reshape(1, 1, -1)
            q = self._modal(p, scene["wind"], times)[:, :, None, None]  # (M, N, 1, 1)
            q0 = self._modal(p, scene["wind"], zero)[:, :, None, None]
            if obj.kind != "flag":
                q, q0 = q.real, q0.real
            uy, ux = obj.inverse(ys, xs, q)  # material points seen at each pixel and time
            region = img[:, :, y0:y1, x0:x1]
            for sdf, colour in obj.parts(uy, ux):
                region += (np.broadcast_to(colour, region.shape) - region) * _cover(sdf)[None]
            # The still (t = 0): which pixels show this object, and where their material points go.
            uy0, ux0 = obj.inverse(ys, xs, q0)
            cov0 = np.zeros(uy0.shape[1:])
            for sdf, _ in obj.parts(uy0, ux0):
                cov0 = np.maximum(cov0, _cover(sdf[0] * np.ones_like(cov0)))
            mine = cov0 >= 0.5
            mask[y0:y1, x0:x1][mine] = i + 1
            py, px = obj.forward(uy0 * np.ones((1, 1, x1 - x0)), ux0 * np.ones((1, y1 - y0, 1)), q)
            d = disp[:, :, y0:y1, x0:x1]
            d[0][:, mine] = (px - xs)[:, mine]
            d[1][:, mine] = (py - ys)[:, mine]  # a nearer object drawn later overwrites mask and displacement
        return {"x": np.clip(img, -1.0, 1.0).astype(np.float32), "displacement": disp, "mask": mask}

    def render(self, index: int, times: Sequence[float] | np.ndarray) -> dict:
        """``x`` (3, N, S, S) and ``displacement`` (2, N, S, S) of scene ``index`` at frame ``times``."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.n}")
        out = self._render(self._scene(index), np.asarray(times, dtype=np.float64))
        return {
            "x": torch.from_numpy(out["x"]),
            "displacement": torch.from_numpy(out["displacement"].astype(np.float32)),
            "mask": torch.from_numpy(out["mask"]),
        }

    def _caption(self, scene: dict) -> tuple[str, str]:
        counts = {k: sum(p["kind"] == k for p in scene["params"]) for k in OBJECTS}
        words = [f"{_NUMBERS[c] if c < len(_NUMBERS) else c} {k}{'s' if c > 1 else ''}" for k, c in counts.items() if c]
        things = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        return f"{things} swaying in the wind", things

    def video(self, index: int) -> dict:
        scene = self._scene(index)
        out = self._render(scene, np.arange(self.frames, dtype=np.float64))
        disp = torch.from_numpy(out["displacement"])  # float64 for the FFT
        x = torch.from_numpy(out["x"])
        caption, things = self._caption(scene)
        ps = scene["params"]
        return {
            "x": x,
            "still": x[:, 0].clone(),
            "displacement": disp.float(),
            "spectral_volume": spectral_volume(disp, self.num_freqs).float(),
            "mask": torch.from_numpy(out["mask"]),
            "caption": caption,
            "frame_caption": things,
            "object_type": torch.tensor([OBJECTS.index(p["kind"]) for p in ps], dtype=torch.long),
            "frequency": torch.tensor(np.stack([p["f"] for p in ps]), dtype=torch.float32),
            "damping": torch.tensor(np.stack([p["zeta"] for p in ps]), dtype=torch.float32),
            "amplitude": torch.tensor([p["amp"] for p in ps], dtype=torch.float32),
            "wind_frequency": torch.tensor(scene["wind"][0], dtype=torch.float32),
            "loop": torch.tensor(self.loop),
        }
