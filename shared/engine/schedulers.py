"""Learning-rate schedule pieces for ``torch.optim.lr_scheduler.LambdaLR`` (picklable, Hydra-instantiable)."""
from __future__ import annotations


class LinearWarmup:
    """Factor rising linearly from 0 to 1 over ``warmup_steps``, then constant (DDPM's 5000-step warm-up)."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = max(1, int(warmup_steps))

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)
