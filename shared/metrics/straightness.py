"""Straightness of a flow (Liu, Gong & Liu, ICLR 2023, Sec. 2.2 / Eq. 4):

    S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_t/dt ||^2 dt,

zero exactly when every path is a straight line travelled at constant speed (then one Euler step is exact).
Computed from a discretised trajectory ``Z_{t_0}, ..., Z_{t_K}`` (``t_0 = 0`` start, ``t_K = 1`` end, the
paper's time): on each segment the velocity is the finite difference, which for an Euler trajectory is
the network's velocity at the segment's start — the left-point rule of the integral. The squared norm
sums over all dimensions of a sample (as the paper); ``per_dim=True`` divides by the dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def straightness(
    trajectory: Sequence[torch.Tensor] | torch.Tensor,
    times: torch.Tensor | None = None,
    per_dim: bool = False,
) -> float:
    """``S(Z)`` of a trajectory of ``K + 1`` states ``(B, ...)`` from start to end.

    ``times``: the ``K + 1`` paper times (ascending, from 0 to 1); default evenly spaced. Time is
    normalised to ``[0, 1]`` so ``S`` does not depend on the direction or length of the time axis.
    """
    z = torch.stack(list(trajectory)) if not isinstance(trajectory, torch.Tensor) else trajectory
    z = z.double().flatten(2)  # (K+1, B, D)
    k = z.shape[0] - 1
    if k < 1:
        raise ValueError("a trajectory needs at least two states")
    if times is None:
        times = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    times = torch.as_tensor(times, dtype=torch.float64)
    times = (times - times[0]) / (times[-1] - times[0])
    dt = (times[1:] - times[:-1]).to(z.device)  # (K,)
    vel = (z[1:] - z[:-1]) / dt[:, None, None]  # (K, B, D)
    chord = (z[-1] - z[0])[None]  # (1, B, D)
    err = ((chord - vel) ** 2).sum(-1).mean(-1)  # (K,) E over batch
    s = float((err * dt).sum())
    return s / z.shape[-1] if per_dim else s
