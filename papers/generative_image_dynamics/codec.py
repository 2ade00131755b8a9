"""The spectral volume's way into the diffusion model's space (GID Sec. 4.2): normalisation, then the VAE.

Generative Image Dynamics normalises every spectral volume before its latent diffusion model sees it
(Sec. 4.2, "frequency adaptive normalization", Eq. 4: ``S'_k = sign(S_k) sqrt(|S_k / s_k|)`` with ``s_k`` the 95th
percentile of the training magnitudes at frequency ``k``) and encodes it with a VAE, each frequency band on its own
(the encoder maps the ``4``-channel map of one band to a latent; the ``K`` bands form the latent volume the U-Net
denoises, Fig. 3). :class:`SpectralCodec` is that pair as one frozen "autoencoder" for the project's latent
wrapper (`shared.methods.latent_module`, `shared.diffusion.latent.LatentSpace`):

    encode(S) = E(normalize(S))        decode(z) = denormalize(D(z))

with ``S`` laid out as a video ``(B, 4, K, H, W)`` (channels Re x, Im x, Re y, Im y; the bands on the time axis, so
`shared.nn.autoencoder.AutoencoderKL` encodes band by band). Without an autoencoder (``autoencoder=None``, the
CPU claims) the model works on the normalised volume itself; the normaliser is `shared.data.spectral
.SpectralNormalizer` (frequency-adaptive, or one global linear scale for the ablation).

The normaliser's scales are fitted on training volumes: pass ``scale`` (K numbers, what the claim pipelines do from
their whole training set) or leave it ``None`` with ``fit_on_first_batch=True`` to fit on the first encoded batch
(like LDM's ``scale_by_std``); encoding with neither raises.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shared.data.spectral import SpectralNormalizer
from shared.nn.autoencoder import DiagonalGaussian

__all__ = ["SpectralCodec", "to_video_layout", "from_video_layout"]


def to_video_layout(volume: torch.Tensor) -> torch.Tensor:
    """``(..., K, 4, H, W)`` (`shared.data.spectral`) -> ``(..., 4, K, H, W)`` (bands on the time axis)."""
    return volume.transpose(-4, -3)


def from_video_layout(x: torch.Tensor) -> torch.Tensor:
    """``(..., 4, K, H, W)`` -> ``(..., K, 4, H, W)``; the inverse of `to_video_layout`."""
    return x.transpose(-4, -3)


class SpectralCodec(nn.Module):
    """Normaliser + optional per-band VAE as one frozen autoencoder (module docstring).

    Args:
        num_freqs: K.
        per_frequency, power, percentile: the normaliser (`SpectralNormalizer`): frequency-adaptive = ``True, 0.5,
            95``; the global ablation = ``False, 1.0, 95``.
        scale: fitted scales (K,), or None.
        fit_on_first_batch: fit the scales on the first batch encoded when none are given.
        autoencoder: an ``AutoencoderKL`` with 4 input channels (paper scale), or None (the normalised volume is
            the diffusion space).
    """

    in_channels = 4

    def __init__(self, num_freqs: int, per_frequency: bool = True, power: float = 0.5, percentile: float = 95.0,
                 scale: Sequence[float] | None = None, fit_on_first_batch: bool = False,
                 autoencoder: nn.Module | None = None):
        super().__init__()
        self.normalizer = SpectralNormalizer(num_freqs, per_frequency, power, percentile,
                                             None if scale is None else torch.as_tensor(list(scale)))
        self.fit_on_first_batch = bool(fit_on_first_batch)
        self.autoencoder = autoencoder
        if autoencoder is not None and int(getattr(autoencoder, "in_channels", 4)) != 4:
            raise ValueError(f"SpectralCodec: the autoencoder must take 4 channels (Re x, Im x, Re y, Im y), got "
                             f"{autoencoder.in_channels}")
        self.num_freqs = int(num_freqs)

    @property
    def latent_channels(self) -> int:
        return 4 if self.autoencoder is None else int(self.autoencoder.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 1 if self.autoencoder is None else int(self.autoencoder.downsample_factor)

    def _check(self, x: torch.Tensor, what: str, channels: int) -> None:
        if x.dim() != 5 or x.shape[1] != channels or x.shape[2] != self.num_freqs:
            raise ValueError(f"SpectralCodec.{what}: expected (B, {channels}, K={self.num_freqs}, H, W), got "
                             f"{tuple(x.shape)}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw volume ``(B, 4, K, H, W)`` -> normalised, same layout."""
        self._check(x, "normalize", 4)
        if not bool(self.normalizer.fitted):
            if not self.fit_on_first_batch:
                raise RuntimeError("SpectralCodec: the normaliser has no scales; pass scale=[...] (K values) or "
                                   "fit_on_first_batch=true")
            self.normalizer.fit(from_video_layout(x))
        return to_video_layout(self.normalizer.normalize(from_video_layout(x)))

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, "denormalize", 4)
        return to_video_layout(self.normalizer.denormalize(from_video_layout(z)))

    def encode(self, x: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        n = self.normalize(x)
        if self.autoencoder is None:
            return DiagonalGaussian(n, torch.zeros_like(n), deterministic=True)
        return self.autoencoder.encode(n, chunk_size)

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        n = z if self.autoencoder is None else self.autoencoder.decode(z, chunk_size)
        return self.denormalize(n)

    def extra_repr(self) -> str:
        return f"num_freqs={self.num_freqs}, autoencoder={'none' if self.autoencoder is None else 'kl'}"
