"""Structured noise priors over the frames of a video: what ``eps`` (training) and ``x_T`` (sampling) are drawn from.

A diffusion model of videos ``(B, C, T, H, W)`` normally draws ``eps`` i.i.d. per frame. The priors here keep
every frame's marginal ``N(0, I)`` (so an image model applied frame by frame sees the noise it was trained on)
but correlate the frames; the covariance between frames ``i`` and ``j`` at the same pixel and channel is
:meth:`NoisePrior.frame_covariance` ``[i, j]`` (pixels and channels stay independent).

* :class:`IIDNoise` — independent frames (covariance ``I``).
* :class:`MixedNoise` — PYoCo's *mixed* prior (Ge et al., ICCV 2023, Sec. 3.2, Eq. 4): one shared draw
  ``eps_shared ~ N(0, alpha^2/(1+alpha^2) I)`` plus per-frame ``eps_ind^i ~ N(0, 1/(1+alpha^2) I)``; covariance
  ``1`` on the diagonal and ``alpha^2 / (1 + alpha^2)`` off it.
* :class:`ProgressiveNoise` — PYoCo's *progressive* (autoregressive) prior (Eq. 5): ``eps^0 ~ N(0, I)``,
  ``eps^i = alpha/sqrt(1+alpha^2) eps^{i-1} + eps_ind^i`` with ``eps_ind^i ~ N(0, 1/(1+alpha^2) I)``; covariance
  ``(alpha / sqrt(1 + alpha^2))^|i - j|``.
* :class:`BaseResidualNoise` — VideoFusion's decomposition (Luo et al., CVPR 2023, Sec. 3.1, Eq. 4-5):
  ``eps^i = sqrt(lambda^i) b + sqrt(1 - lambda^i) r^i`` with a *base* ``b ~ N(0, I)`` shared by the clip and
  per-frame *residuals* ``r^i ~ N(0, I)``; ``lambda^i = lam`` except ``lambda^key = 1`` for the key frame
  (``key_frame``, the middle frame ``ceil(T/2)`` in the paper, 0-based ``(T - 1) // 2``; ``None``: no key frame).
  :meth:`BaseResidualNoise.sample_parts` returns ``(b, r)`` for the two-network loss. Covariance
  ``sqrt(lambda^i lambda^j)`` off the diagonal. ``MixedNoise(alpha)`` is ``BaseResidualNoise(alpha^2/(1+alpha^2))``
  without key frame; both are kept, each named as its paper writes it.

Each prior is an ``nn.Module`` without parameters (so a stored config may name it) with
``sample(shape, generator, device, dtype)``; a 4-D shape (images) or ``T = 1`` gives i.i.d. noise. The method layer
draws ``x_T`` and the training ``eps`` from ``module.noise_prior`` (:class:`shared.methods.diffusion_module.
DiffusionModule`). The per-step noise of ancestral samplers (DDPM, DDIM with ``eta > 0``) stays i.i.d.; the
deterministic DDIM sampler (``eta = 0``) uses only ``x_T``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["NoisePrior", "IIDNoise", "MixedNoise", "ProgressiveNoise", "BaseResidualNoise",
           "empirical_frame_covariance"]

FRAME_AXIS = 2


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


class NoisePrior(nn.Module):
    """Base: ``sample(shape, ...)`` and the stated ``frame_covariance(T)``."""

    def sample(self, shape, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5 or shape[FRAME_AXIS] == 1:
            return _randn(shape, generator, device, dtype)
        return self._sample_video(shape, generator, device, dtype)

    def _sample_video(self, shape, generator, device, dtype) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def frame_covariance(self, frames: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, shape, generator=None, device=None, dtype=torch.float32):
        return self.sample(shape, generator, device, dtype)


class IIDNoise(NoisePrior):
    def _sample_video(self, shape, generator, device, dtype):
        return _randn(shape, generator, device, dtype)

    def frame_covariance(self, frames: int) -> torch.Tensor:
        return torch.eye(int(frames), dtype=torch.float64)


def _check_alpha(alpha) -> float:
    a = float(alpha)
    if not (math.isfinite(a) and a >= 0):
        raise ValueError(f"noise prior alpha must be a finite number >= 0, got {alpha!r}")
    return a


class MixedNoise(NoisePrior):
    """PYoCo's mixed noise (module docstring); ``alpha = 0`` is i.i.d."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def _sample_video(self, shape, generator, device, dtype):
        a2 = self.alpha ** 2
        shared_shape = list(shape)
        shared_shape[FRAME_AXIS] = 1
        shared = _randn(shared_shape, generator, device, dtype) * math.sqrt(a2 / (1 + a2))
        ind = _randn(shape, generator, device, dtype) * math.sqrt(1 / (1 + a2))
        return shared + ind

    def frame_covariance(self, frames: int) -> torch.Tensor:
        a2 = self.alpha ** 2
        c = torch.full((int(frames), int(frames)), a2 / (1 + a2), dtype=torch.float64)
        return c.fill_diagonal_(1.0)


