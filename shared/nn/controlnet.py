"""ControlNet (Zhang, Rao & Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models", ICCV 2023).

Sec. 3.1-3.2 and Fig. 2-3: the pretrained network is *locked*; a *trainable copy* of its encoder (the input blocks
and the middle block, with the time embedding) takes the noisy input plus the control signal ``c_f``, and its outputs
re-enter the locked network through *zero convolutions* — 1x1 convolutions initialised at zero — added to the locked
U-Net's skip connections and to its middle block's output:

    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)                                   (Eq. 2)

so at initialisation ``y_c = y`` exactly and the first gradient steps cannot harm the locked model. The control image
(``c_i``, at pixel resolution) is turned into the feature space ``c_f`` by a small convolutional encoder ``E`` (3x3
convs with SiLU, stride-2 steps, the last conv zero-initialised), added to the copy's first feature map.

Pieces:

* :class:`ControlCondEmbedding` — ``E``: conv_in, ``blocks`` (a 3x3 conv and a stride-2 3x3 conv per step of
  ``channels``), zero-initialised conv_out (SD-1.5: 3 -> 16 -> 16 -> 32 -> 32 -> 96 -> 96 -> 256 -> 320, 8x down).
* :class:`ControlNet` — the trainable copy (:meth:`ControlNet.from_unet`: copies the image layers of any
  :class:`shared.nn.unet.UNet` — an inflated video U-Net's temporal layers are left out, so the copy runs per frame
  on a video model, as SD ControlNets do under AnimateDiff), its zero convolutions, and ``forward(x, t, hint, ...) ->
  (down_residuals, mid_residual)``.
* :class:`ControlledUNet` — a (frozen) base U-Net plus a ControlNet: ``forward(x, t, control=hint, ...)`` adds
  ``scale x`` the residuals (``UNet.forward(down_residuals=, mid_residual=)``); without ``control`` it *is* the base.
* Weight layouts (:func:`controlnet_key_map`, :func:`load_controlnet`): ours, diffusers' ``ControlNetModel``
  (``conv_in``, ``time_embedding.linear_{1,2}``, ``controlnet_cond_embedding.{conv_in,blocks.j,conv_out}``,
  ``down_blocks.*``, ``controlnet_down_blocks.i``, ``mid_block.*``, ``controlnet_mid_block``) and the original
  ``cldm`` layout of the released ``control_sd15_*.pth`` / ``control_v11*_sd15_*.pth`` files (``[control_model.]``
  ``time_embed.{0,2}``, ``input_hint_block.{0,2,...,14}`` (SiLUs at the odd indices), ``input_blocks.*``,
  ``zero_convs.i.0``, ``middle_block.*``, ``middle_block_out.0``), loaded strictly with one-line errors.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.build import buildable
from shared.nn.layers import CtxSequential, Downsample, ResBlock, zero_module
from shared.nn.unet import UNet

__all__ = ["ControlCondEmbedding", "ControlNet", "ControlledUNet", "controlled_unet", "controlnet_key_map",
           "convert_controlnet_state_dict", "load_controlnet", "sd15_controlnet"]


class ControlCondEmbedding(nn.Module):
    """The control image encoder ``E`` (diffusers' ``ControlNetConditioningEmbedding``, cldm's ``input_hint_block``):
    ``conv_in`` (hint -> channels[0]), per step ``i``: a 3x3 conv at channels[i] and a stride-2 3x3 conv to
    channels[i+1] (``blocks.2i``, ``blocks.2i+1``), SiLU after every conv but the last, ``conv_out`` (zero init) to
    ``out_channels``. ``len(channels) - 1`` halvings: 16 -> 8 pixels with ``channels=(16, 32)``."""

    def __init__(self, hint_channels: int, out_channels: int, channels: Sequence[int] = (16, 32, 96, 256)):
        super().__init__()
        chs = [int(c) for c in channels]
        if not chs:
            raise ValueError("ControlCondEmbedding needs at least one channel width")
        self.hint_channels, self.channels, self.downsample = int(hint_channels), tuple(chs), 2 ** (len(chs) - 1)
        self.conv_in = nn.Conv2d(hint_channels, chs[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i in range(len(chs) - 1):
            self.blocks.append(nn.Conv2d(chs[i], chs[i], 3, padding=1))
            self.blocks.append(nn.Conv2d(chs[i], chs[i + 1], 3, padding=1, stride=2))
        self.conv_out = zero_module(nn.Conv2d(chs[-1], out_channels, 3, padding=1))

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(hint))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


def _spatial_copy(block: CtxSequential, prefix: str, temporal: set[str]) -> CtxSequential:
    """A deep copy of a U-Net block without the temporal layers inflation appended (they sit at the end, so every
    image layer keeps its index and name)."""
    dropped = [i for i in range(len(block)) if f"{prefix}.{i}" in temporal]
    if dropped and min(dropped) < len(block) - len(dropped):
        raise ValueError(f"{prefix}: a temporal layer sits before an image layer; cannot copy the image layers alone")
    return CtxSequential(*[copy.deepcopy(m) for i, m in enumerate(block) if i not in dropped])


def _block_out_channels(blocks: Sequence[CtxSequential], start: int) -> list[int]:
    """Output channels of each U-Net input block (the skip connections' widths)."""
    out, cur = [], start
    for block in blocks:
        for m in block:
            if isinstance(m, nn.Conv2d):
                cur = m.out_channels
            elif isinstance(m, ResBlock):
                cur = m.conv2.out_channels
            elif isinstance(m, Downsample) and isinstance(m.op, nn.Conv2d):
                cur = m.op.out_channels
        out.append(cur)
    return out


class ControlNet(nn.Module):
    """The trainable copy of a U-Net's encoder with zero convolutions (see the module docstring).

    Built by :meth:`from_unet` (copying the weights, Sec. 3.2: "we clone the encoder") or from U-Net arguments
    (``unet_kwargs``; random weights, e.g. before loading a released file). ``hint_channels``: channels of the
    control image (3 for SD's RGB hints; 1 for a depth or edge map, 6 for Plücker camera rays); ``hint_block``: the
    widths of :class:`ControlCondEmbedding` (its halvings must bring the hint to the U-Net's input resolution)."""

    def __init__(self, unet_kwargs: dict | None = None, hint_channels: int = 3,
                 hint_block: Sequence[int] = (16, 32, 96, 256), *, _from: UNet | None = None):
        super().__init__()
        unet = _from if _from is not None else UNet(**dict(unet_kwargs or {}))
        temporal = set(getattr(unet, "temporal_names", []))
        self.in_channels, self.context_dim = unet.in_channels, unet.context_dim
        self.num_classes = unet.num_classes
        self.time_embed = copy.deepcopy(unet.time_embed)
        self.label_embed = copy.deepcopy(unet.label_embed)
        self.input_blocks = nn.ModuleList([_spatial_copy(b, f"input_blocks.{i}", temporal)
                                           for i, b in enumerate(unet.input_blocks)])
        self.middle_block = _spatial_copy(unet.middle_block, "middle_block", temporal)
        base = self.input_blocks[0][0].out_channels
        chs = _block_out_channels(self.input_blocks, base)
        self.hint_embed = ControlCondEmbedding(hint_channels, base, hint_block)
        self.zero_convs = nn.ModuleList([zero_module(nn.Conv2d(c, c, 1)) for c in chs])
        mid = _block_out_channels([self.middle_block], chs[-1])[0]
        self.middle_out = zero_module(nn.Conv2d(mid, mid, 1))
        self.hint_channels = int(hint_channels)

    @classmethod
    def from_unet(cls, unet: UNet, hint_channels: int = 3, hint_block: Sequence[int] = (16, 32, 96, 256)
                  ) -> ControlNet:
        """A ControlNet whose copy starts from ``unet``'s weights (its image layers; temporal layers are left out)."""
        return cls(hint_channels=hint_channels, hint_block=hint_block, _from=unet)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.label_embed.null_label, dtype=torch.long, device=t.device)
            emb = emb + self.label_embed(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, **ctx_extra) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(down_residuals, mid_residual)`` for ``x`` (B, C, H, W) or a video (B, C, T, H, W) run frame by frame;
        ``hint`` is the control image (B, C_h, [T,] H_h, W_h) at ``hint_embed.downsample`` x the input's size."""
        if x.dim() == 5:
            b, _, frames = x.shape[:3]
            if hint.dim() != 5 or hint.shape[2] != frames:
                raise ValueError(f"a video of {frames} frames needs a per-frame hint (B, C, T, H, W), got "
                                 f"{tuple(hint.shape)}")
            rep = lambda z: None if z is None else z.repeat_interleave(frames, dim=0)  # noqa: E731
            t = torch.as_tensor(t, device=x.device).float().expand(b)
            x, hint = (rearrange(v, "b c t h w -> (b t) c h w") for v in (x, hint))
            t, y, context = rep(t), rep(y), rep(context)
        if hint.shape[1] != self.hint_channels:
            raise ValueError(f"the hint has {hint.shape[1]} channels, this ControlNet takes {self.hint_channels}")
        want = tuple(s * self.hint_embed.downsample for s in x.shape[-2:])
        if tuple(hint.shape[-2:]) != want:
            raise ValueError(f"the hint is {tuple(hint.shape[-2:])}, expected {want} (the input's size x "
                             f"{self.hint_embed.downsample})")
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        emb = self.embed(t, y)
        ctx = {"num_frames": 1, "context": context, **{k: v for k, v in ctx_extra.items() if k != "num_frames"}}
        h, outs = x, []
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, ctx)
            if i == 0:
                h = h + self.hint_embed(hint.to(h.dtype))
            outs.append(zero(h))
        h = self.middle_block(h, emb, ctx)
        return outs, self.middle_out(h)


