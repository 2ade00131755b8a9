"""Spectral volumes: per-pixel motion trajectories in the temporal Fourier domain (Generative Image Dynamics).

Generative Image Dynamics (Li, Tucker, Snavely & Holynski, CVPR 2024) represents the motion of a scene
seen in a still ``I0`` as a *motion texture* ``F = (F_t)``: ``F_t(p)`` is the 2D displacement of the
still's pixel ``p`` at time ``t`` (Sec. 4.1). Its temporal FFT, truncated to the ``K`` lowest frequencies,
is the *spectral volume* ``S(p) = FFT(F(p))`` (Eq. 2): ``4K`` scalars per pixel (real and imaginary
parts of the x and y coefficients at each frequency). A diffusion model predicts ``S`` from ``I0``, an
inverse FFT turns it back into trajectories (Sec. 5), and a renderer splats ``I0`` along them
(`shared.nn.splatting`).

Conventions used throughout the project:

- Displacements are ``(..., 2, T, H, W)`` in pixels, channel 0 = x (columns, to the right), channel 1 =
  y (rows, downward) — the optical-flow order of RAFT, softmax splatting and ``grid_sample``.
- A spectral volume is ``(..., K, 4, H, W)``: frequency bin ``k = 0..K-1`` (``k / T`` cycles per frame
  for an analysis window of ``T`` frames), channels ``(Re x, Im x, Re y, Im y)``. `flatten_volume` gives
  the paper's ``4K``-channel map.
- The FFT is normalised by ``1 / T`` (``norm="forward"``), so a coefficient is a per-frame amplitude
  that does not grow with the window: ``A cos(2 pi k t / T + phi)`` gives ``|S_k| = A / 2``. Then
  ``F_t = Re S_0 + sum_{k>=1} w_k Re(S_k exp(2 pi i k t / T))`` with ``w_k = 2`` (``1`` at the Nyquist
  bin ``k = T/2``) — `trajectories` evaluates this at any times, so one volume renders any horizon: times
  beyond ``T`` repeat with period ``T`` (a loop), fractional times give slow motion. With all bins
  (``K = T//2 + 1``) the round trip is exact; with fewer it is exact for signals band-limited to them.

This module lives in ``shared.data`` because it is part of the data representation: the oscillating-scenes
world (`shared.data.oscillating_scenes`) and the real-video reader (`shared.data.spectral_videos`) compute
ground-truth volumes with it, and ``shared.data`` depends on nothing model-side; the paper's model imports
it from here. `SpectralNormalizer` is an ``nn.Module`` so that its fitted scales travel in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

__all__ = [
    "SpectralNormalizer",
    "flatten_volume",
    "frequency_bins",
    "motion_importance",
    "spectral_volume",
    "trajectories",
    "unflatten_volume",
]


def _check_freqs(num_freqs: int, frames: int) -> None:
    if not 1 <= num_freqs <= frames // 2 + 1:
        raise ValueError(
            f"num_freqs must lie in [1, frames // 2 + 1 = {frames // 2 + 1}] for {frames} frames, got {num_freqs}"
        )


def spectral_volume(displacement: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """Trajectories ``(..., 2, T, H, W)`` -> spectral volume ``(..., K, 4, H, W)`` (GID Eq. 2, module docstring).

    The FFT runs in float64; the result has the input's floating dtype.
    """
    if displacement.ndim < 4 or displacement.shape[-4] != 2:
        raise ValueError(f"displacement must be (..., 2, T, H, W), got shape {tuple(displacement.shape)}")
    T = displacement.shape[-3]
    _check_freqs(int(num_freqs), T)
    spec = torch.fft.rfft(displacement.double(), dim=-3, norm="forward")[..., :num_freqs, :, :]  # (...,2,K,H,W)
    out = torch.stack([spec.real, spec.imag], dim=-3)  # (..., 2, K, 2, H, W): (component, k, re/im)
    out = out.movedim(-5, -4).flatten(-4, -3)  # (..., K, 4, H, W) with channels (Re x, Im x, Re y, Im y)
    dtype = displacement.dtype if displacement.is_floating_point() else torch.float32
    return out.to(dtype)


def trajectories(volume: torch.Tensor, period: int, times: int | Iterable[float] | torch.Tensor) -> torch.Tensor:
    """Spectral volume ``(..., K, 4, H, W)`` -> trajectories ``(..., 2, N, H, W)`` at ``times`` (module docstring).

    Args:
        volume: the K lowest bins of a ``period``-frame analysis window.
        period: ``T`` of that window (the bin ``k`` is ``k / period`` cycles per frame).
        times: ``N`` (the frames ``0..N-1``; ``N > period`` loops) or explicit frame times, fractional allowed.
    """
    if volume.ndim < 4 or volume.shape[-3] != 4:
        raise ValueError(f"volume must be (..., K, 4, H, W), got shape {tuple(volume.shape)}")
    K = volume.shape[-4]
    period = int(period)
    _check_freqs(K, period)
    dev = volume.device
    if isinstance(times, int):
        t = torch.arange(times, dtype=torch.float64, device=dev)
    else:
        t = torch.as_tensor(times if isinstance(times, torch.Tensor) else list(times), dtype=torch.float64).to(dev)
    k = torch.arange(K, dtype=torch.float64, device=dev)
    w = torch.full((K,), 2.0, dtype=torch.float64, device=dev)
    w[0] = 1.0
    if period % 2 == 0 and K - 1 == period // 2:
        w[-1] = 1.0  # the Nyquist bin is its own conjugate
    angle = 2 * math.pi * t[:, None] * k[None, :] / period  # (N, K)
    cos, sin = torch.cos(angle) * w, torch.sin(angle) * w
    v = volume.double()
    re = v[..., :, 0::2, :, :]  # (..., K, 2, H, W): Re x, Re y
    im = v[..., :, 1::2, :, :]
    out = torch.einsum("nk,...kchw->...cnhw", cos, re) - torch.einsum("nk,...kchw->...cnhw", sin, im)
    return out.to(volume.dtype if volume.is_floating_point() else torch.float32)


def frequency_bins(period: int, num_freqs: int) -> torch.Tensor:
    """The frequencies (cycles per frame) of the ``num_freqs`` bins of a ``period``-frame window: ``k / period``."""
    _check_freqs(int(num_freqs), int(period))
    return torch.arange(num_freqs, dtype=torch.float64) / period


def flatten_volume(volume: torch.Tensor) -> torch.Tensor:
    """``(..., K, 4, H, W)`` -> the paper's ``(..., 4K, H, W)`` map (channel ``4k + c``)."""
    return volume.flatten(-4, -3)


