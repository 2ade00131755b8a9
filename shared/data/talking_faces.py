"""Talking faces: an audio-driven face with identity, lip-sync ground truth and controllable head speed
(the EMO world).

EMO (Tian et al. 2024, "Emote Portrait Alive") generates a talking-head video from one reference
image and the speech audio alone: audio features of a window of frames around each frame enter
through audio-attention layers (Sec. 3.2), a face locator marks the face region, and speed layers
condition on the head's rotation speed (Sec. 3.2, "Speed Layers"). This world gives each of those a
ground truth at CPU scale.

Audio (``synth_speech``). A sequence of phoneme-like segments (``segment_seconds`` long): silence (prob
``silence_prob``), a fricative (prob 0.15: high-passed noise) or one of five vowels (a harmonic source
at the item's pitch, 90-220 Hz with a 5 Hz vibrato, shaped by the vowel's two formants). Every
segment has an amplitude envelope (a flat top with raised-cosine ramps over 30 % of the segment at
each end) whose peak is the segment's *openness* (a 1.0, o 0.8, e 0.75, u 0.55, i 0.5, fricative
0.15, silence 0) times an emphasis in [0.8, 1]; the wave is ``0.25 * envelope * carrier`` (carriers of
unit RMS), so the loudness follows the envelope.

The face follows the audio with a designed lag of ``lag_frames`` frames (default 1: the mouth moves
one frame after the sound): ``mouth_open[t] = envelope(c_t - lag * spf)`` exactly, ``c_t`` the centre
sample of frame t; ``mouth_width[t]`` is the segment's vowel width (i, e wide; o, u round) at the same
time; ``brow_raise`` the envelope smoothed over 0.3 s; ``audio_envelope[t] = envelope(c_t)``
(unlagged). Blinks (``eye_open``) are random, independent of the audio. Audio features
(`shared.data.audio.AudioFrameFeatures`): log-mel, or a pretrained speech encoder given as
``audio_encoder`` (EMO's wav2vec; read from a local path), windowed ``context`` frames either side.

Head motion. The head pose (yaw, pitch, roll, radians) travels along a closed Lissajous curve (random
phases per item), moving exactly ``speed`` radians (Euclidean norm of the pose change) every frame;
``speed`` is drawn per item from ``speed`` (low, high): the speed condition. With ``speed_segments = k > 1``
the speed varies within a clip, as EMO's per-frame speed does: the clip is cut at ``k - 1`` distinct frames drawn
uniformly from 1 .. T-1, each segment moves at its own speed drawn from ``speed``, and ``speed`` becomes per frame
(T,): frame t's is the speed of its segment (the step from frame t-1 to t moves exactly that far; frame 0 carries
the first segment's). The head keeps to its curve across a change, so only the rate changes.

Identities (``num_identities`` = N, default 12): clothing hue ``k / N``, bright for even ``k`` and dark for
odd (the strongest cue), hair colour
and style (short, long, fringe), skin tone, face width/height, lip colour: a pure function of ``k``.
Held out: ``k % 4 == 3`` (3, 7, 11 for N = 12) or ``heldout_identities``; ``identity_split`` ``"seen"``
/ ``"unseen"`` / ``"all"``. Item ``i`` shows identity ``pool[i % len(pool)]``; everything else is drawn
from ``(seed, split, i)``. The reference is the same identity at another head pose and mouth opening.
``random_appearance=True`` (training data for appearance *transfer*): every item gives identity ``k``'s face
(its width and height) a fresh appearance drawn from the same attribute families (`random_face_appearance`:
clothing hue uniform in [0, 1), bright or dark, skin tone, hair colour and style, lips from the skin), one per
item (clip and reference alike) from its own random stream, so the audio, mouth, blinks and head motion are those
of the fixed-appearance world and no appearance repeats; ``identity`` then names the face shape only. The fixed
identities (hues ``k / N``) are what the judge names and the held-out evaluation uses.

Rendering: flat-coloured ellipses and bars in face coordinates (rotated by roll; features shifted by
yaw and pitch), painted back to front at ``supersample``^2 samples per pixel and box-filtered
(`shared.data.raster`). ``face_mask`` is the face ellipse at pixel centres.

Item keys (S = T * samples_per_frame, D = n_mels or the encoder's width, W = (2 context + 1) *
samples_per_frame / hop):
    x (3, T, H, W); reference (3, H, W); audio (S,) float in [-1, 1] (frame t owns samples
    ``[t spf, (t + 1) spf)``); audio_features (T, D, W); mouth_open, mouth_width, eye_open, brow_raise,
    audio_envelope (T,) in [0, 1]; head_pose (T, 3); speed () (per frame (T,) with ``speed_segments > 1``);
    face_mask (T, H, W) bool; face_box (4,)
    normalised (x0, y0, x1, y1), the union of the face's boxes over the clip (EMO's face locator
    region); mouth_center (T, 2) normalised (x, y); identity (long); caption "person 3 talking". With
    ``frames_only=True``: one frame (renders only that frame), its ``spf`` audio samples, its feature
    window, the per-frame keys at that frame, and ``face_box`` that frame's box.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from shared.data.audio import AudioFrameFeatures, SpeechEncoder
from shared.data.puppets import HAIR_COLOURS, SKIN_TONES, _OneFrameWorld, heldout_identity_set
from shared.data.raster import box_downsample, sample_grid

__all__ = [
    "FaceIdentity",
    "MOUTH_INTERIOR",
    "PHONEMES",
    "TalkingFaces",
    "face_identity",
    "random_face_appearance",
    "synth_speech",
]

# name: (F1 Hz, F2 Hz, openness, mouth width); formants are textbook averages for adult speech.
PHONEMES = {
    "a": (730.0, 1090.0, 1.0, 0.75),
    "e": (530.0, 1840.0, 0.75, 0.95),
    "i": (270.0, 2290.0, 0.5, 1.0),
    "o": (570.0, 840.0, 0.8, 0.5),
    "u": (300.0, 870.0, 0.55, 0.4),
    "fricative": (0.0, 0.0, 0.15, 0.85),
    "silence": (0.0, 0.0, 0.0, 0.7),
}
_VOWELS = ("a", "e", "i", "o", "u")
# RGB in [0, 1]: the only colour in the world with green < 0.1 and red > 0.3 (skin, lips, hair, eyes,
# clothes and background all fail it), so "open mouth" pixels can be counted in generated frames.
MOUTH_INTERIOR = (0.5, 0.0, 0.08)


def synth_speech(
    rng: np.random.Generator,
    num_samples: int,
    sample_rate: int,
    segment_seconds: Sequence[float] = (0.06, 0.2),
    silence_prob: float = 0.2,
) -> dict:
    """Phoneme-like speech (module docstring). Returns per-sample ``wave``, ``envelope`` (= the mouth
    opening the face shows), ``width`` (mouth width), ``phoneme`` (index into ``PHONEMES``), and ``f0``."""
    names = list(PHONEMES)
    bounds, labels, peaks = [0], [], []
    while bounds[-1] < num_samples:
        n = max(2, int(round(rng.uniform(*segment_seconds) * sample_rate)))
        r = rng.random()
        name = "silence" if r < silence_prob else "fricative" if r < silence_prob + 0.15 else _VOWELS[rng.integers(5)]
        bounds.append(bounds[-1] + n)
        labels.append(names.index(name))
        peaks.append(PHONEMES[name][2] * rng.uniform(0.8, 1.0))
    seg = np.repeat(np.arange(len(labels)), np.diff(bounds))[:num_samples]
    pos = (np.arange(num_samples) - np.asarray(bounds)[seg]) / np.diff(bounds)[seg]  # in [0, 1) within the segment
    ramp = np.clip(np.minimum(pos, 1 - pos) / 0.3, 0.0, 1.0)
    envelope = np.asarray(peaks)[seg] * np.sin(0.5 * np.pi * ramp) ** 2
    labels = np.asarray(labels)[seg]
    width = np.array([PHONEMES[nm][3] for nm in names])[labels]
    # Voiced carrier: harmonics of a vibrato pitch, weighted by the vowel's formants, unit RMS per vowel.
    f0 = rng.uniform(90.0, 220.0)
    t = np.arange(num_samples) / sample_rate
    pitch = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    H = max(1, int(min(0.45 * sample_rate, 4000.0) // (f0 * 1.02)))  # up to 4 kHz (the formants lie below 2.3 kHz)
    h = np.arange(1, H + 1)
    weights = np.zeros((len(names), H))
    for j, nm in enumerate(names):
        F1, F2, _, _ = PHONEMES[nm]
        if nm in _VOWELS:
            w = np.exp(-0.5 * ((h * f0 - F1) / 90.0) ** 2) + 0.6 * np.exp(-0.5 * ((h * f0 - F2) / 120.0) ** 2)
            w += 0.05 / h
            weights[j] = w / np.sqrt(np.sum(w * w) / 2)
    carrier = np.zeros(num_samples)
    voiced = np.isin(labels, [names.index(v) for v in _VOWELS])
    if voiced.any():
        # float32: phases stay below ~2e3 rad in a clip, so the error is ~1e-4 rad per harmonic.
        sines = np.sin(phase[voiced, None].astype(np.float32) * h[None].astype(np.float32))  # (n_voiced, H)
        carrier[voiced] = np.einsum("nh,nh->n", sines, weights[labels[voiced]].astype(np.float32))
    fric = labels == names.index("fricative")
    if fric.any():
        noise = np.diff(rng.standard_normal(num_samples + 1))
        carrier[fric] = noise[fric] / np.sqrt(np.mean(noise**2))
    wave = np.clip(0.25 * envelope * carrier, -1.0, 1.0)
    return {"wave": wave.astype(np.float32), "envelope": envelope, "width": width, "phoneme": labels, "f0": f0}


@dataclass(frozen=True)
class FaceIdentity:
    index: int
    skin: np.ndarray
    hair: np.ndarray
    hair_style: int  # 0 short, 1 long, 2 fringe
    clothes: np.ndarray
    lips: np.ndarray
    width: float  # face semi-axes as fractions of the canvas
    height: float


def _clothes(hue: float, bright: bool) -> np.ndarray:
    # Saturation and value keep every channel >= 0.13: no clothes colour passes the mouth-interior test.
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, *((0.85, 0.9) if bright else (0.75, 0.55))), np.float32)


def _lips(skin: np.ndarray) -> np.ndarray:
    return (0.6 * skin + 0.4 * np.array([0.85, 0.35, 0.4])).astype(np.float32)


def face_identity(k: int, num_identities: int) -> FaceIdentity:
    """Identity ``k`` of ``num_identities`` (module docstring): a pure function of ``(k, N)``."""
    rng = np.random.default_rng([7920, int(k)])
    skin = SKIN_TONES[(3 * k + 1) % 4]
    return FaceIdentity(
        index=int(k),
        skin=skin,
        hair=HAIR_COLOURS[(3 * k) % 5],
        hair_style=int(k % 3),
        clothes=_clothes(k / num_identities, k % 2 == 0),
        lips=_lips(skin),
        width=float(0.24 * rng.uniform(0.9, 1.1)),
        height=float(0.30 * rng.uniform(0.92, 1.08)),
    )


def random_face_appearance(face: FaceIdentity, rng: np.random.Generator) -> FaceIdentity:
    """``face`` (its index, width and height kept) in an appearance drawn from ``face_identity``'s attribute
    families with every attribute independent and the clothing hue continuous (module docstring)."""
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    return replace(
        face,
        skin=skin,
        hair=HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))],
        hair_style=int(rng.integers(3)),
        clothes=_clothes(float(rng.uniform(0.0, 1.0)), bool(rng.random() < 0.5)),
        lips=_lips(skin),
    )


_LISSAJOUS_AMP = np.array([0.35, 0.15, 0.12])  # yaw, pitch, roll amplitudes (radians)
_LISSAJOUS_FREQ = np.array([1.0, 2.0, 1.0])


class TalkingFaces(_OneFrameWorld):
    """Audio-driven talking faces (module docstring).

    Args:
        n, frames, size, seed, split, frames_only: as the other worlds.
        num_identities, heldout_identities, identity_split: identities (module docstring).
        sample_rate, fps, n_mels, n_fft, hop, context: audio and its features (`AudioFrameFeatures`).
        audio_encoder: optional `SpeechEncoder` (e.g. `shared.data.audio.Wav2Vec2Features` of a local path).
        lag_frames: the mouth follows the audio envelope this many frames later (may be 0 or negative).
        speed: (low, high) head angular speed, radians per frame.
        segment_seconds, silence_prob: the speech segments.
        supersample: odd samples per pixel side. background: RGB in [0, 1].
        random_appearance: give each item's face a fresh random appearance (module docstring).
        head_travel: how far the head moves in the image per radian of yaw / pitch, as a multiple of the default
            (0.12 / 0.1 of the image side per radian); > 1 makes head motion visible at small sizes.
        speed_segments: speeds per clip (module docstring); 1 (default): one speed per clip, ``speed`` a scalar.
    """

    per_frame_keys = ("mouth_open", "mouth_width", "eye_open", "brow_raise", "audio_envelope", "head_pose",
                      "face_mask", "mouth_center", "audio_features")  # fmt: skip
    channel_time_keys = ()

    def __init__(
        self,
        n: int = 1024,
        frames: int = 16,
        size: int = 32,
        seed: int = 0,
        split: str = "train",
        num_identities: int = 12,
        heldout_identities: Sequence[int] | None = None,
        identity_split: str = "seen",
        sample_rate: int = 16000,
        fps: int = 25,
        n_mels: int = 40,
        n_fft: int = 512,
        hop: int = 160,
        context: int = 2,
        audio_encoder: SpeechEncoder | None = None,
        lag_frames: int = 1,
        speed: Sequence[float] = (0.01, 0.08),
        segment_seconds: Sequence[float] = (0.06, 0.2),
        silence_prob: float = 0.2,
        supersample: int = 3,
        background: Sequence[float] = (0.55, 0.6, 0.66),
        frames_only: bool = False,
        random_appearance: bool = False,
        head_travel: float = 1.0,
        speed_segments: int = 1,
    ):
        super().__init__(n, frames, size, seed, split, frames_only)
        if not isinstance(random_appearance, bool):
            raise ValueError(f"random_appearance must be true or false, got {random_appearance!r}")
        self.random_appearance = random_appearance
        if not float(head_travel) > 0:
            raise ValueError(f"head_travel must be > 0, got {head_travel!r}")
        self.head_travel = float(head_travel)
        if isinstance(speed_segments, bool) or not isinstance(speed_segments, int) or not 1 <= speed_segments <= max(
                frames, 1):
            raise ValueError(f"speed_segments must be an integer from 1 to frames ({frames}), got {speed_segments!r}")
        self.speed_segments = int(speed_segments)
        if self.speed_segments > 1:  # the speed is per frame: split with the clip's other per-frame keys
            self.per_frame_keys = (*type(self).per_frame_keys, "speed")
        self.features = AudioFrameFeatures(sample_rate, fps, n_mels, n_fft, hop, context, encoder=audio_encoder)
        self.sample_rate, self.fps = self.features.sample_rate, self.features.fps
        self.samples_per_frame = self.features.samples_per_frame
        self.lag_frames = int(lag_frames)
        self.speed = (float(speed[0]), float(speed[1]))
        if not 0 <= self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be 0 <= low <= high radians per frame, got {tuple(speed)}")
        self.segment_seconds = (float(segment_seconds[0]), float(segment_seconds[1]))
        if not 0 < self.segment_seconds[0] <= self.segment_seconds[1]:
            raise ValueError(f"segment_seconds must be 0 < low <= high, got {tuple(segment_seconds)}")
        self.silence_prob = float(silence_prob)
        if num_identities < 1:
            raise ValueError(f"num_identities must be >= 1, got {num_identities}")
        self.num_identities = int(num_identities)
        self.heldout_identities = heldout_identity_set(self.num_identities, heldout_identities)
        if identity_split not in ("seen", "unseen", "all"):
            raise ValueError(f"identity_split must be 'seen', 'unseen' or 'all', got {identity_split!r}")
        self.identity_split = identity_split
        self.identity_pool = tuple(
            k
            for k in range(self.num_identities)
            if identity_split == "all" or (identity_split == "unseen") == (k in self.heldout_identities)
        )
        if not self.identity_pool:
            raise ValueError(f"identity_split={identity_split!r} leaves no identities to draw from")
        if supersample < 1 or supersample % 2 == 0:
            raise ValueError(f"supersample must be an odd positive integer, got {supersample}")
        self.supersample = int(supersample)
        self.background = np.asarray(background, np.float32).reshape(3)
        self.identities = [face_identity(k, self.num_identities) for k in range(self.num_identities)]
        g = sample_grid(self.size, self.supersample)
        self._px, self._py = g[None, None, :], g[None, :, None]
        # Audio is synthesised with this many frames of margin on each side (feature context and lag).
        self.pad_frames = self.features.context + abs(self.lag_frames) + 1

    # -- ground truth ------------------------------------------------------------------------------------
    def head_poses(self, rng: np.random.Generator, speed, T: int) -> np.ndarray:
        """(T, 3) poses along a random Lissajous curve, each exactly ``speed`` (Euclidean, radians) from the last;
        ``speed`` is one number, or the T - 1 steps' own (step t - 1 -> t moves ``speed[t - 1]``).

        The curve is sampled densely (4096 points per period) and walked step by step: each pose is the
        first point of the polyline at distance ``speed`` from the previous pose."""
        steps = None
        if np.ndim(speed):
            steps = np.asarray(speed, dtype=np.float64)
            if steps.shape != (max(T - 1, 0),):
                raise ValueError(f"per-step speeds for {T} frames need {max(T - 1, 0)} values, got {steps.shape}")
            total = float(steps.sum() + steps.max()) if len(steps) else 0.0
        else:
            total = speed * T
        phases = rng.uniform(0, 2 * np.pi, size=3)
        periods = 1 + int(np.ceil(total / (4 * _LISSAJOUS_AMP[0])))  # the yaw alone travels 4 A per period
        u = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi * periods, 4096 * periods + 1)
        curve = _LISSAJOUS_AMP * np.sin(_LISSAJOUS_FREQ * u[:, None] + phases)
        out = np.empty((T, 3))
        out[0], j = curve[0], 0
        for t in range(1, T):
            prev = out[t - 1]
            if steps is not None:
                speed = float(steps[t - 1])
            if speed <= 0:
                out[t] = prev
                continue
            far = np.nonzero(np.linalg.norm(curve[j + 1 :] - prev, axis=1) >= speed)[0]
            if not len(far):
                raise RuntimeError(f"head path too short for speed {speed} over {T} frames")
            k = j + 1 + int(far[0])
            p0, d = curve[k - 1], curve[k] - curve[k - 1]
            a = p0 - prev  # |a| < speed <= |a + d|: solve |a + alpha d| = speed for alpha in [0, 1]
            ad, dd = float(a @ d), float(d @ d)
            alpha = (-ad + np.sqrt(max(ad * ad - dd * (float(a @ a) - speed * speed), 0.0))) / dd
            out[t], j = p0 + alpha * d, k - 1
        return out

    # -- rendering --------------------------------------------------------------------------------------------
    def render(self, who: FaceIdentity, pose: np.ndarray, mouth_open, mouth_width, eye_open, brow) -> dict:
        """Frames (3, T, H, W) in [-1, 1], face mask (T, H, W), mouth centre (T, 2) px for poses (T, 3)."""
        S, ss = self.size, self.supersample
        T = pose.shape[0]
        yaw, pitch, roll = (pose[:, i].astype(np.float32)[:, None, None] for i in range(3))
        mo, mw = (np.asarray(v, np.float32)[:, None, None] for v in (mouth_open, mouth_width))
        eo, br = (np.asarray(v, np.float32)[:, None, None] for v in (eye_open, brow))
        a, b = who.width * S, who.height * S
        cx = 0.5 * S + (0.12 * self.head_travel) * S * yaw
        cy = 0.44 * S + (0.1 * self.head_travel) * S * pitch
        rx, ry = self._px - cx, self._py - cy  # (T, 1, n), (T, n, 1)
        cr, sr = np.cos(roll), np.sin(roll)
        qx, qy = cr * rx + sr * ry, -sr * rx + cr * ry  # face coordinates (roll undone), (T, n, n)
        sx, sy = 0.55 * a * np.sin(yaw), 0.45 * b * np.sin(pitch)  # feature shift with the head turn
        a_face = a * (1 - 0.08 * np.abs(np.sin(yaw)))

        def ellipse(x0, y0, ax, by, X=qx, Y=qy):
            return ((X - x0) / ax) ** 2 + ((Y - y0) / by) ** 2 <= 1.0

        n = S * ss
        idx = np.zeros((T, n, n), np.int64)
        palette = [self.background]

        def paint(mask, colour):
            palette.append(np.asarray(colour, np.float32))
            idx[np.broadcast_to(mask, idx.shape)] = len(palette) - 1

        paint(ellipse(0.5 * S + 0.3 * (cx - 0.5 * S), 1.08 * S, 0.46 * S, 0.3 * S, self._px, self._py), who.clothes)
        neck = (np.abs(self._px - (0.5 * S + 0.5 * (cx - 0.5 * S))) < 0.1 * S) & (self._py > cy) & (self._py < 0.92 * S)
        paint(neck, who.skin * 0.85)
        if who.hair_style == 1:  # long hair, behind the face
            paint(ellipse(-0.2 * sx, 0.15 * b, 1.22 * a_face, 1.2 * b) & (qy < 0.7 * b), who.hair)
        face = ellipse(0.0, 0.0, a_face, b)
        paint(face, who.skin)
        line = -0.42 * b if who.hair_style != 2 else -0.22 * b  # a fringe comes further down
        paint(ellipse(-0.15 * sx, -0.04 * b, 1.08 * a_face, 1.06 * b) & (qy < line + 0.1 * sy), who.hair)
        eye_dx = 0.38 * a * np.cos(yaw)
        for side in (-1.0, 1.0):
            ex, ey = side * eye_dx + sx, -0.1 * b + sy
            paint(ellipse(ex, ey, 0.14 * a, 0.1 * b * eo + 0.025 * b), (0.08, 0.08, 0.1))
            brow_y = ey - 0.22 * b - 0.1 * b * br
            paint((np.abs(qx - ex) < 0.18 * a) & (np.abs(qy - brow_y) < 0.04 * b), who.hair * 0.7)
        paint(ellipse(1.15 * sx, 0.17 * b + sy, 0.08 * a, 0.1 * b), who.skin * 0.8)
        mx, my = sx, 0.52 * b + sy
        half_w, half_h = 0.36 * a * mw, 0.25 * b * mo
        paint(ellipse(mx, my, half_w + 0.05 * a, half_h + 0.05 * b), who.lips)
        paint(ellipse(mx, my, np.maximum(half_w, 1e-3), np.maximum(half_h, 1e-3)) & (mo > 0.02), MOUTH_INTERIOR)
        rgb = box_downsample(np.stack(palette)[idx], ss)
        centre = slice(ss // 2, None, ss)
        # Mouth centre back in image coordinates (undo the roll).
        mcx = cx[:, 0, 0] + cr[:, 0, 0] * mx[:, 0, 0] - sr[:, 0, 0] * my[:, 0, 0]
        mcy = cy[:, 0, 0] + sr[:, 0, 0] * mx[:, 0, 0] + cr[:, 0, 0] * my[:, 0, 0]
        return {
            "x": (rgb.transpose(3, 0, 1, 2) * 2 - 1).astype(np.float32),
            "face_mask": face[:, centre, centre].copy(),
            "mouth_center": np.stack([mcx, mcy], -1),
        }

    # -- items ----------------------------------------------------------------------------------------------------
    def video(self, index: int, only: int | None = None) -> dict:
        """Item ``index``; with ``only`` = t, frame t alone (per-frame keys with T = 1, its audio samples and
        features, and ``face_box`` that frame's box), the same values."""
        rng = self._rng(index)
        k = self.identity_pool[index % len(self.identity_pool)]
        who = self.identities[k]
        if self.random_appearance:  # its own stream: the audio, mouth and head draws stay those of the fixed world
            who = random_face_appearance(who, self._rng(index, stream=2))
        T, spf, P = self.frames, self.samples_per_frame, self.pad_frames
        speech = synth_speech(rng, (T + 2 * P) * spf, self.sample_rate, self.segment_seconds, self.silence_prob)
        centres = (P + np.arange(T)) * spf + spf // 2  # centre sample of each clip frame in the padded signal
        lagged = centres - self.lag_frames * spf
        env = speech["envelope"]
        smooth_n = max(1, int(0.3 * self.sample_rate))
        c = np.concatenate([[0.0], np.cumsum(env)])  # centred moving average over 0.3 s (zero outside)
        lo = np.clip(np.arange(len(env)) - smooth_n // 2, 0, len(env))
        brow = (c[np.clip(lo + smooth_n, 0, len(env))] - c[lo]) / smooth_n
        mouth_open, mouth_width = env[lagged], speech["width"][lagged]
        brow_raise = np.clip(1.5 * brow[lagged], 0.0, 1.0)
        eye_open = np.ones(T)
        if rng.random() < 0.35:  # one blink: half closed, closed, half closed
            t0 = int(rng.integers(-1, T))
            for dt, v in ((0, 0.5), (1, 0.0), (2, 0.5)):
                if 0 <= t0 + dt < T:
                    eye_open[t0 + dt] = v
        if self.speed_segments == 1:
            speed = float(rng.uniform(*self.speed))
            pose = self.head_poses(rng, speed, T)
        else:  # per-frame speeds: k segments cut at k - 1 distinct frames of 1 .. T-1
            rates = rng.uniform(*self.speed, size=self.speed_segments)
            cuts = np.sort(rng.choice(np.arange(1, T), size=self.speed_segments - 1, replace=False))
            speed = rates[np.searchsorted(cuts, np.arange(T), side="right")]  # frame t: its segment's speed
            pose = self.head_poses(rng, speed[1:], T)
        sel = slice(None) if only is None else slice(only, only + 1)
        if self.speed_segments > 1:
            speed = speed[sel]
        gt = [v[sel] for v in (pose, mouth_open, mouth_width, eye_open, brow_raise)]
        pose, mouth_open, mouth_width, eye_open, brow_raise = gt
        centres = centres[sel]
        out = self.render(who, *gt)
        # Reference: another pose on the curve, a random mouth, eyes open.
        ref_pose = self.head_poses(rng, 0.0, 1)
        ref = self.render(who, ref_pose, [rng.uniform(0, 0.6)], [0.7], [1.0], [0.3])["x"][:, 0]
        wave = torch.from_numpy(speech["wave"])
        first, count = (P, T) if only is None else (P + only, 1)
        features = self.features(wave, first * spf, count)
        mask = out["face_mask"]
        cols, rows = np.nonzero(mask.any(axis=(0, 1)))[0], np.nonzero(mask.any(axis=(0, 2)))[0]
        box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] if len(cols) else [0, 0, self.size, self.size]
        return {
            "x": torch.from_numpy(out["x"]),
            "reference": torch.from_numpy(ref),
            "audio": wave[first * spf : (first + count) * spf].clone(),
            "audio_features": features,
            "mouth_open": torch.tensor(mouth_open, dtype=torch.float32),
            "mouth_width": torch.tensor(mouth_width, dtype=torch.float32),
            "eye_open": torch.tensor(eye_open, dtype=torch.float32),
            "brow_raise": torch.tensor(brow_raise, dtype=torch.float32),
            "audio_envelope": torch.tensor(env[centres], dtype=torch.float32),
            "head_pose": torch.tensor(pose, dtype=torch.float32),
            "speed": torch.tensor(speed, dtype=torch.float32),
            "face_mask": torch.from_numpy(mask),
            "face_box": torch.tensor(box, dtype=torch.float32) / self.size,
            "mouth_center": torch.tensor(out["mouth_center"] / self.size, dtype=torch.float32),
            "identity": torch.tensor(k, dtype=torch.long),
            "caption": f"person {k} talking",
            "frame_caption": f"person {k}",
        }
