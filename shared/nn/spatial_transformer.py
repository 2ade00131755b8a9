"""Stable Diffusion's spatial transformer (Rombach et al. 2022, LDM; CompVis ``ldm/modules/attention.py``,
diffusers ``Transformer2DModel``): the text-conditioned attention layer of the SD U-Net.

    x -> GroupNorm -> proj_in (1x1 conv, or a linear on tokens with ``use_linear_proj``) ->
         depth x BasicTransformerBlock [ x += SelfAttn(LN(x)); x += CrossAttn(LN(x), context); x += GEGLU-FF(LN(x)) ]
      -> proj_out (zero-initialised, so a fresh layer is the identity) -> + x

``context`` is ``ctx["context"]`` (B, L, context_dim) — :class:`shared.nn.unet.UNet` puts its ``context``
argument there (repeated per frame for video input). Without context the cross-attention attends to the
image tokens themselves (diffusers' behaviour; needs ``context_dim == channels``).

Sub-module names are diffusers' / CompVis' (``norm``, ``proj_in``, ``transformer_blocks.k.{norm1, attn1.{to_q,
to_k, to_v, to_out.0}, norm2, attn2.*, norm3, ff.net.0.proj, ff.net.2}``, ``proj_out``), so SD checkpoints'
tensors map one to one (``shared/nn/sd_unet.py``). Attention goes through :func:`shared.nn.attention.sdpa_heads`.

Reference attention (Animate Anyone, Hu et al. 2024, Sec. 3.2; EMO, Tian et al. 2024, Sec. 3.2): a transformer with a
``reference_name`` (set by :func:`shared.nn.reference.name_reference_layers`) records, when ``ctx["reference_write"]``
is a dict, the tokens entering each block's self-attention (after ``norm1``) under its name — what a ReferenceNet
run on the reference image yields — and, when ``ctx["reference_read"]`` holds its name, concatenates those tokens to
its own as the self-attention's keys and values (``attn1`` over ``cat[h, ref]``; the output keeps the denoiser's
tokens only). The reference tokens of one image serve every frame of its video (repeated over the frames folded
into the batch). Without these keys in ``ctx`` the layer is exactly SD's.

The GEGLU feed-forward has the same layout as ``shared.nn.motion_module.FeedForward`` but is defined here:
importing it would be circular (motion_module -> video -> unet -> this module).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.attention import frame_attention_mode, frame_keys, sdpa_heads
from shared.nn.layers import CtxBlock, group_norm, zero_module


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): ``a * gelu(gate)`` with ``[a, gate] = proj(x)``."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward of width ``mult * dim`` (``net.0.proj``, dropout, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class CrossAttention(nn.Module):
    """Multi-head attention of (B, N, dim) queries to (B, M, context_dim) keys/values (self-attention when
    ``context`` is None). q/k/v without bias, ``to_out.0`` with bias (SD). As self-attention, ``frame_attention``
    (attribute, or the ``ctx`` handed down by the spatial transformer) picks the frames whose tokens give keys and
    values (:mod:`shared.nn.attention`: cross-frame / sparse-causal attention). ``extra`` (B, M, dim): tokens whose
    keys and values are appended to the self-attention's (reference attention, module docstring)."""

    frame_attention: str = "self"

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, ctx: dict | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
            mode, frames = frame_attention_mode(self, ctx)
            if mode != "self" and frames > 1:
                k, v = frame_keys(k, frames, mode, token_dim=1), frame_keys(v, frames, mode, token_dim=1)
            if extra is not None:
                k, v = torch.cat([k, self.to_k(extra)], dim=1), torch.cat([v, self.to_v(extra)], dim=1)
        else:
            if extra is not None:
                raise ValueError("extra key/value tokens are for self-attention (context=None)")
            k, v = self.to_k(context), self.to_v(context)
        out = sdpa_heads(self.to_q(x), k, v, self.heads)
        return self.to_out[1](self.to_out[0](out))


