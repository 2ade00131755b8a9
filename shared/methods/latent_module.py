"""Latent diffusion as a wrapper of any diffusion module (Rombach et al. 2022, Sec. 3.2).

``latent_module_class(Base)`` is ``Base`` trained and sampled in a frozen :class:`~shared.diffusion.latent.LatentSpace`
held as ``self.latent`` (saved with the checkpoint): pixel batches are encoded before the base module's loss
(cached latents, marked ``is_latent``, pass through), every image-like condition (declared ``latent=True``: a
reference frame, a first frame) is encoded the same way, and samples are decoded
(``sample(..., decode=False)`` returns latents). ``latent_diffusion(latent, base=..., **kwargs)`` is the Hydra
target of ``conf/module/latent_diffusion.yaml``.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from shared.diffusion.latent import LatentSpace
from shared.nn.build import buildable

__all__ = ["latent_module_class", "latent_diffusion"]

_CLASSES: dict[type, type] = {}


def latent_module_class(base: type | str) -> type:
    """``Latent<Base>``: the module class ``base`` (a ``DiffusionModule`` subclass or its dotted path) trained
    and sampled in a :class:`LatentSpace` held as ``self.latent`` (frozen, saved with the checkpoint)."""
    from shared.methods.diffusion_module import DiffusionModule

    if isinstance(base, str):
        mod, _, name = base.rpartition(".")
        base = getattr(importlib.import_module(mod), name)
    if not (isinstance(base, type) and issubclass(base, DiffusionModule)):
        raise ValueError(f"latent_diffusion: base must be a DiffusionModule subclass, got {base!r}")
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Latent{base.__name__}", (_LatentMixin, base), {"__module__": __name__})
    return _CLASSES[base]


@buildable
def latent_diffusion(latent: LatentSpace, base: type | str = "shared.methods.diffusion_module.DiffusionModule",
                     **kwargs):
    """Build ``latent_module_class(base)(latent=latent, **kwargs)``; ``kwargs`` are the base module's
    arguments."""
    return latent_module_class(base)(latent=latent, **kwargs)


class _LatentMixin:
    """Encodes pixel batches (and latent conditions) before the base module's loss and decodes its samples."""

    def __init__(self, *args, latent: LatentSpace, **kwargs):
        super().__init__(*args, **kwargs)
        self.latent = latent

    def encode_pixels(self, x: torch.Tensor, what: str, generator: torch.Generator | None = None) -> torch.Tensor:
        want = self.latent.autoencoder.in_channels
        if x.shape[1] != want:
            raise ValueError(f"{what} has {x.shape[1]} channels, the autoencoder takes {want}; cached latents "
                             "must carry the 'is_latent' key (LatentCache)")
        return self.latent.encode(x.to(self.device), generator)

    def to_latent(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        if "is_latent" in batch:
            return batch
        return {**batch, "x": self.encode_pixels(batch["x"], "pixel batch", generator)}

    def prepare_cond(self, cond: Mapping, generator: torch.Generator | None = None) -> Mapping:
        keys = [c.key for c in self.conditions.values() if c.latent and cond.get(c.key) is not None]
        if not keys:
            return cond
        return {**cond, **{k: self.encode_pixels(cond[k], f"condition {k!r}") for k in keys}}

    def on_train_batch_start(self, batch, batch_idx):
        if not self.latent.fitted:  # LDM's scale_by_std: 1/std of the first batch's latents, rank 0's value
            value = self.latent.fit_scale_factor(batch["x"])
            value = self.trainer.strategy.broadcast(value, src=0) if self._trainer is not None else value
            self.latent.set_scale_factor(value)
        return super().on_train_batch_start(batch, batch_idx)

    def training_loss(self, batch: dict, generator: torch.Generator):
        return super().training_loss(self.to_latent(batch, generator), generator)

    @torch.no_grad()
    def sample(self, *args, decode: bool = True, **kwargs) -> torch.Tensor:
        z = super().sample(*args, **kwargs)
        return self.latent.decode(z) if decode else z
