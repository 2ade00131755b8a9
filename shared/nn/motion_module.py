"""AnimateDiff's motion module and the wrapper that animates a trained 2D U-Net.

AnimateDiff (Guo et al., ICLR 2024), Sec. 4.2 and Fig. 3: a *motion module* is a temporal transformer
inserted after every resolution level of a frozen text-to-image U-Net. Per block:

    GroupNorm -> (frames folded out of batch, space into batch) -> proj_in ->
    [ for each attention block:  x = x + TemporalSelfAttention(LayerNorm(x))   (sinusoidal position
      encoding added to the tokens before attention) ;  x = x + FeedForward_GEGLU(LayerNorm(x)) ] ->
    proj_out (zero-initialised) -> residual

so a freshly inserted module is the identity and the video model reproduces the image model frame by frame
(Sec. 4.2: "we zero initialize the output projection layer of the temporal transformer"). Only the motion
modules train; they are saved on their own and plugged into any *personalised* derivative of the same base
(DreamBooth / LoRA fine-tunes) without further tuning. MotionLoRA (Sec. 4.3) is LoRA on the motion modules'
attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), learning a new motion pattern from a few
reference clips.

Sub-module names follow the official code (``guoyww/AnimateDiff``, ``animatediff/models/motion_module.py``):
``temporal_transformer.{norm, proj_in, transformer_blocks.k.{attention_blocks.a.{to_q, to_k, to_v, to_out.0,
pos_encoder.pe}, norms.a, ff.net.0.proj, ff.net.2, ff_norm}, proj_out}``, so the released checkpoints'
tensors map one to one; :func:`to_official` / :func:`from_official` only rewrite the prefix (where in the
U-Net a module sits: ``down_blocks.i.motion_modules.j`` / ``mid_block.motion_modules.0`` /
``up_blocks.i.motion_modules.j`` there, ``input_blocks.n.m`` / ``middle_block.m`` / ``output_blocks.n.m`` in
:class:`shared.nn.unet.UNet`).

Pieces: :class:`MotionModule` (a :class:`~shared.nn.layers.CtxBlock`), :func:`from_image_model`,
:func:`motion_module_state_dict` / :func:`load_motion_module_state_dict`, :func:`official_prefixes`,
:func:`to_official` / :func:`from_official`, :func:`load_official_checkpoint`, :func:`inject_motion_lora`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from shared.nn.attention import sdpa_heads
from shared.nn.build import buildable
from shared.nn.layers import CtxBlock, Downsample, ResBlock, Upsample, norm_group_count, zero_module
from shared.nn.lora import inject_lora
from shared.nn.spatial_transformer import GEGLU, FeedForward  # noqa: F401  (re-exported: one GEGLU feed-forward)
from shared.nn.video import load_temporal_state_dict, temporal_modules, temporal_state_dict, video_from_image

__all__ = [
    "PositionalEncoding",
    "TemporalSelfAttention",
    "FeedForward",
    "TemporalTransformerBlock",
    "TemporalTransformer",
    "MotionModule",
    "motion_module",
    "from_image_model",
    "motion_module_state_dict",
    "load_motion_module_state_dict",
    "POSITION_ENCODING_SUFFIX",
    "official_prefixes",
    "to_official",
    "from_official",
    "load_official_checkpoint",
    "MOTION_LORA_TARGET",
    "inject_motion_lora",
]


class PositionalEncoding(nn.Module):
    """Sinusoidal frame-position encoding added to the tokens (Vaswani et al. 2017), a buffer ``pe`` of shape
    (1, max_len, dim) stored in the state dict as the first released checkpoints store it (the current official code
    recomputes it instead: :func:`load_motion_module_state_dict` accepts files with or without it)."""

    def __init__(self, dim: int, max_len: int = 24):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)[:, : dim // 2]
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the position encoding's max_len {self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over the frame axis of (N, T, C) tokens (N = batch x space)."""

    def __init__(self, dim: int, heads: int, head_dim: int, position_encoding: bool = True, max_len: int = 24,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])
        self.pos_encoder = PositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        out = sdpa_heads(self.to_q(x), self.to_k(x), self.to_v(x), self.heads)
        return self.to_out[1](self.to_out[0](out))