class ControlledUNet(nn.Module):
    """A base U-Net (image or inflated video U-Net; frozen unless ``freeze_base=False``) steered by a
    :class:`ControlNet`: ``forward(x, t, control=hint, conditioning_scale=s, ...)``. Without ``control`` — or with a
    ControlNet at initialisation — the output is the base's, bit for bit."""

    def __init__(self, base: UNet, controlnet: ControlNet, conditioning_scale: float = 1.0, freeze_base: bool = True):
        super().__init__()
        if controlnet.in_channels != base.in_channels:
            raise ValueError(f"the ControlNet takes {controlnet.in_channels} input channels, the base "
                             f"{base.in_channels}")
        self.base, self.controlnet, self.conditioning_scale = base, controlnet, float(conditioning_scale)
        if freeze_base:
            self.base.requires_grad_(False)
        # what the conditioning seam and the samplers read off a network
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.num_classes, self.context_dim = base.num_classes, base.context_dim

    @property
    def null_label(self):
        return self.base.null_label

    def forward(self, x, t, control: torch.Tensor | None = None, y=None, context=None,
                conditioning_scale: float | None = None, **ctx_extra):
        if control is None:
            return self.base(x, t, y=y, context=context, **ctx_extra)
        down, mid = self.controlnet(x, t, control, y=y, context=context, **ctx_extra)
        s = self.conditioning_scale if conditioning_scale is None else float(conditioning_scale)
        if s != 1.0:
            down, mid = [d * s for d in down], mid * s
        return self.base(x, t, y=y, context=context, down_residuals=down, mid_residual=mid, **ctx_extra)