class ProgressiveNoise(NoisePrior):
    """PYoCo's progressive (autoregressive) noise (module docstring); ``alpha = 0`` is i.i.d."""

    def __init__(self, alpha: float = 2.0):
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    @property
    def rho(self) -> float:
        return self.alpha / math.sqrt(1 + self.alpha ** 2)

    def _sample_video(self, shape, generator, device, dtype):
        ind = _randn(shape, generator, device, dtype) * math.sqrt(1 / (1 + self.alpha ** 2))
        frames = [_randn(ind[:, :, 0].shape, generator, device, dtype)]
        for i in range(1, shape[FRAME_AXIS]):
            frames.append(self.rho * frames[-1] + ind[:, :, i])
        return torch.stack(frames, dim=FRAME_AXIS)

    def frame_covariance(self, frames: int) -> torch.Tensor:
        idx = torch.arange(int(frames), dtype=torch.float64)
        return self.rho ** (idx[:, None] - idx[None, :]).abs()


class BaseResidualNoise(NoisePrior):
    """VideoFusion's base + residual decomposition (module docstring)."""

    def __init__(self, lam: float = 0.5, key_frame: str | int | None = "middle"):
        super().__init__()
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"base-noise ratio lambda must lie in [0, 1], got {lam!r}")
        if not (key_frame is None or key_frame == "middle" or isinstance(key_frame, int)):
            raise ValueError(f"key_frame must be 'middle', a frame index or null, got {key_frame!r}")
        self.lam, self.key_frame = lam, key_frame

    def extra_repr(self) -> str:
        return f"lam={self.lam}, key_frame={self.key_frame}"

    def key_index(self, frames: int) -> int | None:
        """0-based index of the key frame (``ceil(T/2)`` 1-based for ``"middle"``), or None."""
        if self.key_frame is None:
            return None
        k = (int(frames) - 1) // 2 if self.key_frame == "middle" else int(self.key_frame)
        if not 0 <= k < frames:
            raise ValueError(f"key_frame {self.key_frame} is outside the clip's {frames} frames")
        return k

    def lambdas(self, frames: int) -> torch.Tensor:
        """Per-frame ``lambda^i`` (T,): ``lam`` everywhere, 1 at the key frame."""
        lam = torch.full((int(frames),), self.lam, dtype=torch.float64)
        k = self.key_index(frames)
        if k is not None:
            lam[k] = 1.0
        return lam

    def sample_parts(self, shape, generator=None, device=None, dtype=torch.float32):
        """``(b, r)``: the base ``(B, C, 1, H, W)`` and the residuals ``(B, C, T, H, W)``, both standard normal."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5:
            raise ValueError(f"base/residual noise needs video shapes (B, C, T, H, W), got {shape}")
        base_shape = list(shape)
        base_shape[FRAME_AXIS] = 1
        return _randn(base_shape, generator, device, dtype), _randn(shape, generator, device, dtype)

    def combine(self, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``sqrt(lambda^i) b + sqrt(1 - lambda^i) r^i``."""
        lam = self.lambdas(r.shape[FRAME_AXIS]).to(r.device, r.dtype).view(1, 1, -1, 1, 1)
        return lam.sqrt() * b + (1 - lam).sqrt() * r

    def _sample_video(self, shape, generator, device, dtype):
        return self.combine(*self.sample_parts(shape, generator, device, dtype))

    def frame_covariance(self, frames: int) -> torch.Tensor:
        s = self.lambdas(frames).sqrt()
        c = s[:, None] * s[None, :]
        return c.fill_diagonal_(1.0)


def empirical_frame_covariance(eps: torch.Tensor) -> torch.Tensor:
    """(T, T) covariance between frames of ``eps`` (B, C, T, H, W), every (sample, channel, pixel) one observation
    (zero mean assumed, as the priors are)."""
    if eps.dim() != 5:
        raise ValueError(f"expected (B, C, T, H, W) noise, got shape {tuple(eps.shape)}")
    z = eps.double().transpose(1, 2).reshape(eps.shape[0], eps.shape[2], -1)  # (B, T, C*H*W)
    z = z.transpose(0, 1).reshape(eps.shape[2], -1)  # (T, N)
    return z @ z.T / z.shape[1]
