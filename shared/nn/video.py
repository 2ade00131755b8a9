"""Space-time factorised video layers and the inflation of an image U-Net into a video U-Net.

Video Diffusion Models (Ho et al. 2022, Sec. 3 and Fig. 1): the 3D U-Net is the 2D image U-Net whose
convolutions are space-only (1×3×3, i.e. the 2D convs run with time folded into batch), whose spatial
attention attends over space only, and which gains a *temporal attention* block — space folded into
batch, attention over frames with relative position embeddings — after the spatial layers. Images are
videos with T = 1; for joint image-video training (Sec. 3.2) the temporal attention is *masked* so the
independent images appended to each video attend only to themselves.

Pieces:

* :func:`frame_attention_mask` — (B, T) "frame is a video frame" flags → (B, T, T) bool attention mask.
* :class:`RelativePositionBias` — learned per-head bias of the clipped frame offset ``j - i``.
* :class:`TemporalAttention` — GroupNorm → qkv → :func:`shared.nn.attention.sdpa_heads` over frames with
  the bias and the mask → zero-initialised projection, residual.
* :class:`TemporalConv` — GroupNorm → SiLU → zero-initialised 1D conv over frames, residual (Make-A-Video /
  Video LDM style); image frames (and T = 1) pass through unchanged.
* :class:`TemporalStack` — several temporal blocks as one :class:`CtxBlock`.
* :func:`inflate_unet` — the *one* insertion mechanism: append a temporal block (built by any factory
  ``channels -> CtxBlock``, e.g. VDM's attention, Video LDM's alpha-blended layers, AnimateDiff's motion
  module) at the end of U-Net blocks. Appending keeps every 2D parameter's name, so an image U-Net's
  state dict loads into the video U-Net (``strict=False`` reports only the temporal keys missing).
* :func:`video_from_image` / :func:`freeze_spatial` — a trained image U-Net inflated with its 2D weights
  frozen (Video LDM, AnimateDiff); :func:`temporal_state_dict` / :func:`load_temporal_state_dict` save and
  load the temporal blocks alone.
* :func:`video_unet` — build a :class:`shared.nn.unet.UNet` and inflate it (what ``conf/model/unet3d_*``
  instantiate); :func:`vdm_temporal` is VDM's block factory.

Because every temporal output starts at zero, an inflated U-Net equals the image U-Net frame by frame at
initialisation (DESIGN.md principle 4; ``tests/test_video_unet.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.attention import SpatialSelfAttention, sdpa_heads
from shared.nn.build import buildable
from shared.nn.layers import CtxBlock, CtxSequential, Downsample, ResBlock, Upsample, group_norm, zero_module
from shared.nn.spatial_transformer import SpatialTransformer
from shared.nn.unet import UNet

FRAME_MASK_KEYS = ("frame_is_video", "frame_mask")  # ctx keys read for joint image-video batches


def frame_flags(ctx: dict | None, batch: int, frames: int, device) -> torch.Tensor | None:
    """The (B, T) bool "is a video frame" flags from ``ctx`` (None when every frame is a video frame)."""
    for key in FRAME_MASK_KEYS:
        m = (ctx or {}).get(key)
        if m is not None:
            m = torch.as_tensor(m, device=device).bool()
            if m.shape != (batch, frames):
                raise ValueError(f"ctx[{key!r}] must be (B, T) = {(batch, frames)}, got {tuple(m.shape)}")
            return m
    return None


def frame_attention_mask(is_video: torch.Tensor) -> torch.Tensor:
    """(B, T) flags → (B, T, T) bool, True = query frame i may attend to key frame j.

    Video frames attend to the video frames of their clip; an image frame (flag False) attends only to
    itself (VDM Sec. 3.2: "masking ... to prevent mixing information across video frames and each
    individual image frame").
    """
    v = is_video.bool()
    eye = torch.eye(v.shape[1], dtype=torch.bool, device=v.device)
    return (v[:, :, None] & v[:, None, :]) | eye


class RelativePositionBias(nn.Module):
    """Learned per-head additive bias of the frame offset ``j - i`` clipped to ``±max_distance``.

    A bias form of the relative position embeddings VDM uses in temporal attention (Sec. 3, after Shaw
    et al. 2018): the network knows frame order without absolute frame positions, so the same layers
    serve any number of frames. Zero-initialised.
    """

    def __init__(self, heads: int, max_distance: int = 32):
        super().__init__()
        self.heads, self.max_distance = heads, int(max_distance)
        self.table = nn.Embedding(2 * self.max_distance + 1, heads)
        nn.init.zeros_(self.table.weight)

    def forward(self, frames: int, device=None) -> torch.Tensor:
        pos = torch.arange(frames, device=device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return rearrange(self.table(rel), "i j h -> h i j")  # (heads, T, T)


class TemporalAttention(CtxBlock):
    """Self-attention over the T frames at every spatial position (space folded into batch), residual.

    Input ``(B*T, C, H, W)`` as inside :class:`~shared.nn.unet.UNet` (``ctx["num_frames"] = T``). The output
    projection is zero-initialised, so the block starts as the identity.
    """

    def __init__(self, channels: int, num_heads: int = 1, head_channels: int = -1, norm_groups: int = 32,
                 max_distance: int = 32, relative_bias: bool = True):
        super().__init__()
        self.heads = channels // head_channels if head_channels > 0 else num_heads
        if channels % self.heads:
            raise ValueError(f"channels={channels} not divisible by heads={self.heads}")
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.rel_bias = RelativePositionBias(self.heads, max_distance) if relative_bias else None
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x, emb=None, ctx=None):
        frames = int((ctx or {}).get("num_frames", 1))
        bt, c, h, w = x.shape
        b = bt // frames
        tokens = rearrange(self.norm(x), "(b t) c h w -> (b h w) t c", t=frames)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        bias = None
        if self.rel_bias is not None:
            bias = self.rel_bias(frames, x.device)[None]  # (1, heads, T, T)
        flags = frame_flags(ctx, b, frames, x.device)
        if flags is not None:
            allowed = frame_attention_mask(flags).repeat_interleave(h * w, dim=0)[:, None]  # (BHW, 1, T, T)
            neg = torch.zeros(allowed.shape, dtype=q.dtype, device=x.device)
            neg = neg.masked_fill(~allowed, float("-inf"))
            bias = neg if bias is None else bias.to(q.dtype) + neg
        out = sdpa_heads(q, k, v, self.heads, bias=bias)
        out = rearrange(self.proj_out(out), "(b h w) t c -> (b t) c h w", h=h, w=w)
        return x + out


class TemporalConv(CtxBlock):
    """GroupNorm → SiLU → Conv1d over frames (zero-initialised), residual; space folded into batch.

    Image frames of a joint batch neither change nor feed their neighbours (their inputs are zeroed, as
    padding), so an appended image, a T = 1 video and a 4-D image all pass through unchanged.
    """

    def __init__(self, channels: int, kernel_size: int = 3, norm_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.conv = zero_module(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2))

    def forward(self, x, emb=None, ctx=None):
        frames = int((ctx or {}).get("num_frames", 1))
        if frames == 1:
            return x
        bt, c, h, w = x.shape
        b = bt // frames
        flags = frame_flags(ctx, b, frames, x.device)
        hid = F.silu(self.norm(x))
        if flags is not None:
            keep = rearrange(flags, "b t -> (b t) 1 1 1").to(x.dtype)
            hid = hid * keep
        hid = rearrange(hid, "(b t) c h w -> (b h w) c t", t=frames)
        out = rearrange(self.conv(hid), "(b h w) c t -> (b t) c h w", b=b, h=h, w=w)
        if flags is not None:
            out = out * keep
        return x + out


class TemporalStack(CtxBlock):
    """Several temporal blocks applied in order, as one :class:`CtxBlock` (one insertion point)."""

    def __init__(self, *blocks: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, emb=None, ctx=None):
        for blk in self.blocks:
            x = blk(x, emb, ctx) if isinstance(blk, CtxBlock) else blk(x)
        return x


@buildable
def vdm_temporal(channels: int, num_heads: int = 1, head_channels: int = -1, norm_groups: int = 32,
                 max_distance: int = 32, conv_kernel: int = 0) -> CtxBlock:
    """VDM's temporal block factory: temporal attention with relative position bias (plus, if
    ``conv_kernel > 0``, a temporal convolution — not in VDM; Make-A-Video style)."""
    attn = TemporalAttention(channels, num_heads, head_channels, norm_groups, max_distance)
    if conv_kernel and conv_kernel > 0:
        return TemporalStack(attn, TemporalConv(channels, conv_kernel, norm_groups))
    return attn


INSERT_POINTS = ("attention", "resblock")


def _block_channels(block: CtxSequential) -> int | None:
    """Output channels of a U-Net block (its last ResBlock's), or None for blocks without one."""
    ch = None
    for layer in block:
        if isinstance(layer, ResBlock):
            ch = layer.conv2.out_channels
    return ch


POSITIONS = ("end", "before_resample")


def inflate_unet(unet: UNet, make_temporal: Callable[[int], nn.Module], insert: str = "attention",
                 where: Sequence[str] = ("input", "middle", "output"), position: str = "end") -> UNet:
    """Append ``make_temporal(channels)`` at the end of U-Net blocks, in place; returns ``unet``.

    ``position="end"`` runs the temporal block last in its U-Net block, i.e. after an up-level's upsampler
    (at twice that level's resolution) and after the middle block's second ResBlock; ``"before_resample"`` is
    where AnimateDiff's motion modules sit in the SD U-Net (official ``animatediff/models/unet_blocks.py``, as
    diffusers' ``UNetMotionModel``): right after a down/up block's last spatial layer, before a trailing
    up/down-sampler (after each resnet / attention, inside the level), and in the middle block between the
    attention and the second ResBlock (ResNet -> attention -> motion module -> ResNet, AnimateDiff v2's
    mid-block module). Either way the module is *appended* (``block.run_order`` reorders the forward), so every
    2D parameter keeps its name.

    ``insert="attention"``: blocks that hold a spatial attention layer (VDM: temporal attention where the
    image U-Net has spatial attention); ``"resblock"``: every block with a residual block (Video LDM,
    AnimateDiff: a temporal layer after every spatial stage). ``where`` picks input / middle / output
    blocks. The inserted module's qualified names are recorded in ``unet.temporal_names`` (see
    :func:`temporal_parameters`, :func:`spatial_parameters`).
    """
    if insert not in INSERT_POINTS:
        raise ValueError(f"insert must be one of {INSERT_POINTS}, got {insert!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    groups = {"input": [(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)],
              "middle": [("middle_block", unet.middle_block)],
              "output": [(f"output_blocks.{i}", b) for i, b in enumerate(unet.output_blocks)]}
    unknown = set(where) - set(groups)
    if unknown:
        raise ValueError(f"unknown U-Net parts {sorted(unknown)}; choose from {sorted(groups)}")
    names = list(getattr(unet, "temporal_names", []))
    for part in where:
        for prefix, block in groups[part]:
            ch = _block_channels(block)
            if ch is None:
                continue
            if insert == "attention" and not any(isinstance(m, (SpatialSelfAttention, SpatialTransformer))
                                                 for m in block):
                continue
            order = list(block.run_order) if block.run_order is not None else list(range(len(block)))
            block.append(make_temporal(ch))
            new = len(block) - 1
            attention = [i for i, k in enumerate(order) if isinstance(block[k], (SpatialSelfAttention,
                                                                               SpatialTransformer))]
            if position == "before_resample" and part == "middle" and attention:
                order.insert(attention[-1] + 1, new)
                block.run_order = order
            elif position == "before_resample" and isinstance(block[order[-1]], (Upsample, Downsample)):
                order.insert(len(order) - 1, new)
                block.run_order = order
            elif block.run_order is not None:
                block.run_order = order + [new]
            names.append(f"{prefix}.{new}")
    unet.temporal_names = names
    return unet


def temporal_modules(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of the temporal blocks :func:`inflate_unet` inserted."""
    mods = dict(unet.named_modules())
    for name in getattr(unet, "temporal_names", []):
        yield name, mods[name]


def temporal_parameters(unet: nn.Module) -> Iterator[nn.Parameter]:
    for _, m in temporal_modules(unet):
        yield from m.parameters()


def spatial_parameters(unet: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter that is not in an inserted temporal block (the image model's, to freeze)."""
    ids = {id(p) for p in temporal_parameters(unet)}
    return (p for p in unet.parameters() if id(p) not in ids)


def freeze_spatial(unet: nn.Module) -> nn.Module:
    """Freeze every image-model parameter of an inflated U-Net (``requires_grad=False``), leave the temporal
    blocks trainable; returns ``unet``. The optimiser of :class:`shared.methods.diffusion_module.DiffusionModule` takes
    only trainable parameters, so training then updates the temporal layers alone (Video LDM Sec. 3.1,
    AnimateDiff Sec. 4.2: "the base T2I model is frozen")."""
    if not getattr(unet, "temporal_names", None):
        raise ValueError("freeze_spatial: the network has no inserted temporal blocks (inflate it first)")
    for p in spatial_parameters(unet):
        p.requires_grad_(False)
    for p in temporal_parameters(unet):
        p.requires_grad_(True)
    return unet


def video_from_image(image_unet: UNet, make_temporal: Callable[[int], nn.Module], insert: str = "resblock",
                     where: Sequence[str] = ("input", "middle", "output"), freeze: bool = True,
                     copy: bool = True, position: str = "end") -> UNet:
    """A trained image U-Net turned into a video U-Net: (a copy of) it, inflated with ``make_temporal`` blocks
    (:func:`inflate_unet`) and, with ``freeze``, its 2D weights frozen (:func:`freeze_spatial`). With
    zero-initialised temporal outputs the result equals the image model frame by frame."""
    import copy as _copy

    unet = _copy.deepcopy(image_unet) if copy else image_unet
    if getattr(unet, "temporal_names", None):
        raise ValueError("video_from_image: the network is already inflated")
    inflate_unet(unet, make_temporal, insert, where, position)
    return freeze_spatial(unet) if freeze else unet


def temporal_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Only the temporal blocks' tensors, keyed by their names in ``unet`` (what a motion module or a set of
    Video LDM temporal layers ships as: the image model's weights are not repeated)."""
    names = tuple(getattr(unet, "temporal_names", []))
    if not names:
        raise ValueError("temporal_state_dict: the network has no inserted temporal blocks")
    return {k: v.detach().clone() for k, v in unet.state_dict().items() if k.startswith(tuple(n + "." for n in names))}


def load_temporal_state_dict(unet: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load :func:`temporal_state_dict` output into an inflated U-Net (any image weights left as they are).

    With ``strict`` a missing or unexpected temporal key, or a shape mismatch, raises one ``ValueError``
    naming the first offending keys; nothing is loaded in that case."""
    own = temporal_state_dict(unet)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing and strict:
        problems.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected and strict:
        problems.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if shapes:
        k = shapes[0]
        problems.append(f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    if problems:
        raise ValueError("temporal weights do not match the network: " + "; ".join(problems))
    unet.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


@buildable
def video_unet(temporal: Callable[[int], nn.Module] | None = None, insert: str = "attention",
               where: Sequence[str] = ("input", "middle", "output"), position: str = "end", **unet_kwargs) -> UNet:
    """A :class:`UNet` (``unet_kwargs``) inflated with ``temporal`` blocks (default :func:`vdm_temporal`
    with the U-Net's head settings)."""
    unet = UNet(**unet_kwargs)
    if temporal is None:
        def temporal(ch):
            return vdm_temporal(ch, unet_kwargs.get("num_heads", 1), unet_kwargs.get("head_channels", -1),
                                unet_kwargs.get("norm_groups", 32))
    return inflate_unet(unet, temporal, insert, where, position)


@buildable
def inflated_image_unet(net: UNet, temporal: Callable[[int], nn.Module] | None = None, weights: str | None = None,
                        insert: str = "resblock", where: Sequence[str] = ("input", "middle", "output"),
                        freeze: bool = False, position: str = "end") -> UNet:
    """A config-buildable :func:`video_from_image`: the image U-Net ``net`` (its trained weights loaded strictly from
    ``weights``, a state dict of the bare net) inflated with ``temporal`` blocks (default :func:`vdm_temporal` with
    the net's head settings); ``freeze=False`` fine-tunes every weight (PYoCo, VideoFusion), ``True`` only the
    temporal blocks. Zero-initialised temporal outputs: equal to the image model frame by frame at the start."""
    if weights:
        from shared.nn.weights import load_state_dict_strict, read_state_dict

        load_state_dict_strict(net, read_state_dict(weights), what=f"image U-Net weights {weights}")
    if temporal is None:
        groups = net.out_norm.num_groups

        def temporal(ch):
            return vdm_temporal(ch, norm_groups=groups)
    return video_from_image(net, temporal, insert=insert, where=where, freeze=freeze, copy=False, position=position)