@buildable
def controlled_unet(base: UNet, hint_channels: int = 3, hint_block: Sequence[int] = (16, 32, 96, 256),
                    base_weights: str | None = None, controlnet_weights: str | None = None,
                    conditioning_scale: float = 1.0, freeze_base: bool = True) -> ControlledUNet:
    """Hydra target: ``base`` (its trained weights loaded strictly from ``base_weights``, a state dict of the bare
    net) with a ControlNet copied from it (Sec. 3.2) — or loaded from ``controlnet_weights`` (ours, diffusers' or
    the original layout, :func:`load_controlnet`)."""
    from shared.nn.weights import load_state_dict_strict, read_state_dict

    if base_weights:
        load_state_dict_strict(base, read_state_dict(base_weights), what=f"base U-Net weights {base_weights}")
    cn = ControlNet.from_unet(base, hint_channels, hint_block)
    if controlnet_weights:
        load_controlnet(controlnet_weights, into=cn)
    return ControlledUNet(base, cn, conditioning_scale, freeze_base)


# ------------------------------------------------------------------------------------------ weight layouts
class _EncoderView(nn.Module):
    """The ControlNet's copied layers under a U-Net's names, with no decoder (for ``sd_unet.diffusers_key_map``)."""

    def __init__(self, cn: ControlNet):
        super().__init__()
        self.time_embed, self.input_blocks, self.middle_block = cn.time_embed, cn.input_blocks, cn.middle_block
        self.output_blocks = nn.ModuleList()


