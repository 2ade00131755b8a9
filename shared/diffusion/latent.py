"""Latent diffusion: run any diffusion module in an autoencoder's latent space (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.2 and App. D.1 / G).

* :class:`LatentSpace` — a frozen autoencoder plus the latent scale: ``z = scale · (E(x) - shift)`` and
  ``x = D(z / scale + shift)``. The scale is given (SD-1.x: 0.18215), taken from the autoencoder
  (``scale_factor=None``), or computed from data as ``1 / std`` of the latents (``scale_factor="data"``,
  LDM's ``scale_by_std``: fitted on the first training batch, stored as a buffer so checkpoints keep it).
  The posterior's mode (default) or a sample is used. ``chunk_size`` encodes/decodes in slices (VAE
  slicing; outputs unchanged). Videos ``(B, C, T, H, W)`` are encoded frame by frame.
* :class:`LatentCache` — a dataset whose items are the latents of another dataset's ``x``, encoded once
  (batched, no grad), other fields kept: ``{"x": latent, "y": ..., "is_latent": True}``.

Modules trained in a latent space (any ``DiffusionModule`` subclass: DDPM, flow, EDM, DiT, ...) are the method
layer's :mod:`shared.methods.latent_module` (``latent_diffusion``), built on :class:`LatentSpace`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared.nn.autoencoder import DiagonalGaussian

__all__ = ["LatentSpace", "LatentCache", "latent_std"]


def latent_std(latents: torch.Tensor) -> float:
    return float(latents.detach().flatten().float().std())


class LatentSpace(nn.Module):
    """A frozen autoencoder seen as a (scaled) latent space.

    Args:
        autoencoder: anything with ``encode(x, chunk_size) -> DiagonalGaussian`` and ``decode(z, chunk_size)``
            (``shared.nn.autoencoder.AutoencoderKL``).
        scale_factor: a float; ``None`` = ``autoencoder.scaling_factor`` (1 if it has none); ``"data"`` =
            ``1 / std`` of the latents, fitted by :meth:`fit_scale_factor` (before that, encode raises).
        shift_factor: subtracted before scaling (SD3/Flux-style VAEs; None = 0).
        sample_posterior: encode to a posterior sample instead of its mode.
        chunk_size: VAE slicing — at most this many images per encoder/decoder call.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        scale_factor: float | str | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
        chunk_size: int | None = None,
    ):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        if scale_factor is None:
            scale_factor = getattr(autoencoder, "scaling_factor", None) or 1.0
        if shift_factor is None:
            shift_factor = getattr(autoencoder, "shift_factor", None) or 0.0
        if isinstance(scale_factor, str) and scale_factor != "data":
            raise ValueError(f"scale_factor must be a number, null or 'data', got {scale_factor!r}")
        self.register_buffer(
            "scale", torch.tensor(math.nan if scale_factor == "data" else float(scale_factor))
        )
        self.register_buffer("shift", torch.tensor(float(shift_factor)))
        self.sample_posterior, self.chunk_size = sample_posterior, chunk_size

    def train(self, mode: bool = True):  # the autoencoder stays frozen in eval mode
        return super().train(False)

    @property
    def fitted(self) -> bool:
        return bool(torch.isfinite(self.scale))

    @property
    def scale_factor(self) -> float:
        return float(self.scale)

    def latent_channels(self) -> int:
        return int(self.autoencoder.latent_channels)

    def latent_shape(self, pixel_shape: Iterable[int]) -> tuple[int, ...]:
        """(C, [T,] H, W) pixels → (c, [T,] h, w) latents."""
        c, *rest = pixel_shape
        f = self.autoencoder.downsample_factor
        return (self.latent_channels(), *rest[:-2], rest[-2] // f, rest[-1] // f)

    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return self.autoencoder.encode(x, chunk_size=self.chunk_size)

    @torch.no_grad()
    def encode_unscaled(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool | None = None
    ) -> torch.Tensor:
        post = self.posterior(x)
        return (
            post.sample(generator) if (self.sample_posterior if sample is None else sample) else post.mode()
        )

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool | None = None
    ) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(
                "LatentSpace(scale_factor='data') is not fitted yet: call fit_scale_factor(batch)"
            )
        return (self.encode_unscaled(x, generator, sample) - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(
                "LatentSpace(scale_factor='data') is not fitted yet: call fit_scale_factor(batch)"
            )
        return self.autoencoder.decode(z / self.scale + self.shift, chunk_size=self.chunk_size)

    @torch.no_grad()
    def fit_scale_factor(
        self, x: torch.Tensor | Iterable, max_batches: int = 1, generator: torch.Generator | None = None
    ) -> float:
        """Set ``scale = 1 / std(latents - shift)`` from a pixel batch (LDM) or the first ``max_batches``
        batches (tensors or ``{"x": ...}`` dicts) of an iterable."""
        if isinstance(x, torch.Tensor):
            z = self.encode_unscaled(x, generator)
        else:
            zs = []
            for i, b in enumerate(x):
                if i >= max_batches:
                    break
                b = b["x"] if isinstance(b, dict) else b
                zs.append(self.encode_unscaled(b.to(self.scale.device), generator))
            z = torch.cat(zs)
        self.set_scale_factor(1.0 / latent_std(z - self.shift))
        return self.scale_factor

    def set_scale_factor(self, value: float) -> None:
        self.scale.fill_(float(value))


class LatentCache(Dataset):
    """The latents of ``dataset[i]["x"]``, encoded once.

    Items are ``{"x": z_i, <the other fields>, "is_latent": True}``.

    ``autoencoder`` is a :class:`LatentSpace` (its scale is used; a ``"data"`` one is fitted on the cached
    latents) or an autoencoder (wrapped with ``scale_factor``, default ``"data"``). Videos are encoded frame
    by frame. With ``sample_posterior`` each item caches *one* posterior draw (seeded by ``seed``).
    """

    def __init__(
        self,
        dataset: Dataset,
        autoencoder: nn.Module,
        batch_size: int = 64,
        scale_factor: float | str | None = "data",
        sample_posterior: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        self.space = (
            autoencoder
            if isinstance(autoencoder, LatentSpace)
            else LatentSpace(autoencoder, scale_factor, sample_posterior=sample_posterior)
        )
        device = torch.device(device) if device is not None else self.space.scale.device
        g = torch.Generator(device=device).manual_seed(seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        zs, extras = [], []
        for batch in loader:
            zs.append(self.space.encode_unscaled(batch["x"].to(device), g, sample_posterior or None).cpu())
            extras.append({k: v for k, v in batch.items() if k not in ("x", "is_latent")})
        z = torch.cat(zs)
        if not self.space.fitted:
            self.space.set_scale_factor(1.0 / latent_std(z - self.space.shift.cpu()))
        self.latents = (z - float(self.space.shift)) * self.space.scale_factor
        self.extras = {
            k: (
                torch.cat([e[k] for e in extras])
                if isinstance(extras[0][k], torch.Tensor)
                else [v for e in extras for v in e[k]]
            )
            for k in (extras[0] if extras else {})
        }

    @property
    def scale_factor(self) -> float:
        return self.space.scale_factor

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"x": self.latents[i], **{k: v[i] for k, v in self.extras.items()}, "is_latent": True}
