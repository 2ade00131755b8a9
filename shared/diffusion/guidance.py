"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6).

``guided = uncond + w * (cond - uncond)`` on the network output; ``w = 1`` is the conditional model,
``w = 0`` the unconditional one (DiT's ``cfg scale`` uses this convention). Which keywords are conditional and
what their null values are is the conditioning seam's business (:mod:`shared.methods.conditions`: the null
class of labels, the empty caption of text, zeros of tensors); here only the arithmetic.

``w`` may vary over the frames of a video (Stable Video Diffusion ramps it linearly from the first frame to the
last): :func:`guidance_weight` turns a number, a per-frame list, or ``[w_first, w_last]`` into something that
broadcasts against the output.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["cfg_kwargs_net", "guidance_weight", "check_guidance_scale", "is_unit_guidance"]


def check_guidance_scale(scale) -> None:
    """One-line error unless ``scale`` is a finite number or a non-empty list of finite numbers."""
    values = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    try:
        ok = bool(values) and all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"guidance_scale must be a finite number or a list of them (per frame, or "
                         f"[first, last] for a linear ramp), got {scale!r}")


def is_unit_guidance(scale) -> bool:
    if isinstance(scale, (list, tuple)):
        return all(float(v) == 1.0 for v in scale)
    if isinstance(scale, torch.Tensor):
        return bool((scale == 1.0).all())
    return float(scale) == 1.0


def guidance_weight(scale, like: torch.Tensor) -> float | torch.Tensor:
    """A float, or a ``(1, 1, T, 1, 1)`` tensor of per-frame weights for a video ``like`` (B, C, T, H, W): a list
    of ``T`` values, or two values ``[first, last]`` interpolated linearly over the ``T`` frames."""
    if not isinstance(scale, (list, tuple)):
        return float(scale)
    values = [float(v) for v in scale]
    if like.dim() != 5:
        if len(set(values)) == 1:
            return values[0]
        raise ValueError(f"a per-frame guidance_scale {values} needs video samples (B, C, T, H, W), "
                         f"got shape {tuple(like.shape)}")
    frames = like.shape[2]
    if len(values) == 2 and frames != 2:
        w = torch.linspace(values[0], values[1], frames)
    elif len(values) == frames:
        w = torch.tensor(values)
    else:
        raise ValueError(f"guidance_scale has {len(values)} values for {frames} frames: give one number, "
                         f"[first, last] or one per frame")
    return w.to(like.device, like.dtype).reshape(1, 1, frames, 1, 1)


def cfg_kwargs_net(net: Callable[..., torch.Tensor], cond: dict, uncond: dict,
                   scale: float | Sequence[float]) -> Callable:
    """A network function ``f(x, t_net)`` guided between the keyword conditions ``cond`` and ``uncond`` (the
    same keys; tensors with the batch first, or lists): labels ``y``, text ``context``, ...

    Conditional and unconditional passes run as one batch of 2B."""
    if set(cond) != set(uncond):
        raise ValueError(f"conditional keys {sorted(cond)} and unconditional keys {sorted(uncond)} differ")

    def cat(a, b):
        return torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]

    def guided(x: torch.Tensor, t_net: torch.Tensor, **kw) -> torch.Tensor:
        if is_unit_guidance(scale):
            return net(x, t_net, **cond, **kw)
        both = {k: cat(cond[k], uncond[k]) for k in cond}
        out = net(torch.cat([x, x]), torch.cat([t_net, t_net]), **both, **kw)
        c, u = out.chunk(2)
        return u + guidance_weight(scale, x) * (c - u)

    return guided
