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
        ema_named = dict(self.model.named_parameters())
        src_named = dict(model.named_parameters())
        if ema_named.keys() != src_named.keys():  # e.g. LoRA injected after the EMA copy was made
            diff = sorted(ema_named.keys() ^ src_named.keys())
            raise RuntimeError(f"EMA copy and model have different parameters ({len(diff)}, e.g. {diff[:3]}); "
                               "build the EMA after changing the model's structure")
        names = list(ema_named)
        torch._foreach_lerp_([ema_named[n] for n in names], [src_named[n].detach() for n in names], 1.0 - d)
        src_buffers = dict(model.named_buffers())
        for name, eb in self.model.named_buffers():
            eb.copy_(src_buffers[name])
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True):  # the EMA copy always stays in eval mode
        super().train(False)
        return self
