"""Learning-rate schedule pieces for ``torch.optim.lr_scheduler.LambdaLR`` (picklable, Hydra-instantiable)."""
from __future__ import annotations


class LRFactor:
    """Base of the multiplicative LR factors ``step -> float`` (a stored config may name its subclasses)."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class LinearWarmup(LRFactor):
    """Factor rising linearly from 0 to 1 over ``warmup_steps``, then constant (DDPM's 5000-step warm-up)."""

    def __init__(self, warmup_steps: int):
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        self.warmup_steps = max(1, int(warmup_steps))

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)
