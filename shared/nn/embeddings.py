"""Embeddings: sinusoidal time embedding (Vaswani et al. 2017, as used by DDPM's U-Net), the MLP on top of it,
and class-label embeddings with a null class for classifier-free guidance."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times → (B, dim) features ``[cos(t w_i), sin(t w_i)]`` with geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by Linear–SiLU–Linear (DDPM / ADM)."""

    def __init__(self, freq_dim: int, out_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim))


class LabelEmbedding(nn.Module):
    """Class embedding table with one extra row, index ``num_classes``, for the null label (CFG)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if (y < 0).any() or (y > self.num_classes).any():
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null label)")
        return self.table(y)
