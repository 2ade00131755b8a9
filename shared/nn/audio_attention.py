"""EMO's audio layers: cross-attention from the denoiser's spatial features to the audio features of a window of
frames around each frame (Tian et al. 2024, "EMO: Emote Portrait Alive", Sec. 3.2, "Audio Layers").

"The features extracted from the input audio sequence by the various blocks of the pretrained wav2vec are
concatenated to yield the audio representation embedding A^(f) for the f-th frame ... we define voice features of
each generated frame by concatenating the features of nearby frames: A_gen^(f) = {A^(f-m), ..., A^(f), ...,
A^(f+m)} ... we add audio-attention layers performing a cross attention mechanism between the latent code and
A_gen after each ref-attention layers in the Backbone Network."

* :class:`AudioEncoder` — per-frame windows ``(B, T, D, W)`` (what ``shared.data.audio.AudioFrameFeatures`` and the
  talking-faces world give: D feature channels — log-mel bins or a speech encoder's width — by W columns covering
  frames ``f - m .. f + m``) to tokens ``(B * T, W, dim)``: the W columns are the tokens (a linear map of D, a
  GELU MLP, a learned position per column). Frame ``f``'s tokens come from frame ``f``'s window only, in the
  ``(b t)`` order in which :class:`shared.nn.unet.UNet` folds frames into the batch.
* :class:`AudioAttention` — a :class:`~shared.nn.layers.CtxBlock`: ``x + proj_out(attn(LN(x), tokens))`` over the
  H*W positions of each frame, ``proj_out`` zero-initialised (a new layer is the identity); it reads
  ``ctx["audio_tokens"]`` and is the identity when no audio is given.
* :func:`insert_audio_attention` — appends one after the (last) spatial attention of every U-Net block that has one
  (EMO: after each ref-attention layer), running right after it; names in ``unet.audio_names``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from shared.nn.attention import SpatialSelfAttention, sdpa_heads
from shared.nn.layers import CtxBlock, zero_module
from shared.nn.spatial_transformer import SpatialTransformer

__all__ = ["AudioEncoder", "AudioAttention", "insert_audio_attention", "audio_modules", "audio_state_dict"]


class AudioEncoder(nn.Module):
    """``(B, T, D, W)`` audio windows -> ``(B * T, W, dim)`` tokens (module docstring)."""

    def __init__(self, feature_dim: int, window: int, dim: int = 64):
        super().__init__()
        self.feature_dim, self.window, self.dim = int(feature_dim), int(window), int(dim)
        self.proj = nn.Linear(self.feature_dim, self.dim)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(self.dim, self.dim))
        self.position = nn.Parameter(torch.zeros(1, self.window, self.dim))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim == 3:  # one frame per item (image training): (B, D, W)
            audio = audio[:, None]
        if audio.ndim != 4 or audio.shape[2] != self.feature_dim or audio.shape[3] != self.window:
            raise ValueError(f"audio features must be (B, T, {self.feature_dim}, {self.window}) per-frame windows, "
                             f"got {tuple(audio.shape)}")
        b, t = audio.shape[:2]
        tokens = audio.reshape(b * t, self.feature_dim, self.window).transpose(1, 2)  # (B*T, W, D), frame-major
        h = self.proj(tokens)
        return h + self.mlp(h) + self.position


class AudioAttention(CtxBlock):
    """Cross-attention of a frame's H*W positions to its audio tokens ``ctx["audio_tokens"]`` (B*T, W, dim)."""

    def __init__(self, channels: int, audio_dim: int, heads: int = 4, zero_init: bool = True):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} not divisible by heads={heads}")
        self.heads = int(heads)
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(audio_dim, channels, bias=False)
        self.to_v = nn.Linear(audio_dim, channels, bias=False)
        self.proj_out = nn.Linear(channels, channels)
        if zero_init:
            zero_module(self.proj_out)

    def forward(self, x, emb=None, ctx=None):
        tokens = (ctx or {}).get("audio_tokens")
        if tokens is None:
            return x
        bt, c, h, w = x.shape
        if tokens.shape[0] != bt:
            raise ValueError(f"audio tokens for {tokens.shape[0]} frames, the layer sees {bt} frames")
        z = self.norm(x.flatten(2).transpose(1, 2))  # (B*T, HW, C)
        out = sdpa_heads(self.to_q(z), self.to_k(tokens), self.to_v(tokens), self.heads)
        return x + self.proj_out(out).transpose(1, 2).reshape(bt, c, h, w)


def _attention_channels(block) -> tuple[int, int] | None:
    """(run-order position of the last spatial attention, its channels) of a U-Net block, or None."""
    order = list(block.run_order) if block.run_order is not None else list(range(len(block)))
    hits = [(pos, block[k]) for pos, k in enumerate(order)
            if isinstance(block[k], (SpatialTransformer, SpatialSelfAttention))]
    if not hits:
        return None
    pos, layer = hits[-1]
    return pos, layer.norm.num_channels


def insert_audio_attention(unet: nn.Module, make_layer: Callable[[int], nn.Module]) -> nn.Module:
    """Append ``make_layer(channels)`` after the last spatial attention of every block of ``unet`` (input, middle,
    output), in place; it runs right after that attention. Every existing parameter keeps its name."""
    if getattr(unet, "audio_names", None):
        raise ValueError("insert_audio_attention: the network already has audio layers")
    names = []
    groups = [(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)] + [("middle_block",
                                                                                     unet.middle_block)] + \
        [(f"output_blocks.{i}", b) for i, b in enumerate(unet.output_blocks)]
    for prefix, block in groups:
        found = _attention_channels(block)
        if found is None:
            continue
        pos, channels = found
        order = list(block.run_order) if block.run_order is not None else list(range(len(block)))
        block.append(make_layer(channels))
        order.insert(pos + 1, len(block) - 1)
        block.run_order = order
        names.append(f"{prefix}.{len(block) - 1}")
    if not names:
        raise ValueError("insert_audio_attention: the network has no spatial attention layers")
    unet.audio_names = names
    return unet


def audio_modules(unet: nn.Module):
    mods = dict(unet.named_modules())
    for name in getattr(unet, "audio_names", []):
        yield name, mods[name]


def audio_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    names = tuple(n + "." for n in getattr(unet, "audio_names", []))
    return {k: v.detach().clone() for k, v in unet.state_dict().items() if k.startswith(names)}
