"""Attention layers, all through ``F.scaled_dot_product_attention``.

* :class:`SpatialSelfAttention` — DDPM/ADM's self-attention over the pixels of a feature map
  (GroupNorm → 1×1 qkv → SDPA → zero-initialised 1×1 projection, residual).
* :func:`sdpa_heads` — the one multi-head wrapper the other attention layers (temporal, cross) call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.layers import CtxBlock, group_norm, zero_module


def sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               mask: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, C) queries, (B, M, C) keys/values → (B, N, C), split into ``heads``.

    ``mask`` (bool, True = attend) and ``bias`` (additive, e.g. relative positions) broadcast to
    (B, heads, N, M).
    """
    q, k, v = (rearrange(z, "b n (h d) -> b h n d", h=heads) for z in (q, k, v))
    attn_mask = None
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        attn_mask = mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return rearrange(out, "b h n d -> b n (h d)")


class SpatialSelfAttention(CtxBlock):
    """Self-attention over H×W positions with a residual connection (output projection zero-initialised)."""

    def __init__(self, channels: int, num_heads: int = 1, head_channels: int = -1, norm_groups: int = 32):
        super().__init__()
        self.heads = channels // head_channels if head_channels > 0 else num_heads
        if channels % self.heads:
            raise ValueError(f"channels={channels} not divisible by heads={self.heads}")
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x, emb=None, ctx=None):
        # Token-major layout so q/k/v have a unit-stride head dimension: SDPA's fused CPU kernel needs it
        # (channel-major q/k/v, as a 1x1 conv yields them, fall back to the unfused math path). Plain 1x1
        # convs' weights are applied as linears, so parameter names and shapes are unchanged. Adapted
        # projections (e.g. LoRAConv2d, shared/nn/lora.py) are called as modules, output copied token-major.
        b, c, h, w = x.shape
        heads, d = self.heads, c // self.heads
        plain = type(self.qkv) is nn.Conv2d and type(self.proj_out) is nn.Conv2d
        if plain:
            tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
            qkv = F.linear(tokens, self.qkv.weight.view(3 * c, c), self.qkv.bias)
        else:
            qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()  # (B, HW, 3C)
        q, k, v = qkv.view(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, HW, d), unit stride
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        if plain:
            out = F.linear(out, self.proj_out.weight.view(c, c), self.proj_out.bias)
            return x + out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))