def unflatten_volume(volume: torch.Tensor) -> torch.Tensor:
    """``(..., 4K, H, W)`` -> ``(..., K, 4, H, W)``; the inverse of `flatten_volume`."""
    if volume.shape[-3] % 4:
        raise ValueError(f"a flattened spectral volume has 4K channels, got {volume.shape[-3]}")
    return volume.unflatten(-3, (volume.shape[-3] // 4, 4))


def motion_importance(displacement: torch.Tensor) -> torch.Tensor:
    """GID Sec. 5's splatting weight ``W(p) = (1/T) sum_t ||F_t(p)||_2``: ``(..., 2, T, H, W)`` -> ``(..., 1, H, W)``.

    Large motion is taken to be foreground, so it wins where splatted pixels collide.
    """
    return displacement.norm(dim=-4).mean(dim=-3).unsqueeze(-3)


class SpectralNormalizer(torch.nn.Module):
    """Invertible normalisation of spectral volumes for diffusion training (GID Sec. 4.2, Eq. 4).

    ``normalize(S) = sign(S) * |S / s_k| ** power`` element-wise on the four real channels, and
    ``denormalize(z) = sign(z) * |z| ** (1 / power) * s_k`` exactly undoes it.

    - Frequency-adaptive normalisation (the paper's): ``per_frequency=True`` — ``s_k`` is the
      ``percentile``-th percentile of the coefficient magnitudes ``|S_k^x|, |S_k^y|`` (complex moduli) at
      bin ``k`` over the training volumes, and ``power < 1`` (the paper's square root, 0.5, at the
      95th percentile) pulls the coefficients away from zero so high frequencies are not lost.
    - The single global normalisation of the ablation: ``per_frequency=False, power=1`` — one linear scale
      (the same percentile pooled over all bins) for every frequency. The paper's "w/o adaptive norm."
      scales by the image size instead; a pooled percentile plays the same role (one linear scale) while
      keeping the values in the same range as the adaptive variant.

    Args:
        num_freqs: K.
        per_frequency: one scale per bin (True) or one pooled scale (False).
        power: exponent of the power transform (1 = linear).
        percentile: in (0, 100], used by `fit`.
    The scales are a buffer (saved with the model); `fit` sets them, or pass ``scale`` (K,) directly.
    """

    def __init__(
        self,
        num_freqs: int,
        per_frequency: bool,
        power: float,
        percentile: float,
        scale: torch.Tensor | None = None,
    ):
        super().__init__()
        if num_freqs < 1:
            raise ValueError(f"num_freqs must be >= 1, got {num_freqs}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power}")
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        self.num_freqs, self.per_frequency = int(num_freqs), bool(per_frequency)
        self.power, self.percentile = float(power), float(percentile)
        s = torch.ones(self.num_freqs, dtype=torch.float64) if scale is None else torch.as_tensor(scale).double()
        self._check_scale(s)
        self.register_buffer("scale", s.clone())
        self.register_buffer("fitted", torch.tensor(scale is not None))

    def _check_scale(self, s: torch.Tensor) -> None:
        if s.shape != (self.num_freqs,):
            raise ValueError(f"scale must have shape ({self.num_freqs},), got {tuple(s.shape)}")
        bad = torch.nonzero(~(s > 0) | ~torch.isfinite(s)).flatten().tolist()
        if bad:
            raise ValueError(
                f"spectral normaliser: scale must be positive and finite, bins {bad} have {s[bad].tolist()} "
                "(all-zero training motion at those frequencies?)"
            )

    @torch.no_grad()
    def fit(self, volumes: torch.Tensor | Iterable[torch.Tensor]) -> SpectralNormalizer:
        """Set the scales from training volumes: one tensor ``(N, K, 4, H, W)`` or an iterable of
        ``(..., K, 4, H, W)`` tensors (all magnitudes are held in memory; subsample large sets)."""
        chunks = [volumes] if isinstance(volumes, torch.Tensor) else list(volumes)
        if not chunks:
            raise ValueError("spectral normaliser: fit got no volumes")
        mags = []
        for v in chunks:
            if v.ndim < 4 or v.shape[-4:-2] != (self.num_freqs, 4):
                raise ValueError(
                    f"spectral normaliser: volumes must be (..., {self.num_freqs}, 4, H, W), got {tuple(v.shape)}"
                )
            v = v.detach().double().cpu().reshape(-1, self.num_freqs, 2, 2, *v.shape[-2:])
            m = torch.sqrt(v[:, :, :, 0] ** 2 + v[:, :, :, 1] ** 2)  # (N, K, 2, H, W) complex moduli of x, y
            mags.append(m.movedim(1, 0).reshape(self.num_freqs, -1))
        m = torch.cat(mags, dim=1).numpy()  # (K, values)
        if self.per_frequency:
            s = np.percentile(m, self.percentile, axis=1)
        else:
            s = np.full(self.num_freqs, np.percentile(m, self.percentile))
        s = torch.from_numpy(np.asarray(s, dtype=np.float64))
        self._check_scale(s)
        self.scale.copy_(s)
        self.fitted.fill_(True)
        return self

    def _scale(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.ndim < 4 or volume.shape[-4:-2] != (self.num_freqs, 4):
            raise ValueError(
                f"spectral normaliser: expected (..., {self.num_freqs}, 4, H, W), got {tuple(volume.shape)}"
            )
        if not bool(self.fitted):
            raise RuntimeError("spectral normaliser used before fit() (or a given scale)")
        return self.scale.to(volume.device, volume.dtype)[:, None, None, None]

    def normalize(self, volume: torch.Tensor) -> torch.Tensor:
        """``sign(S) |S / s_k| ** power`` (GID Eq. 4 with ``power = 1/2``)."""
        s = self._scale(volume)
        return torch.sign(volume) * (volume.abs() / s) ** self.power

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize`: ``sign(z) |z| ** (1 / power) * s_k``."""
        s = self._scale(z)
        return torch.sign(z) * z.abs() ** (1.0 / self.power) * s

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.normalize(volume)

    def extra_repr(self) -> str:
        return (
            f"num_freqs={self.num_freqs}, per_frequency={self.per_frequency}, power={self.power}, "
            f"percentile={self.percentile}"
        )
