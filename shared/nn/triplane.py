"""Triplane (projected) video latents: a 3D feature volume ``u`` of shape (B, D, T, H, W) projected onto its
three axis-aligned planes and broadcast back (Yu et al. 2023, "Video Probabilistic Diffusion Models in
Projected Latent Space", Sec. 3.1; the same factorisation as EG3D's triplanes for 3D scenes).

* :class:`AxisPool` — collapses one axis of the volume: ``mean`` (average pooling) or ``attention`` (a learned
  query token attends over the positions of that axis, with a learned positional embedding; the official PVDM
  code uses a CLS-token transformer for this). Planes: ``xy`` = pool over time -> (B, D, H, W); ``yt`` = pool
  over the height -> (B, D, T, W); ``xt`` = pool over the width -> (B, D, T, H). (We name planes by the
  axes they keep, as the official code does: ``yt`` keeps (t, w), ``xt`` keeps (t, h).)
* :func:`broadcast_sum` — the decoder's unprojection ``u(t, h, w) = z_xy(h, w) + z_yt(t, w) + z_xt(t, h)``.
* :func:`to_canvas` / :func:`from_canvas` — the three planes laid out as *one* 2D image so a plain 2D U-Net can
  denoise them: stacked along the height, ``[xy (H×W); yt (T×W); xt (T×H)]`` -> (B, C, H + 2T, W). This needs
  square latents (H == W); the official code instead flattens the planes to one token sequence and runs its
  U-Net on each plane with shared weights plus attention over all tokens (see papers/pvdm/README.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

PLANES = ("xy", "yt", "xt")
# which axis of (B, D, T, H, W) each plane collapses (einops patterns: volume -> (rows, length, D) sequences)
_SEQ = {"xy": "b d t h w -> (b h w) t d", "yt": "b d t h w -> (b t w) h d", "xt": "b d t h w -> (b t h) w d"}
_OUT = {"xy": "(b h w) d -> b d h w", "yt": "(b t w) d -> b d t w", "xt": "(b t h) d -> b d t h"}
_AXIS = {"xy": 2, "yt": 3, "xt": 4}


class AxisPool(nn.Module):
    """Project a volume (B, D, T, H, W) onto one plane by pooling one axis (``mode``: mean | attention).

    ``attention``: a learned query q attends over the ``length`` positions of the axis,
    ``softmax(q·K(u+p)/sqrt(d)) · V(u+p)`` with ``heads`` heads and learned positions ``p``, then a linear out.
    The axis length is fixed at construction (the positional embedding), so a wrong frame count / size fails.
    """

    def __init__(self, plane: str, channels: int, length: int, mode: str = "mean", heads: int = 1):
        super().__init__()
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
        if mode not in ("mean", "attention"):
            raise ValueError(f"projection mode must be 'mean' or 'attention', got {mode!r}")
        if channels % heads:
            raise ValueError(f"{heads} heads do not divide {channels} channels")
        self.plane, self.mode, self.length, self.heads = plane, mode, length, heads
        if mode == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, channels) * channels ** -0.5)
            self.pos = nn.Parameter(torch.zeros(1, length, channels))
            self.norm = nn.LayerNorm(channels)
            self.to_kv = nn.Linear(channels, 2 * channels)
            self.to_out = nn.Linear(channels, channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, d, t, h, w = u.shape
        if u.shape[_AXIS[self.plane]] != self.length:
            raise ValueError(f"{self.plane} projection expects axis {_AXIS[self.plane]} of length {self.length}, "
                             f"got a volume of shape {tuple(u.shape)}")
        if self.mode == "mean":
            return u.mean(_AXIS[self.plane])
        seq = self.norm(rearrange(u, _SEQ[self.plane]) + self.pos)             # (N, L, D)
        k, v = self.to_kv(seq).chunk(2, dim=-1)
        q = self.query.expand(seq.shape[0], 1, d)
        split = lambda z: rearrange(z, "n l (g c) -> n g l c", g=self.heads)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))      # (N, g, 1, c)
        out = self.to_out(rearrange(out, "n g 1 c -> n (g c)"))
        return rearrange(out, _OUT[self.plane], b=b, **({"h": h, "w": w} if self.plane == "xy" else
                                                         {"t": t, "w": w} if self.plane == "yt" else
                                                         {"t": t, "h": h}))


def broadcast_sum(xy: torch.Tensor, yt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """u(t, h, w) = xy(h, w) + yt(t, w) + xt(t, h): planes (B, D, H, W), (B, D, T, W), (B, D, T, H) -> volume."""
    return xy[:, :, None, :, :] + yt[:, :, :, None, :] + xt[:, :, :, :, None]


def canvas_shape(channels: int, frames: int, height: int, width: int) -> tuple[int, int, int]:
    if height != width:
        raise ValueError(f"the canvas layout stacks the planes along the height and needs square latents, "
                         f"got {height}x{width}")
    return channels, height + 2 * frames, width


def to_canvas(xy: torch.Tensor, yt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """[xy; yt; xt] stacked along the height: (B, C, H + 2T, W) (needs H == W)."""
    canvas_shape(xy.shape[1], yt.shape[2], xy.shape[2], xy.shape[3])
    return torch.cat([xy, yt, xt], dim=2)


def from_canvas(z: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_canvas`: (B, C, H + 2T, W) -> xy (B, C, H, W), yt (B, C, T, W), xt (B, C, T, H)."""
    if z.dim() != 4 or z.shape[2] - 2 * frames != z.shape[3]:
        raise ValueError(f"expected a triplane canvas (B, C, W + 2*{frames}, W), got {tuple(z.shape)}")
    side = z.shape[3]
    xy, yt, xt = z.split([side, frames, frames], dim=2)
    return xy, yt, xt
