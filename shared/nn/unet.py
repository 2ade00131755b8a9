"""The DDPM / ADM-style U-Net (Ho et al. 2020, App. B; Dhariwal & Nichol 2021).

Residual blocks with group norm, self-attention at chosen resolutions (through SDPA), a sinusoidal time
embedding, optional class conditioning (label embedding added to the time embedding, with a null class
for classifier-free guidance). With ``base_channels=128, channel_mult=(1,2,2,2), num_res_blocks=2,
attention_resolutions=(16,), dropout=0.1`` at 32×32 it is DDPM's CIFAR-10 network (35.7M parameters).

Videos: a (B, C, T, H, W) input is run frame by frame (time folded into batch, one time/label per video
repeated over frames) and ``ctx["num_frames"] = T`` is handed to every block, so temporal layers inserted
into ``input_blocks`` / ``middle_block`` / ``output_blocks`` (see ``shared/nn/video``) see the frames.

Text conditioning (Stable Diffusion): with ``context_dim`` set, every attention layer (at
``attention_resolutions`` and in the middle block) is SD's spatial transformer
(``shared/nn/spatial_transformer.py``: self-attention, cross-attention to ``context`` (B, L, context_dim), GEGLU
feed-forward; ``transformer_depth`` blocks, ``use_linear_proj`` for SD-2-style linear projections) instead of
:class:`SpatialSelfAttention`; ``norm_eps`` is the residual blocks' and output GroupNorm's eps (SD: 1e-5). The
time embedding is already SD's (``[cos, sin]``, i.e. diffusers ``flip_sin_to_cos=True, freq_shift=0``). With these
options the layout is CompVis' SD U-Net; ``shared/nn/sd_unet.py`` has the SD-1.5 config and the diffusers /
CompVis weight loader. The defaults build exactly the network above (same parameters and outputs).

Conditioning hooks through ``ctx`` (keyword arguments of ``forward`` beyond ``y`` / ``context`` land there):
``input_residual`` (B*T, base_channels, H, W) is added to the output of the first convolution (a ControlNet-style
conditioning encoder such as Animate Anyone's Pose Guider in the public re-implementation's layout,
``shared/nn/guider.py``); ``reference_read`` / ``reference_write`` are the spatial transformers' reference banks
(``shared/nn/reference.py``).

Additive control (ControlNet, Zhang et al. 2023; ``shared/nn/controlnet.py``): ``down_residuals`` (one tensor per
input block, added to its skip connection) and ``mid_residual`` (added to the middle block's output) — diffusers'
``down_block_additional_residuals`` / ``mid_block_additional_residual``. For video input they are per frame, in the
``(B*T, C, H, W)`` layout the blocks see.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.attention import SpatialSelfAttention
from shared.nn.embeddings import LabelEmbedding, TimestepEmbedding
from shared.nn.layers import CtxSequential, Downsample, ResBlock, Upsample, group_norm, zero_module
from shared.nn.spatial_transformer import SpatialTransformer


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int | None = None, image_size: int = 32,
                 base_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0, num_classes: int | None = None,
                 num_heads: int = 1, head_channels: int = -1, norm_groups: int = 32,
                 scale_shift_norm: bool = False, resample_with_conv: bool = True, use_checkpoint: bool = False,
                 context_dim: int | None = None, transformer_depth: int = 1, use_linear_proj: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        for key, value in (("in_channels", in_channels), ("image_size", image_size), ("base_channels", base_channels),
                           ("num_res_blocks", num_res_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
        if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"model.channel_mult must be a non-empty list of positive integers, got {channel_mult!r}")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"model.image_size={image_size} is not divisible by 2^{len(channel_mult) - 1} "
                             f"(the {len(channel_mult)} levels of model.channel_mult={list(channel_mult)} halve it)")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout!r}")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_classes, self.context_dim = num_classes, context_dim
        ch = base_channels
        emb_dim = 4 * ch
        self.time_embed = TimestepEmbedding(ch, emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes else None

        def res(i, o):
            block = ResBlock(i, o, emb_dim, dropout, norm_groups, scale_shift_norm, use_checkpoint)
            block.norm1.eps = block.norm2.eps = norm_eps
            return block

        def attn(c):
            if context_dim is None:
                return SpatialSelfAttention(c, num_heads, head_channels, norm_groups)
            return SpatialTransformer(c, context_dim, num_heads, head_channels, transformer_depth, use_linear_proj,
                                      norm_groups, dropout=dropout)

        self.input_blocks = nn.ModuleList([CtxSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chs, cur, res_now = [ch], ch, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(cur, ch * mult)]
                cur = ch * mult
                if res_now in attention_resolutions:
                    layers.append(attn(cur))
                self.input_blocks.append(CtxSequential(*layers))
                skip_chs.append(cur)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(CtxSequential(Downsample(cur, resample_with_conv)))
                skip_chs.append(cur)
                res_now //= 2
        self.middle_block = CtxSequential(res(cur, cur), attn(cur), res(cur, cur))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(cur + skip_chs.pop(), ch * mult)]
                cur = ch * mult
                if res_now in attention_resolutions:
                    layers.append(attn(cur))
                if level != 0 and i == num_res_blocks:
                    layers.append(Upsample(cur, resample_with_conv))
                    res_now *= 2
                self.output_blocks.append(CtxSequential(*layers))
        self.out_norm = group_norm(cur, norm_groups)
        self.out_norm.eps = norm_eps
        self.out_conv = zero_module(nn.Conv2d(cur, out_channels, 3, padding=1))

    @property
    def null_label(self) -> int | None:
        return self.label_embed.null_label if self.label_embed is not None else None

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:  # unconditional use of a conditional net: the null label
                y = torch.full((t.shape[0],), self.label_embed.null_label, dtype=torch.long, device=t.device)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels were given to a U-Net built without num_classes")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, down_residuals: list[torch.Tensor] | None = None,
                mid_residual: torch.Tensor | None = None, **ctx_extra) -> torch.Tensor:
        residuals = None if down_residuals is None and mid_residual is None else (down_residuals, mid_residual)
        if x.dim() == 5:
            return self._forward_video(x, t, y, context, residuals, **ctx_extra)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W) or (B, C, T, H, W), got {tuple(x.shape)}")
        ctx = {"num_frames": ctx_extra.pop("num_frames", 1), "context": context, **ctx_extra}
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        return self._forward_blocks(x, self.embed(t, y), ctx, residuals)

    def _forward_video(self, x, t, y, context, residuals=None, **ctx_extra):
        b, _, frames = x.shape[:3]
        t = torch.as_tensor(t, device=x.device).float().expand(b)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        rep = lambda z: None if z is None else z.repeat_interleave(frames, dim=0)  # noqa: E731
        ctx = {"num_frames": frames, "context": rep(context), **ctx_extra}
        out = self._forward_blocks(h, self.embed(rep(t), rep(y)), ctx, residuals)
        return rearrange(out, "(b t) c h w -> b c t h w", b=b)

    def _forward_blocks(self, h, emb, ctx, residuals=None):
        down, mid = residuals if residuals is not None else (None, None)
        if down is not None and len(down) != len(self.input_blocks):
            raise ValueError(f"down_residuals has {len(down)} tensors, the U-Net has {len(self.input_blocks)} "
                             "input blocks")
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, ctx)
            if i == 0 and ctx.get("input_residual") is not None:  # a conditioning encoder's features after conv_in
                h = h + ctx["input_residual"]
            skips.append(h if down is None else h + down[i])
        h = self.middle_block(h, emb, ctx)
        if mid is not None:
            h = h + mid
        for block in self.output_blocks:
            h = block(h, emb, ctx, skips=skips)  # pops its skip
        return self.out_conv(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
