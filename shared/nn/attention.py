"""Attention layers, all through ``F.scaled_dot_product_attention``.

* :class:`SpatialSelfAttention` — DDPM/ADM's self-attention over the pixels of a feature map
  (GroupNorm → 1×1 qkv → SDPA → zero-initialised 1×1 projection, residual).
* :func:`sdpa_heads` — the one multi-head wrapper the other attention layers (temporal, cross) call.
* Frame attention (the attention-processor switch of zero-shot and one-shot video methods): inside a U-Net that
  runs a video frame by frame (time folded into the batch, ``ctx["num_frames"] = T``), the *self*-attention of
  frame ``i`` may take its keys and values from other frames of its clip (:func:`frame_keys`):

  - ``"self"`` — its own tokens (the image model, the default);
  - ``"first"`` — the first frame's tokens: Text2Video-Zero's *cross-frame attention* (Khachatryan et al. 2023,
    Sec. 3.3, Eq. 4: ``Attn(Q^i, K^1, V^1)``);
  - ``"sparse_causal"`` — the first and the previous frame's tokens, concatenated: Tune-A-Video's *sparse-causal
    attention* (Wu et al. 2023, Sec. 4.1: ``K = W^K [z_1, z_{i-1}]``; frame 0 attends to ``[z_0, z_0]``).

  The mode is ``ctx["frame_attention"]`` when a caller passes it (``net(x, t, frame_attention="first")``), else
  the layer's ``frame_attention`` attribute (:func:`set_frame_attention` sets it on every self-attention layer of
  a network, e.g. a Tune-A-Video model that always attends sparse-causally). Queries are always the frame's own;
  projections are shared, so no parameter is added. A frame attending to itself (``T = 1``, frame 0 in
  ``"first"`` and ``"sparse_causal"`` — duplicated keys do not change a softmax average) is exactly the image
  model's self-attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.layers import CtxBlock, group_norm, zero_module

FRAME_ATTENTION = ("self", "first", "sparse_causal")


def check_frame_attention(mode: str) -> str:
    if mode not in FRAME_ATTENTION:
        raise ValueError(f"frame_attention must be one of {FRAME_ATTENTION}, got {mode!r}")
    return mode


def frame_attention_mode(layer: nn.Module, ctx: dict | None) -> tuple[str, int]:
    """``(mode, frames)`` for a self-attention layer: ``ctx["frame_attention"]`` or the layer's attribute."""
    ctx = ctx or {}
    mode = ctx.get("frame_attention") or getattr(layer, "frame_attention", "self")
    return check_frame_attention(mode), int(ctx.get("num_frames", 1))


def frame_keys(z: torch.Tensor, frames: int, mode: str, token_dim: int) -> torch.Tensor:
    """Keys or values ``z`` of shape ``(B*T, ...)`` (frames of a clip consecutive in the batch) → those each frame
    attends to under ``mode`` (module docstring): ``"first"`` repeats frame 0's, ``"sparse_causal"`` concatenates
    frame 0's and the previous frame's along ``token_dim`` (twice the tokens)."""
    check_frame_attention(mode)
    if mode == "self" or frames == 1:
        return z
    if z.shape[0] % frames:
        raise ValueError(f"frame attention: batch {z.shape[0]} is not a multiple of num_frames={frames}")
    clips = z.unflatten(0, (-1, frames))  # (B, T, ...)
    first = clips[:, [0] * frames]
    if mode == "first":
        return first.flatten(0, 1)
    prev = clips[:, [max(i - 1, 0) for i in range(frames)]]
    return torch.cat([first, prev], dim=token_dim + 1).flatten(0, 1)


def set_frame_attention(net: nn.Module, mode: str) -> nn.Module:
    """Set the frame-attention mode of every self-attention layer of ``net`` (``SpatialSelfAttention`` and the
    spatial transformers' ``attn1``); returns ``net``. Parameter-free: the state dict is unchanged."""
    check_frame_attention(mode)
    from shared.nn.spatial_transformer import BasicTransformerBlock

    for m in net.modules():
        if isinstance(m, SpatialSelfAttention):
            m.frame_attention = mode
        elif isinstance(m, BasicTransformerBlock):
            m.attn1.frame_attention = mode
    return net


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
    """Self-attention over H×W positions with a residual connection (output projection zero-initialised).

    ``frame_attention`` (attribute or ``ctx``): which frames' tokens give the keys/values (module docstring)."""

    frame_attention: str = "self"

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
        mode, frames = frame_attention_mode(self, ctx)
        if mode != "self" and frames > 1:
            k, v = frame_keys(k, frames, mode, token_dim=2), frame_keys(v, frames, mode, token_dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        if plain:
            out = F.linear(out, self.proj_out.weight.view(c, c), self.proj_out.bias)
            return x + out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))