class TemporalTransformerBlock(nn.Module):
    """Pre-norm residual temporal self-attention blocks (two in AnimateDiff) and a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, attention_blocks: int = 2, ff_mult: int = 4,
                 position_encoding: bool = True, max_len: int = 24, dropout: float = 0.0):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(dim, heads, head_dim, position_encoding, max_len, dropout)
             for _ in range(attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(attention_blocks)])
        self.ff = FeedForward(dim, ff_mult, dropout)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = x + attn(norm(x))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    """GroupNorm -> proj_in -> temporal transformer blocks -> proj_out over (B*T, C, H, W) features."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, attention_blocks: int = 2,
                 ff_mult: int = 4, norm_groups: int = 32, position_encoding: bool = True, max_len: int = 24,
                 attention_dim_div: int = 1, dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} not divisible by heads={heads}")
        head_dim = channels // heads // attention_dim_div
        inner = heads * head_dim
        self.norm = nn.GroupNorm(norm_group_count(channels, norm_groups), channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(inner, heads, head_dim, attention_blocks, ff_mult, position_encoding,
                                      max_len, dropout) for _ in range(num_blocks)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        _, _, h, w = x.shape
        tokens = rearrange(self.norm(x), "(b t) c h w -> (b h w) t c", t=frames)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        out = rearrange(self.proj_out(tokens), "(b h w) t c -> (b t) c h w", h=h, w=w)
        return x + out


class MotionModule(CtxBlock):
    """AnimateDiff's motion module (``VanillaTemporalModule``) as a U-Net block: input ``(B*T, C, H, W)`` with
    ``ctx["num_frames"] = T``; ``zero_init`` zeroes ``proj_out`` so the block starts as the identity."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, attention_blocks: int = 2,
                 ff_mult: int = 4, norm_groups: int = 32, position_encoding: bool = True, max_len: int = 24,
                 attention_dim_div: int = 1, dropout: float = 0.0, zero_init: bool = True):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, num_blocks, attention_blocks, ff_mult,
                                                        norm_groups, position_encoding, max_len,
                                                        attention_dim_div, dropout)
        if zero_init:
            zero_module(self.temporal_transformer.proj_out)

    def forward(self, x, emb=None, ctx=None):
        frames = int((ctx or {}).get("num_frames", 1))
        return self.temporal_transformer(x, frames)


@buildable
def motion_module(**kwargs) -> Callable[[int], MotionModule]:
    """A factory ``channels -> MotionModule(channels, **kwargs)`` for :func:`from_image_model`."""
    return partial(MotionModule, **kwargs)


def from_image_model(image_unet: nn.Module, make_motion_module: Callable[[int], nn.Module] | dict | None = None,
                     where: Sequence[str] = ("input", "middle", "output"), freeze: bool = True,
                     copy: bool = True, position: str = "end") -> nn.Module:
    """Turn a trained 2D :class:`~shared.nn.unet.UNet` into a video U-Net with a motion module after every
    spatial stage (``insert="resblock"``: after each down / up residual stage and, with ``"middle"`` in
    ``where``, the middle block as AnimateDiff v2 does). ``freeze`` freezes every 2D weight, so only the motion
    modules train (Sec. 4.2). ``make_motion_module`` is a factory ``channels -> module`` or a dict of
    :class:`MotionModule` keyword arguments. ``position="before_resample"`` is the official placement (each module
    before its level's upsampler, the middle block's between its attention and its second ResBlock — what the
    released v2 modules were trained in); ``"end"`` (default) after the upsampler / after the middle block. The
    result equals the image model frame by frame at init."""
    if make_motion_module is None or isinstance(make_motion_module, dict):
        make_motion_module = motion_module(**(make_motion_module or {}))
    return video_from_image(image_unet, make_motion_module, insert="resblock", where=where, freeze=freeze,
                            copy=copy, position=position)


def motion_module_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Only the motion modules' tensors (what ``mm_sd_v15*.ckpt`` ships), in our naming."""
    return temporal_state_dict(unet)


POSITION_ENCODING_SUFFIX = ".pos_encoder.pe"


def _position_encodings(unet: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every ``*.pos_encoder.pe`` buffer of ``unet``'s motion modules set to the model's own.

    The sinusoidal encoding is a function of the frame index, not a weight: the first released checkpoints
    (``mm_sd_v14/v15*.ckpt``) store it, the current official code (``register_buffer(..., persistent=False)``)
    neither saves nor loads it and recomputes it. So a file may hold it or not; where it does, it must be the
    encoding this model computes (same ``max_len`` — v1 24, v2 32 — and values to the file dtype's rounding),
    otherwise one ``ValueError`` names the key, so a file trained with another encoding is not silently re-encoded."""
    own = {k: v for k, v in temporal_state_dict(unet).items() if k.endswith(POSITION_ENCODING_SUFFIX)}
    out = dict(state)
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is not None:
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ValueError(f"{key}: the file's position encoding has shape {tuple(theirs.shape)}, this model's "
                                 f"{tuple(mine.shape)} (max_len: frames it encodes; AnimateDiff v1 24, v2 32)")
            tol = torch.finfo(theirs.dtype).eps + 1e-6 if theirs.is_floating_point() else 0.0
            diff = (theirs.double() - mine.double()).abs().max().item()
            if not diff <= tol:
                raise ValueError(f"{key}: the file's position encoding differs from the sinusoidal one by {diff:.3g} "
                                 f"(> {tol:.2g}): not AnimateDiff's encoding")
        out[key] = mine
    return out


def load_motion_module_state_dict(unet: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load motion-module tensors (our names; :func:`from_official` renames a released file) into ``unet``. The
    position encodings ``*.pos_encoder.pe`` may be absent (the current official code does not save them) and are
    otherwise checked against the model's own (:func:`_position_encodings`); the model's are used either way."""
    load_temporal_state_dict(unet, _position_encodings(unet, state), strict)


# ----------------------------------------------------------------------------- official checkpoint layout
def official_prefixes(unet: nn.Module) -> dict[str, str]:
    """``{our module name: official prefix}`` for every motion module of an inflated U-Net.

    Official (diffusers-style SD U-Net): ``down_blocks.i.motion_modules.j`` for the j-th residual stage of
    resolution level i, ``mid_block.motion_modules.0``, ``up_blocks.i.motion_modules.j`` with i = 0 the
    lowest resolution. Ours: the index of the U-Net block the module was appended to."""
    names = dict(temporal_modules(unet))
    out: dict[str, str] = {}

    def walk(blocks, part, official, resample):
        level, j = 0, 0
        for n, block in enumerate(blocks):
            has_res = any(isinstance(m, ResBlock) for m in block)
            for m_idx in range(len(block)):
                name = f"{part}.{n}.{m_idx}"
                if name in names:
                    if not has_res:
                        raise ValueError(f"motion module {name} sits in a block without a residual stage")
                    out[name] = f"{official}.{level}.motion_modules.{j}"
            if has_res:
                j += 1
            if any(isinstance(m, resample) for m in block):
                level, j = level + 1, 0

    walk(unet.input_blocks, "input_blocks", "down_blocks", Downsample)
    walk(unet.output_blocks, "output_blocks", "up_blocks", Upsample)
    for m_idx, _ in enumerate(unet.middle_block):
        name = f"middle_block.{m_idx}"
        if name in names:
            out[name] = "mid_block.motion_modules.0"
    missing = sorted(set(names) - set(out))
    if missing:
        raise ValueError(f"official_prefixes: cannot place motion modules {missing[:3]}")
    return out


def _rename(state: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for src, dst in mapping.items():
            if key.startswith(src + "."):
                out[dst + key[len(src):]] = value
                break
        else:
            raise KeyError(f"key {key!r} belongs to no motion module of this U-Net")
    return out


def to_official(state: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """Our motion-module state dict -> the official ``mm_sd_v15*.ckpt`` key layout (same tensors)."""
    return _rename(state, official_prefixes(unet))


def from_official(state: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """An official motion-module state dict -> ours, for :func:`load_motion_module_state_dict` (raises on keys
    that belong to no motion module of ``unet``; shapes are checked by the loader)."""
    inverse = {v: k for k, v in official_prefixes(unet).items()}
    return _rename(state, inverse)


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a released motion-module file (``.safetensors``, or ``.ckpt``/``.pth`` through
    ``torch.load(weights_only=True)``); unwraps ``{"state_dict": ...}`` and a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion-module checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


# ----------------------------------------------------------------------------- MotionLoRA
MOTION_LORA_TARGET = (r"\.temporal_transformer\.transformer_blocks\.\d+\.attention_blocks\.\d+\."
                      r"(to_q|to_k|to_v|to_out\.0)$")


def inject_motion_lora(unet: nn.Module, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
                       target: str = MOTION_LORA_TARGET) -> list[str]:
    """MotionLoRA (Sec. 4.3): LoRA on the motion modules' attention projections; every other weight (image
    model and motion modules) is frozen. Returns the adapted module names."""
    return inject_lora(unet, target=target, rank=rank, alpha=alpha, dropout=dropout, freeze_base=True)