def expand_batch(reference: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reference tokens (B, M, C) repeated to ``like``'s batch (B * T: frames folded into the batch, b-major)."""
    b, n = reference.shape[0], like.shape[0]
    if n % b or reference.shape[-1] != like.shape[-1]:
        raise ValueError(f"reference tokens {tuple(reference.shape)} do not fit the layer's tokens "
                         f"{tuple(like.shape)} (batch must divide, width must match)")
    return reference if n == b else reference.repeat_interleave(n // b, dim=0)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention and GEGLU feed-forward, each residual (LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float = 0.0,
                 ff_mult: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads, head_dim, None, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, ctx: dict | None = None,
                reference: torch.Tensor | None = None, record: list | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if record is not None:
            record.append(h)
        x = x + self.attn1(h, ctx=ctx, extra=None if reference is None else expand_batch(reference, h))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(CtxBlock):
    """SD's text-conditioned spatial transformer as a U-Net block: (B, C, H, W) with ``ctx["context"]``.

    Heads: ``channels // head_channels`` if ``head_channels > 0`` else ``num_heads`` (SD-1.5: 8 heads at
    every level; SD-2: head_channels 64). ``norm_eps`` is the input GroupNorm's (1e-6 in SD). ``reference_name``:
    the key of this layer in a reference bank (module docstring)."""

    reference_name: str | None = None

    def __init__(self, channels: int, context_dim: int | None, num_heads: int = 8, head_channels: int = -1,
                 depth: int = 1, use_linear_proj: bool = False, norm_groups: int = 32, norm_eps: float = 1e-6,
                 dropout: float = 0.0, ff_mult: int = 4):
        super().__init__()
        self.heads = channels // head_channels if head_channels > 0 else num_heads
        if channels % self.heads:
            raise ValueError(f"channels={channels} not divisible by heads={self.heads}")
        self.use_linear_proj = use_linear_proj
        self.norm = group_norm(channels, norm_groups)
        self.norm.eps = norm_eps
        def proj():
            return nn.Linear(channels, channels) if use_linear_proj else nn.Conv2d(channels, channels, 1)

        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, self.heads, channels // self.heads, context_dim, dropout, ff_mult)
             for _ in range(depth)])
        self.proj_out = zero_module(proj())

    def forward(self, x, emb=None, ctx=None):
        b, c, h, w = x.shape
        ctx = ctx or {}
        context = ctx.get("context")
        refs, record = self._reference(ctx)
        z = self.norm(x)
        if self.use_linear_proj:
            z = self.proj_in(z.flatten(2).transpose(1, 2))
        else:
            z = self.proj_in(z).flatten(2).transpose(1, 2)  # (B, HW, C)
        for i, block in enumerate(self.transformer_blocks):
            z = block(z, context, ctx, reference=None if refs is None else refs[i], record=record)
        if record is not None:
            ctx["reference_write"][self.reference_name] = record
        if self.use_linear_proj:
            z = self.proj_out(z).transpose(1, 2).reshape(b, c, h, w)
        else:
            z = self.proj_out(z.transpose(1, 2).reshape(b, c, h, w))
        return x + z

    def _reference(self, ctx: dict) -> tuple[list | None, list | None]:
        """(reference tokens per block to read, a list to record into) for this layer from ``ctx``."""
        name = self.reference_name
        if name is None:
            return None, None
        read, write = ctx.get("reference_read"), ctx.get("reference_write")
        refs = None
        if read is not None:
            if name not in read:
                raise ValueError(f"the reference bank has no layer {name!r} (it holds {len(read)} layers, e.g. "
                                 f"{sorted(read)[:2]}): ReferenceNet and denoiser differ")
            refs = read[name]
            if len(refs) != len(self.transformer_blocks):
                raise ValueError(f"reference layer {name!r} holds {len(refs)} blocks, this layer has "
                                 f"{len(self.transformer_blocks)}")
        return refs, ([] if write is not None else None)
