"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6).

``guided = uncond + w * (cond - uncond)`` on the network output; ``w = 1`` is the conditional model,
``w = 0`` the unconditional one (DiT's ``cfg scale`` uses this convention). The null condition is the
extra class index ``null_label`` (label dropout during training, see :func:`drop_labels`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def drop_labels(y: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (training-time condition dropout)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def cfg_net(net: Callable[..., torch.Tensor], y: torch.Tensor, null_label: int, scale: float) -> Callable:
    """A network function ``f(x, t_net)`` that applies CFG with labels ``y`` at ``scale``.

    Conditional and unconditional passes run as one batch of 2B.
    """

    def guided(x: torch.Tensor, t_net: torch.Tensor, **kw) -> torch.Tensor:
        if scale == 1.0:
            return net(x, t_net, y=y, **kw)
        null = torch.full_like(y, null_label)
        out = net(torch.cat([x, x]), torch.cat([t_net, t_net]), y=torch.cat([y, null]), **kw)
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided
