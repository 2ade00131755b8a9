"""A time-conditioned MLP for low-dimensional data (2D toys): the network of the rectified-flow toy
experiments (Liu et al. 2023, Sec. 5.1 use a small fully-connected net), with the U-Net's calling
convention ``net(x, t_net, y=None)`` so every loss and sampler of the shared core uses it unchanged.

``x`` is ``(B, dim)``; the sinusoidal embedding of ``t_net`` (and an optional class embedding with a null
class for classifier-free guidance) is mapped to ``emb_dim`` and concatenated to the input of every
hidden layer.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.nn.embeddings import LabelEmbedding, TimestepEmbedding


class TimeMLP(nn.Module):
    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.time_embed = TimestepEmbedding(emb_dim, emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        self.layers = nn.ModuleList()
        width = dim
        for _ in range(depth):
            self.layers.append(nn.Linear(width + emb_dim, hidden))
            width = hidden
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    @property
    def null_label(self) -> int | None:
        return self.label_embed.null_label if self.label_embed is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}) points, got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label_embed.null_label, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels were given to a TimeMLP built without num_classes")
        h = x
        for layer in self.layers:
            h = self.act(layer(torch.cat([h, emb], dim=1)))
        return self.out(h)
