"""CLIP's image embedding of a reference image as cross-attention tokens: what Animate Anyone feeds to the denoiser's
cross-attention in place of the text embedding (Hu et al. 2024, Sec. 3.2; the public re-implementation uses
``sd-image-variations-diffusers/image_encoder``, a ViT-L/14 whose projected embedding has 768 dimensions — SD-1.5's
context width).

The image tower itself (layout, preprocessing, strict loading from a local folder) is
:class:`shared.nn.image_embedding.CLIPImageEncoder` — one implementation, shared with Gen-1's content embedding.
:class:`CLIPImageEmbedder` wraps it: images in [-1, 1] of any size -> ``(B, 1, projection_dim)`` context tokens,
frozen by default (Animate Anyone freezes it). Nothing is downloaded.
"""
from __future__ import annotations

import torch
from torch import nn

from shared.nn.build import buildable
from shared.nn.image_embedding import CLIPImageEncoder, load_clip_image_encoder

__all__ = ["CLIPImageEmbedder", "clip_image_encoder"]


class CLIPImageEmbedder(nn.Module):
    """Images in [-1, 1] -> ``(B, 1, projection_dim)`` context tokens (module docstring)."""

    def __init__(self, encoder: CLIPImageEncoder, frozen: bool = True):
        super().__init__()
        self.encoder, self.frozen = encoder, bool(frozen)
        if self.frozen:
            self.encoder.requires_grad_(False).eval()

    @property
    def context_dim(self) -> int:
        return self.encoder.projection_dim

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's normalised input of ``images`` in [-1, 1] (:meth:`CLIPImageEncoder.preprocess`)."""
        return self.encoder.preprocess(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.encoder(images)[:, None]


@buildable
def clip_image_encoder(weights: str | None = None, frozen: bool = True, **encoder_kwargs) -> CLIPImageEmbedder:
    """Hydra target: CLIP's image tower from a local folder or file (``weights``, loaded strictly by
    :func:`shared.nn.image_embedding.load_clip_image_encoder`) or a fresh one of ``encoder_kwargs``, as tokens."""
    encoder = load_clip_image_encoder(weights) if weights else CLIPImageEncoder(**encoder_kwargs)
    return CLIPImageEmbedder(encoder, frozen=frozen)
