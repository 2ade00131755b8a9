"""Exponential moving average of a model's weights (DDPM uses decay 0.9999).

The EMA copy is an ``nn.Module`` attribute of the LightningModule, so it is saved and restored with every
checkpoint. ``warmup`` uses ``min(decay, (1 + n) / (10 + n))`` for the first updates (a common choice for
short runs; off by default, as in the papers).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        super().__init__()
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = list(self.model.parameters())
        src_p = list(model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in src_p], 1.0 - d)
        for eb, sb in zip(self.model.buffers(), model.buffers()):
            eb.copy_(sb)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True):  # the EMA copy always stays in eval mode
        super().train(False)
        return self
