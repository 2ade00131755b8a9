"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6).

``guided = uncond + w * (cond - uncond)`` on the network output; ``w = 1`` is the conditional model,
``w = 0`` the unconditional one (DiT's ``cfg scale`` uses this convention). The null condition is the
extra class index ``null_label`` (label dropout during training, see :func:`drop_labels`); for text it is the
empty caption's encoding (``shared.nn.text_encoder``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def drop_labels(y: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (training-time condition dropout)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Each caption replaced by the empty (null) caption with probability ``p`` (training-time dropout)."""
    captions = list(captions)
    if p <= 0:
        return captions
    drop = torch.rand(len(captions), generator=generator, device=generator.device if generator else "cpu") < p
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def cfg_kwargs_net(net: Callable[..., torch.Tensor], cond: dict, uncond: dict, scale: float) -> Callable:
    """A network function ``f(x, t_net)`` guided between the keyword conditions ``cond`` and ``uncond`` (the
    same keys; tensors with the batch first): labels ``y``, text ``context``, ...

    Conditional and unconditional passes run as one batch of 2B."""
    if set(cond) != set(uncond):
        raise ValueError(f"conditional keys {sorted(cond)} and unconditional keys {sorted(uncond)} differ")

    def guided(x: torch.Tensor, t_net: torch.Tensor, **kw) -> torch.Tensor:
        if scale == 1.0:
            return net(x, t_net, **cond, **kw)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        out = net(torch.cat([x, x]), torch.cat([t_net, t_net]), **both, **kw)
        c, u = out.chunk(2)
        return u + scale * (c - u)

    return guided


def cfg_net(net: Callable[..., torch.Tensor], y: torch.Tensor, null_label: int, scale: float) -> Callable:
    """A network function ``f(x, t_net)`` that applies CFG with labels ``y`` at ``scale``."""
    return cfg_kwargs_net(net, {"y": y}, {"y": torch.full_like(y, null_label)}, scale)