LAYOUTS = ("ours", "diffusers", "original")


def controlnet_key_map(cn: ControlNet, layout: str = "diffusers") -> dict[str, str]:
    """``{our key: the layout's key}`` for every tensor of ``cn`` (``"original"`` without the ``control_model.``
    prefix of full ``control_sd15_*.pth`` checkpoints)."""
    from shared.nn.sd_unet import diffusers_key_map

    if layout == "ours":
        return {k: k for k in cn.state_dict()}
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if cn.label_embed is not None:
        raise ValueError("the diffusers / original ControlNet layouts have no class-label embedding")
    mapping = diffusers_key_map(_EncoderView(cn), "diffusers" if layout == "diffusers" else "compvis")
    n_blocks = len(cn.hint_embed.blocks)
    for key in cn.state_dict():
        head, _, param = key.rpartition(".")
        if head == "hint_embed.conv_in":
            theirs = "controlnet_cond_embedding.conv_in" if layout == "diffusers" else "input_hint_block.0"
        elif head.startswith("hint_embed.blocks."):
            j = int(head.rsplit(".", 1)[1])
            theirs = (f"controlnet_cond_embedding.blocks.{j}" if layout == "diffusers"
                      else f"input_hint_block.{2 * j + 2}")
        elif head == "hint_embed.conv_out":
            theirs = ("controlnet_cond_embedding.conv_out" if layout == "diffusers"
                      else f"input_hint_block.{2 * n_blocks + 2}")
        elif head.startswith("zero_convs."):
            i = int(head.rsplit(".", 1)[1])
            theirs = f"controlnet_down_blocks.{i}" if layout == "diffusers" else f"zero_convs.{i}.0"
        elif head == "middle_out":
            theirs = "controlnet_mid_block" if layout == "diffusers" else "middle_block_out.0"
        else:
            continue
        mapping[key] = f"{theirs}.{param}"
    missing = sorted(set(cn.state_dict()) - set(mapping))
    if missing:  # a layer the public layouts do not have (e.g. a LoRA) — refuse rather than drop it
        raise ValueError(f"no {layout} name for {missing[:3]}")
    return mapping


def _detect_layout(state: dict) -> tuple[str, dict]:
    prefix = "control_model."
    if any(k.startswith(prefix) for k in state):  # a full control_sd15_*.pth (SD weights beside the ControlNet)
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return "original", state
    if any(k.startswith("controlnet_cond_embedding.") for k in state):
        return "diffusers", state
    if any(k.startswith("input_hint_block.") for k in state):
        return "original", state
    if any(k.startswith("hint_embed.") for k in state):
        return "ours", state
    raise ValueError("not a ControlNet state dict: none of hint_embed.*, controlnet_cond_embedding.*, "
                     "input_hint_block.* or control_model.* keys")


