"""Tune-A-Video's inflated network (Wu et al., ICCV 2023, Sec. 4.1-4.2).

A text-to-image U-Net becomes a video U-Net for *one-shot* tuning on a single video:

* every spatial self-attention becomes **sparse-causal attention** — frame ``i`` attends to the tokens of the first
  frame and of frame ``i - 1`` (``shared.nn.attention``, ``frame_attention="sparse_causal"``; no new parameters);
* a **temporal self-attention** with a zero-initialised output follows every spatial attention layer
  (``shared.nn.video.vdm_temporal``), so the inflated model starts as the image model on frame 0;
* only the **query projections** of the attention layers (the paper: ``W^Q`` of the sparse-causal and of the
  cross-attention) and the temporal attention layers are tuned; every other weight is frozen (Sec. 4.2, Fig. 4).

Our image U-Net's spatial self-attention fuses ``q, k, v`` into one 1×1 convolution; its query rows are tuned by
masking the gradient of the key/value rows (Adam without weight decay then leaves them bit-identical, tested). The
class-conditional U-Net has no cross-attention (the label enters through the time embedding), so the second query
projection of the paper has no counterpart here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from shared.nn.attention import SpatialSelfAttention, set_frame_attention
from shared.nn.build import buildable
from shared.nn.spatial_transformer import BasicTransformerBlock
from shared.nn.video import inflated_image_unet, temporal_parameters

__all__ = ["tune_a_video_net", "query_parameters", "tuned_parameter_names"]


def _mask_rows(param: nn.Parameter, keep: slice) -> None:
    """Zero the gradient of every row of ``param`` outside ``keep`` (dim 0)."""
    def hook(grad):
        g = torch.zeros_like(grad)
        g[keep] = grad[keep]
        return g

    param.register_hook(hook)


def query_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The query projections of every self-attention: ``attn1.to_q`` (spatial transformers) and the fused ``qkv``
    convolutions of :class:`SpatialSelfAttention` (whose key/value rows get a zero gradient)."""
    out = []
    for m in net.modules():
        if isinstance(m, BasicTransformerBlock):
            out += list(m.attn1.to_q.parameters()) + list(m.attn2.to_q.parameters())
        elif isinstance(m, SpatialSelfAttention):
            out += [m.qkv.weight, m.qkv.bias]
    return out


@buildable
def tune_a_video_net(net: nn.Module, weights: str | None = None, temporal: Callable[[int], nn.Module] | None = None,
                     frame_attention: str = "sparse_causal") -> nn.Module:
    """The image U-Net ``net`` (trained weights from ``weights``) inflated for one-shot tuning (module docstring)."""
    inflated_image_unet(net, temporal, weights, insert="attention", freeze=False)
    set_frame_attention(net, frame_attention)
    net.requires_grad_(False)
    for p in temporal_parameters(net):
        p.requires_grad_(True)
    for m in net.modules():
        if isinstance(m, SpatialSelfAttention):
            c = m.qkv.out_channels // 3
            for p in (m.qkv.weight, m.qkv.bias):
                p.requires_grad_(True)
                _mask_rows(p, slice(0, c))
        elif isinstance(m, BasicTransformerBlock):
            for p in [*m.attn1.to_q.parameters(), *m.attn2.to_q.parameters()]:
                p.requires_grad_(True)
    return net


def tuned_parameter_names(net: nn.Module) -> list[str]:
    return [n for n, p in net.named_parameters() if p.requires_grad]
