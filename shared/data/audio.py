"""Frame-aligned audio features for the talking-head world and readers (EMO, Tian et al. 2024).

EMO (Sec. 3.2, audio layers) encodes speech with a pretrained wav2vec and gives each video frame the
features of a window of ``m`` frames on either side, concatenated, so a frame's audio condition sees
the sound just before and after it. `AudioFrameFeatures` does exactly that alignment for any
per-time feature:

- Frame ``t`` of a clip owns the audio samples ``[start + t * spf, start + (t + 1) * spf)``, ``spf =
  sample_rate / fps`` (an integer; configs pick rates that divide).
- The features are sampled ``k = spf / hop`` times per frame, at the centres ``start + (t * k + i +
  1/2) * hop``, ``i < k``: frame t's feature columns are centred on t's own samples.
- Frame t gets the columns of frames ``t - context .. t + context``: ``(2 context + 1) * k`` columns,
  centred on frame t's centre ``start + (t + 1/2) * spf``. Audio outside the signal is silence (zeros).

Two feature sources: a log-mel spectrogram (default; `mel_filterbank` + `log_mel_spectrogram`: a
Hann-windowed ``torch.stft`` of ``n_fft`` samples and a triangular mel filter bank on the HTK mel
scale, ``log(mel power + eps)``), or a pretrained speech encoder given as ``encoder`` (the
`SpeechEncoder` interface; `Wav2Vec2Features` reads a local wav2vec 2.0 folder, no download): its
per-step features are linearly interpolated to the same centres.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

__all__ = [
    "AudioFrameFeatures",
    "SpeechEncoder",
    "Wav2Vec2Features",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "padded_slice",
]


def hz_to_mel(f):
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular mel filters (n_fft // 2 + 1, n_mels) on the STFT bins ``k * sample_rate / n_fft``.

    Filter ``j`` rises linearly from centre ``j - 1`` to 1 at centre ``j`` and falls to 0 at centre
    ``j + 1``, the ``n_mels + 2`` centres evenly spaced in mel between ``f_min`` and ``f_max`` (default
    Nyquist); peaks are 1 (no area normalisation), so neighbouring filters sum to 1 between the first
    and last centres."""
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min=}, {f_max=}, {sample_rate=}")
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    centres = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = centres[:-2], centres[1:-1], centres[2:]
    rise = (freqs[:, None] - lo) / (mid - lo)
    fall = (hi - freqs[:, None]) / (hi - mid)
    return torch.from_numpy(np.clip(np.minimum(rise, fall), 0.0, None).astype(np.float32))