def convert_controlnet_state_dict(state: dict[str, torch.Tensor], cn: ControlNet, layout: str | None = None
                                  ) -> dict[str, torch.Tensor]:
    """``state`` (``layout``, detected when None) renamed onto ``cn``'s keys; ``ValueError`` naming the first
    missing / unexpected / mis-shaped keys in one line when they do not fit."""
    detected, state = _detect_layout(state)
    layout = layout or detected
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    mapping = controlnet_key_map(cn, layout)
    own = cn.state_dict()
    missing = [theirs for theirs in mapping.values() if theirs not in state]
    used = set(mapping.values())
    unexpected = [k for k in state if k not in used]
    shapes = [f"{theirs} {tuple(state[theirs].shape)} vs {tuple(own[ours].shape)}" for ours, theirs in mapping.items()
              if theirs in state and tuple(state[theirs].shape) != tuple(own[ours].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {w}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
                 for w, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if v]
        raise ValueError(f"{layout} ControlNet state dict does not fit this ControlNet: " + "; ".join(parts))
    return {ours: state[theirs] for ours, theirs in mapping.items()}


def sd15_controlnet(hint_channels: int = 3, **unet_overrides) -> ControlNet:
    """SD-1.5's ControlNet (random weights): the SD-1.5 U-Net's encoder, the 8x hint encoder 16-32-96-256."""
    from shared.nn.sd_unet import sd15_unet_kwargs

    return ControlNet(sd15_unet_kwargs(**unet_overrides), hint_channels, (16, 32, 96, 256))


def _from_diffusers_config(config: dict) -> ControlNet:
    from shared.nn.sd_unet import kwargs_from_diffusers_config

    cfg = {k: v for k, v in config.items() if k not in ("conditioning_channels",
                                                        "conditioning_embedding_out_channels")}
    order = config.get("controlnet_conditioning_channel_order", "rgb")
    if order != "rgb":
        raise ValueError(f"unsupported ControlNet config: controlnet_conditioning_channel_order={order!r} (need 'rgb')")
    down = cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    cfg.setdefault("up_block_types", [d.replace("Down", "Up") for d in reversed(down)])  # a ControlNet has no decoder
    kwargs = kwargs_from_diffusers_config(cfg)
    return ControlNet(kwargs, int(config.get("conditioning_channels", 3)),
                      tuple(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))))


def load_controlnet(path: str | Path, into: ControlNet | None = None, hint_channels: int = 3,
                    **unet_overrides) -> ControlNet:
    """A ControlNet from a local path (nothing is downloaded), loaded strictly:

    * a diffusers ``ControlNetModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) — the config
      gives the architecture;
    * a single ``.safetensors`` / ``.pth`` / ``.ckpt`` file in the diffusers layout or the original one (a full
      ``control_sd15_*.pth`` with the SD model beside ``control_model.*``, or a ``control_v11*`` file of bare
      ``input_hint_block`` / ``zero_convs`` keys) — SD-1.5's architecture (``hint_channels``, ``unet_overrides``);
    * our own export (``hint_embed.*`` keys).

    ``into``: load into this ControlNet instead of building one."""
    from shared.nn.sd_unet import find_component
    from shared.nn.weights import read_state_dict

    weights, config = find_component(path, "controlnet", ("diffusion_pytorch_model.safetensors",
                                                          "diffusion_pytorch_model.bin"), "ControlNet")
    if into is not None:
        cn = into
    elif config is not None:
        cn = _from_diffusers_config(config)
    else:
        cn = sd15_controlnet(hint_channels, **unet_overrides)
    state = read_state_dict(weights, "ControlNet weights")
    try:
        converted = convert_controlnet_state_dict(state, cn)
    except ValueError as e:
        raise ValueError(f"{weights}: {e}") from None
    cn.load_state_dict(converted, strict=True)
    return cn
