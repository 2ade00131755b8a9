"""Sliced Wasserstein-2 distance between point clouds (Rabin et al., 2011; Bonneel et al., 2015).

    SW2(a, b) = ( E_theta[ W2^2(theta . a, theta . b) ] )^{1/2},   theta uniform on the sphere,

estimated with ``num_projections`` directions drawn from ``seed`` (the same directions for every
call with that seed, so distances are comparable across runs). Each 1D W2 compares quantile
functions: for equal sizes that is the sorted projections pairwise; for unequal sizes both sorted
projections are linearly interpolated at the same ``max(n, m)`` mid-point quantile levels
``(k + 1/2) / K``, which for equal sizes is exactly the sorted pairing.

A pure translation by ``s`` gives ``SW2 = |s| / sqrt(d)`` (as E[(theta . s)^2] = |s|^2 / d).
Used for the 2D toy distributions of rectified flow, where the point clouds are the data.
"""

from __future__ import annotations

import torch

__all__ = ["random_directions", "sliced_wasserstein"]


def random_directions(dim: int, num_projections: int, seed: int = 0) -> torch.Tensor:
    """``(num_projections, dim)`` float64 unit vectors, uniform on the sphere, from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randn(num_projections, dim, generator=g, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def _quantiles(sorted_x: torch.Tensor, k: int) -> torch.Tensor:
    # Linear interpolation of each column's empirical quantile function at levels (j + 1/2) / k.
    n = sorted_x.shape[0]
    if n == k:
        return sorted_x
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).unsqueeze(1)
    return sorted_x[lo] * (1 - w) + sorted_x[hi] * w


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 distance between point clouds ``a (n, d)`` and ``b (m, d)`` (float64 inside)."""
    a, b = torch.as_tensor(a).detach().cpu().double(), torch.as_tensor(b).detach().cpu().double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 1:
        raise ValueError(
            f"expected (n, d) and (m, d) point clouds, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    theta = random_directions(a.shape[1], num_projections, seed)
    pa = (a @ theta.T).sort(dim=0).values
    pb = (b @ theta.T).sort(dim=0).values
    k = max(len(a), len(b))
    w2_squared = (_quantiles(pa, k) - _quantiles(pb, k)).pow(2).mean(dim=0)  # one per direction
    return float(w2_squared.mean().sqrt())
