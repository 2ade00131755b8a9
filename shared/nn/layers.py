"""Small building blocks shared by the U-Nets: context-aware sequential containers, group norm,
zero-initialisation, the DDPM/ADM residual block and the resampling layers.

A :class:`CtxBlock` is called as ``block(h, emb, ctx)`` where ``emb`` is the (time + class) embedding
and ``ctx`` a dict of side information (``num_frames`` for video layers, ``context`` tokens for
cross-attention, ``frame_mask`` for joint image-video batches). Ordinary modules are called as
``layer(h)``. This is what lets video layers be inserted into an image U-Net without touching it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class CtxBlock(nn.Module):
    """Marker base class: ``forward(h, emb, ctx)``."""

    def forward(self, x, emb=None, ctx=None):  # pragma: no cover
        raise NotImplementedError


class CtxSequential(nn.Sequential):
    """Sequential container that passes ``(emb, ctx)`` to :class:`CtxBlock` members.

    ``run_order`` (a list of member indices, None = natural order) lets a member appended later — so every
    existing parameter keeps its name — run earlier, e.g. a temporal layer before a block's upsampler."""

    run_order: list[int] | None = None

    def forward(self, x, emb=None, ctx=None, skips: list | None = None):
        # ``skips``: a U-Net decoder's stack of skip connections; the block pops its own and concatenates it here
        # rather than the caller, so neither the concat nor the skip outlives the first layer (an argument of a
        # module call stays alive for the whole call: a caller-made concat would be held through every later
        # layer of the block, a skip passed as an argument likewise)
        if skips is not None:
            x = torch.cat([x, skips.pop()], dim=1)
        layers = self if self.run_order is None else [self[i] for i in self.run_order]
        for layer in layers:
            x = layer(x, emb, ctx) if isinstance(layer, CtxBlock) else layer(x)
        return x


def norm_group_count(channels: int, groups: int = 32) -> int:
    """The group count of a GroupNorm over ``channels`` asked to use ``groups``: ``groups`` itself when it divides
    ``channels``; ``channels`` (one channel per group) when a tiny layer has fewer channels than ``groups`` and
    they divide it; anything else is a configuration error (``norm_groups=3`` over 32 channels is not silently
    turned into 1 group)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm_groups must be a positive integer, got {groups!r}")
    if channels % groups == 0:
        return groups
    if groups % channels == 0:
        return math.gcd(groups, channels)
    raise ValueError(f"norm_groups={groups} does not divide the {channels} channels of a GroupNorm layer "
                     f"(choose a divisor of every layer's width, e.g. {math.gcd(groups, channels) or 1})")


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with :func:`norm_group_count` groups."""
    return nn.GroupNorm(norm_group_count(channels, groups), channels, eps=1e-6)


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(CtxBlock):
    """DDPM residual block: GN–SiLU–conv, + projected embedding, GN–SiLU–dropout–conv(zero init), skip.

    ``scale_shift_norm`` uses ADM's FiLM form ``GN(h) * (1 + scale) + shift`` instead of addition.

    ``temporal_shift`` (None by default; set by :func:`shared.nn.temporal_shift.add_temporal_shift`): a
    parameter-free ``f(h, num_frames)`` applied to the residual branch before ``conv1`` (TSM's residual shift,
    Latent-Shift); it adds nothing to the state dict.
    """

    temporal_shift: nn.Module | None = None

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, norm_groups: int = 32,
                 scale_shift_norm: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.scale_shift_norm, self.use_checkpoint = scale_shift_norm, use_checkpoint
        self.norm1 = group_norm(in_ch, norm_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch * (2 if scale_shift_norm else 1))
        self.norm2 = group_norm(out_ch, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _forward(self, x, emb, frames: int = 1):
        h = F.silu(self.norm1(x))
        if self.temporal_shift is not None:
            h = self.temporal_shift(h, frames)
        h = self.conv1(h)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h

    def forward(self, x, emb=None, ctx=None):
        frames = int((ctx or {}).get("num_frames", 1))
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, frames, use_reentrant=False)
        return self._forward(x, emb, frames)


class Downsample(nn.Module):
    """Stride-2 3×3 convolution (DDPM ``resamp_with_conv``) or average pooling."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3×3 convolution."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
