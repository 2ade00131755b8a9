"""2D toy distributions, deterministic from a seed.

The toy worlds of rectified flow (Liu et al., 2022, "Flow Straight and Fast", Sec. 5.1 and
Fig. 2/3): a standard Gaussian source, multi-modal targets (two moons, eight Gaussians,
checkerboard, swiss roll) and a pair of two-mode mixtures for domain transfer
(``mixture_left`` -> ``mixture_right``, whose independent coupling makes straight paths cross,
the situation reflow untangles). Point sets follow FFJORD's toy generators in shape, rescaled so
every coordinate has a spread of roughly one.

``sample_toy(name, n, seed)`` is a pure function of its arguments; it draws from its own
``torch.Generator`` and never touches the global RNG.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

__all__ = ["TOY_NAMES", "sample_toy", "ToyDataset"]


def _gaussian(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=g)


def _two_moons(n: int, g: torch.Generator) -> torch.Tensor:
    # sklearn.datasets.make_moons geometry (noise 0.05), centred and scaled to ~unit spread.
    n_upper = n // 2
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    is_upper = (torch.arange(n) < n_upper).unsqueeze(1)
    x = torch.where(is_upper, upper, lower)
    x = x + 0.05 * torch.randn(n, 2, generator=g)
    x = x - torch.tensor([0.5, 0.25])
    return x / torch.tensor([0.87, 0.5])  # per-axis std of the clean moons -> unit spread


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    # Radius sqrt(2): each coordinate then has unit variance (E[cos^2] = 1/2).
    k = torch.randint(0, 8, (n,), generator=g).float()
    angle = k * (2 * math.pi / 8)
    centres = math.sqrt(2.0) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    # FFJORD's 4x4 checkerboard on [-2, 2]^2 (8 filled squares), scaled to [-sqrt3, sqrt3]^2 so
    # each coordinate has unit variance.
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * (math.sqrt(3.0) / 2)


def _swiss_roll(n: int, g: torch.Generator) -> torch.Tensor:
    # sklearn.datasets.make_swiss_roll projected on (x, z), noise 0.5, divided by 7 -> ~unit spread.
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (x + 0.5 * torch.randn(n, 2, generator=g)) / 7.0


def _two_mode_mixture(n: int, g: torch.Generator, x_centre: float) -> torch.Tensor:
    # Two equal-weight Gaussians stacked vertically at horizontal position x_centre.
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    centres = torch.stack([torch.full((n,), x_centre), sign * 1.0], dim=1)
    return centres + 0.25 * torch.randn(n, 2, generator=g)


_SAMPLERS = {
    "gaussian": _gaussian,
    "two_moons": _two_moons,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swiss_roll": _swiss_roll,
    # Domain-transfer pair: the same two-mode mixture on the left and on the right.
    "mixture_left": lambda n, g: _two_mode_mixture(n, g, -1.5),
    "mixture_right": lambda n, g: _two_mode_mixture(n, g, 1.5),
}
TOY_NAMES: tuple[str, ...] = tuple(_SAMPLERS)


def sample_toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of toy distribution ``name`` as a float32 ``(n, 2)`` tensor, a pure function
    of ``(name, n, seed)``."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {', '.join(TOY_NAMES)}")
    g = torch.Generator().manual_seed(int(seed))
    return _SAMPLERS[name](int(n), g).to(torch.float32).contiguous()


class ToyDataset(Dataset):
    """A fixed set of ``n`` toy points; items are ``{"x": (2,) tensor}``.

    With ``source`` set (e.g. ``source="mixture_left"``, ``name="mixture_right"``), each item
    also carries ``"source"``: a point of the source distribution drawn independently (seed
    ``seed + 1``), i.e. the independent coupling rectified flow starts from.
    """

    def __init__(self, name: str, n: int, seed: int = 0, source: str | None = None):
        self.name, self.source_name = name, source
        self.x = sample_toy(name, n, seed)
        self.source = sample_toy(source, n, seed + 1) if source is not None else None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"x": self.x[i]}
        if self.source is not None:
            item["source"] = self.source[i]
        return item