def log_mel_spectrogram(
    frames_wave: torch.Tensor, n_fft: int, hop: int, filters: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``log(mel power + eps)`` (n_mels, J) of the STFT frames ``[j * hop, j * hop + n_fft)`` of a 1-D wave
    (no centring padding: the caller pads so frame j is where it wants it)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=frames_wave.dtype)
    spec = torch.stft(frames_wave, n_fft, hop_length=hop, window=window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (n_fft // 2 + 1, J)
    return torch.log(filters.T @ power + eps)


def padded_slice(wave: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``wave[lo:hi]`` of a 1-D signal, with zeros (silence) where the range leaves the signal."""
    out = wave.new_zeros(hi - lo)
    a, b = max(lo, 0), min(hi, wave.shape[0])
    if b > a:
        out[a - lo : b - lo] = wave[a:b]
    return out


class SpeechEncoder(Protocol):
    """A pretrained speech encoder: ``encoder(wave (S,) at sample_rate) -> (J, D)`` features, feature j
    centred at sample ``offset + j * hop`` of the wave."""

    sample_rate: int
    hop: float
    offset: float
    dim: int

    def __call__(self, wave: torch.Tensor) -> torch.Tensor: ...


class AudioFrameFeatures:
    """Per-video-frame windows of audio features (module docstring).

    Args:
        sample_rate, fps: audio and video rates; ``sample_rate / fps`` must be an integer.
        n_mels, n_fft, hop: the log-mel features (``hop`` even, dividing the samples per frame).
        context: frames on each side in a frame's window (EMO's ``m``).
        f_min, f_max, eps: mel band edges and the log floor.
        encoder: a `SpeechEncoder` to use instead of the mel spectrogram (its ``sample_rate`` must match).

    ``features(wave, start, num_frames)`` -> (T, D, window) with D = n_mels (or ``encoder.dim``) and
    window = ``(2 context + 1) * spf / hop``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        fps: int = 25,
        n_mels: int = 40,
        n_fft: int = 512,
        hop: int = 160,
        context: int = 2,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
        encoder: SpeechEncoder | None = None,
    ):
        self.sample_rate, self.fps = int(sample_rate), int(fps)
        if self.sample_rate % self.fps:
            raise ValueError(f"sample_rate / fps must be an integer (samples per frame), got {sample_rate} / {fps}")
        self.samples_per_frame = self.sample_rate // self.fps
        self.hop, self.n_fft, self.context = int(hop), int(n_fft), int(context)
        if self.hop % 2 or self.samples_per_frame % self.hop:
            raise ValueError(
                f"hop must be even and divide the {self.samples_per_frame} samples per frame, got hop={hop}"
            )
        if self.n_fft < self.hop or self.n_fft % 2:
            raise ValueError(f"n_fft must be even and >= hop={hop}, got {n_fft}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.per_frame = self.samples_per_frame // self.hop
        self.window = (2 * self.context + 1) * self.per_frame
        self.encoder = encoder
        if encoder is not None and int(encoder.sample_rate) != self.sample_rate:
            raise ValueError(f"encoder expects {encoder.sample_rate} Hz audio, features are at {self.sample_rate} Hz")
        self.n_mels = int(n_mels)
        self.dim = self.n_mels if encoder is None else int(encoder.dim)
        self.eps = float(eps)
        self.filters = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)

    def column_centres(self, start: int, num_frames: int) -> np.ndarray:
        """Sample positions (T, window) (half-integers) on which frame t's feature columns are centred."""
        j = np.arange(-self.context * self.per_frame, (num_frames + self.context) * self.per_frame)
        centres = start + (j + 0.5) * self.hop
        idx = np.arange(num_frames)[:, None] * self.per_frame + np.arange(self.window)[None]
        return centres[idx]

    def __call__(self, wave: torch.Tensor, start: int = 0, num_frames: int | None = None) -> torch.Tensor:
        """Features (T, D, window) of frames ``0..num_frames-1`` of a clip starting at sample ``start``."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.ndim != 1:
            raise ValueError(f"wave must be 1-D (mono samples), got shape {tuple(wave.shape)}")
        spf = self.samples_per_frame
        T = (wave.shape[0] - start) // spf if num_frames is None else int(num_frames)
        c, k = self.context, self.per_frame
        lo = start - c * spf  # first sample of the first context frame
        hi = start + (T + c) * spf
        if self.encoder is None:
            # Column j of the STFT covers [lo + j hop - (n_fft - hop) / 2, ... + n_fft): centred at lo + (j + 1/2) hop.
            half = (self.n_fft - self.hop) // 2
            seg = padded_slice(wave, lo - half, hi + half)
            cols = log_mel_spectrogram(seg, self.n_fft, self.hop, self.filters, self.eps)  # (n_mels, (T + 2c) k)
        else:
            seg = padded_slice(wave, lo, hi)
            with torch.no_grad():
                feats = torch.as_tensor(self.encoder(seg), dtype=torch.float32)  # (J, D)
            want = (np.arange((T + 2 * c) * k) + 0.5) * self.hop  # centres relative to lo
            pos = torch.from_numpy((want - float(self.encoder.offset)) / float(self.encoder.hop)).float()
            pos = pos.clamp(0, feats.shape[0] - 1)
            i0 = pos.floor().long().clamp(max=feats.shape[0] - 1)
            i1 = (i0 + 1).clamp(max=feats.shape[0] - 1)
            w = (pos - i0.float())[:, None]
            cols = ((1 - w) * feats[i0] + w * feats[i1]).T  # (D, (T + 2c) k)
        return cols.unfold(1, self.window, k).permute(1, 0, 2).contiguous()  # (T, D, window)


class Wav2Vec2Features:
    """`SpeechEncoder` over a local wav2vec 2.0 checkpoint folder (Baevski et al. 2020; EMO's audio encoder).

    ``path`` is a Hugging Face style folder (``config.json`` + weights) read with ``transformers``
    offline (``local_files_only``); nothing is downloaded. ``layer``: which hidden state (-1 the last).
    The feature rate and centre come from the convolutional feature encoder (product of the strides;
    half its receptive field). Input is normalised to zero mean and unit variance when ``normalize``.
    """

    def __init__(self, path: str, layer: int = -1, normalize: bool = True, sample_rate: int = 16000):
        p = Path(path).expanduser()
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"wav2vec 2.0 folder with config.json not found: '{p}' (set its config key)")
        try:
            from transformers import Wav2Vec2Model
        except ImportError as e:  # pragma: no cover - transformers is a dev dependency
            raise ImportError("Wav2Vec2Features needs the 'transformers' package (pip install transformers)") from e
        self.model = Wav2Vec2Model.from_pretrained(str(p), local_files_only=True).eval()
        cfg = self.model.config
        self.layer, self.normalize, self.sample_rate = int(layer), bool(normalize), int(sample_rate)
        self.hop = float(math.prod(cfg.conv_stride))
        rf, jump = 1, 1
        for kernel, stride in zip(cfg.conv_kernel, cfg.conv_stride):
            rf += (kernel - 1) * jump
            jump *= stride
        self.offset = (rf - 1) / 2
        self.dim = int(cfg.hidden_size)

    @torch.no_grad()
    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(wave, dtype=torch.float32)[None]
        if self.normalize:
            x = (x - x.mean()) / (x.std() + 1e-7)
        out = self.model(x, output_hidden_states=self.layer != -1)
        h = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return h[0]
