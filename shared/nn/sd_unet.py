"""Stable Diffusion 1.5's U-Net in our layout, and loaders for its released weights.

:func:`sd15_unet_kwargs` is SD-1.5's ``UNet2DConditionModel`` (diffusers) / ``UNetModel`` (CompVis
``v1-inference.yaml``) as arguments of :class:`shared.nn.unet.UNet`: 4 latent channels in and out, widths
320·(1, 2, 4, 4), 2 residual blocks per level, spatial transformers (8 heads, depth 1, 1×1-conv projections,
text context 768 = CLIP ViT-L/14) at the first three levels and in the middle, GroupNorm eps 1e-5 —
859,520,964 parameters, the same as diffusers' (``tests/test_sd_unet.py``). Our U-Net follows the CompVis/ADM
layout (``input_blocks`` / ``middle_block`` / ``output_blocks``), so:

* :func:`diffusers_to_ours` renames a diffusers state dict (``conv_in``, ``time_embedding.linear_1/2``,
  ``down_blocks.i.{resnets,attentions}.j``, ``down_blocks.i.downsamplers.0.conv``, ``mid_block``,
  ``up_blocks.i.{resnets,attentions}.j``, ``up_blocks.i.upsamplers.0.conv``, ``conv_norm_out``, ``conv_out``)
  onto our names, walking the target U-Net, and raises ONE ``ValueError`` naming the first missing /
  unexpected / mis-shaped keys;
* :func:`compvis_to_ours` does the same for the original single-file checkpoint
  (``model.diffusion_model.input_blocks...``: only the residual blocks' and the two embeddings' sub-names differ);
* :func:`load_sd_unet` builds the U-Net from a local diffusers folder (``unet/config.json`` +
  ``diffusion_pytorch_model.safetensors``, or the ``unet`` folder itself; the config is translated by
  :func:`kwargs_from_diffusers_config`) or a single ``.safetensors`` / ``.ckpt`` file (SD-1.5 config unless
  overridden) and loads the weights strictly. Nothing is downloaded.

Numerics match diffusers (``tests/test_sd_unet.py``: on a random tiny model in float32 on CPU the outputs were
bit-identical, max abs difference 0.0; the tests assert < 1e-4):
the time embedding is already SD's ([cos, sin], diffusers ``flip_sin_to_cos=True, freq_shift=0``), the residual
and output GroupNorms take ``norm_eps`` (1e-5), the transformers' GroupNorm 1e-6 and LayerNorms 1e-5.

Videos: the loaded model is an ordinary :class:`~shared.nn.unet.UNet`, so ``shared.nn.video.video_from_image`` /
``inflate_unet`` (``insert="attention"`` recognises the spatial transformer) and
``shared.nn.motion_module.from_image_model`` inflate it, and ``UNet.forward(x, t, context=...)`` repeats the
text context per frame for 5-D input.

Paper-scale configs: ``conf/model/unet_sd15.yaml`` builds the SD-1.5 U-Net
(``_target_: shared.nn.sd_unet.sd15_unet``, optionally ``weights: /path/to/stable-diffusion-v1-5`` which calls
:func:`load_sd_unet`). A paper that needs SD-1.5 (AnimateDiff's ``conf/model/animatediff_sd15.yaml``, Video
LDM text-to-video, InstaFlow) points its ``image:`` node at that target instead of a bare
``shared.nn.unet.UNet`` with SD widths, and passes CLIP text embeddings (B, 77, 768) as ``context``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from shared.nn.build import buildable
from shared.nn.layers import CtxSequential, Downsample, ResBlock, Upsample
from shared.nn.spatial_transformer import SpatialTransformer
from shared.nn.unet import UNet
from shared.nn.weights import read_state_dict

__all__ = ["sd15_unet_kwargs", "sd15_unet", "kwargs_from_diffusers_config", "diffusers_key_map",
           "diffusers_to_ours", "compvis_to_ours", "load_sd_unet"]


def sd15_unet_kwargs(**overrides) -> dict:
    """SD-1.5's U-Net as :class:`UNet` keyword arguments (64×64 latents: attention at 64, 32, 16)."""
    kwargs = dict(in_channels=4, out_channels=4, image_size=64, base_channels=320, channel_mult=(1, 2, 4, 4),
                  num_res_blocks=2, attention_resolutions=(64, 32, 16), dropout=0.0, num_classes=None,
                  num_heads=8, head_channels=-1, norm_groups=32, context_dim=768, transformer_depth=1,
                  use_linear_proj=False, norm_eps=1e-5)
    kwargs.update(overrides)
    return kwargs


@buildable
def sd15_unet(weights: str | Path | None = None, **overrides) -> UNet:
    """SD-1.5's U-Net, randomly initialised or (``weights``) loaded with :func:`load_sd_unet`."""
    if weights is not None:
        return load_sd_unet(weights, **overrides)
    return UNet(**sd15_unet_kwargs(**overrides))


# ------------------------------------------------------------------------------------------ diffusers config
_REQUIRED = {"flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "center_input_sample": False,
             "downsample_padding": 1, "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default",
             "time_embedding_type": "positional", "conv_in_kernel": 3, "conv_out_kernel": 3,
             "class_embed_type": None, "addition_embed_type": None, "encoder_hid_dim": None,
             "time_cond_proj_dim": None, "dual_cross_attention": False, "only_cross_attention": False,
             "mid_block_type": "UNetMidBlock2DCrossAttn", "num_class_embeds": None, "attention_type": "default",
             "cross_attention_norm": None, "timestep_post_act": None, "time_embedding_act_fn": None,
             "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
             "reverse_transformer_layers_per_block": None}


def _same(value, wanted) -> bool:
    if wanted is False or wanted is None:  # bools may come per level as lists
        return not any(value) if isinstance(value, (list, tuple)) else not value
    return value == wanted


def kwargs_from_diffusers_config(config: dict) -> dict:
    """A diffusers ``UNet2DConditionModel`` config (``unet/config.json``) as :class:`UNet` keyword arguments.

    Supports the SD-1.x / 2.x family (cross-attention down/up blocks and plain ones, uniform heads or uniform
    head width, integer transformer depth); anything else raises ``ValueError`` naming the option."""
    bad = [f"{k}={config[k]!r} (need {v!r})" for k, v in _REQUIRED.items() if k in config and not _same(config[k], v)]
    widths = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    base = widths[0]
    if any(w % base for w in widths):
        bad.append(f"block_out_channels={widths} (need multiples of the first)")
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        bad.append(f"layers_per_block={layers!r} (need one int)")
    depth = config.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            bad.append(f"transformer_layers_per_block={depth!r} (need one value)")
        depth = depth[0]
    down = list(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    up = list(config.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    attn_levels = [d.startswith("CrossAttn") for d in down]
    if [u.startswith("CrossAttn") for u in reversed(up)] != attn_levels or len(down) != len(widths):
        bad.append(f"down_block_types={down} / up_block_types={up} (need mirrored cross-attention levels)")
    if bad:
        raise ValueError("unsupported diffusers UNet config: " + "; ".join(bad))
    size = config.get("sample_size") or 64  # latent size (SD-1.5: 64); only places the attention levels
    size = size[0] if isinstance(size, (list, tuple)) else size
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)  # diffusers' misnomer
    heads = [heads] * len(widths) if isinstance(heads, int) else list(heads)
    num_heads, head_channels = heads[0], -1
    if len(set(heads)) != 1:
        dims = {w // h for w, h in zip(widths, heads)}
        if len(dims) != 1:
            raise ValueError(f"unsupported diffusers UNet config: heads {heads} at widths {widths} are neither "
                             "uniform in number nor in width")
        num_heads, head_channels = -1, dims.pop()
    return dict(in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
                image_size=size, base_channels=base, channel_mult=tuple(w // base for w in widths),
                num_res_blocks=layers, attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attn_levels)
                                                                   if a),
                dropout=config.get("dropout", 0.0), num_classes=None, num_heads=num_heads,
                head_channels=head_channels, norm_groups=config.get("norm_num_groups", 32),
                context_dim=config.get("cross_attention_dim", 768), transformer_depth=depth,
                use_linear_proj=bool(config.get("use_linear_projection", False)),
                norm_eps=config.get("norm_eps", 1e-5))


# ------------------------------------------------------------------------------------------ key mapping
_RES_DIFFUSERS = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "skip": "conv_shortcut"}
_RES_COMPVIS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "skip": "skip_connection"}


def _spatial_members(block: CtxSequential):
    """(index, module) of the image layers of a U-Net block (temporal layers added by inflation skipped)."""
    return [(i, m) for i, m in enumerate(block) if isinstance(m, (ResBlock, SpatialTransformer, Downsample,
                                                                   Upsample, nn.Conv2d))]


def _module_map(unet: UNet, layout: str) -> list[tuple[str, str, nn.Module]]:
    """(our prefix, checkpoint prefix, module) for every image layer of ``unet``."""
    out: list[tuple[str, str, nn.Module]] = []
    if layout == "compvis":
        for part in ("input_blocks", "output_blocks"):
            for n, block in enumerate(getattr(unet, part)):
                out += [(f"{part}.{n}.{i}", f"{part}.{n}.{i}", m) for i, m in _spatial_members(block)]
        out += [(f"middle_block.{i}", f"middle_block.{i}", m) for i, m in _spatial_members(unet.middle_block)]
        return out + [("time_embed.mlp.0", "time_embed.0", None), ("time_embed.mlp.2", "time_embed.2", None),
                      ("out_norm", "out.0", None), ("out_conv", "out.2", None)]
    level, j = 0, 0
    for n, block in enumerate(unet.input_blocks):
        for i, m in _spatial_members(block):
            ours = f"input_blocks.{n}.{i}"
            if n == 0:
                out.append((ours, "conv_in", m))
            elif isinstance(m, Downsample):
                out.append((ours + ".op", f"down_blocks.{level}.downsamplers.0.conv", None))
            elif isinstance(m, ResBlock):
                out.append((ours, f"down_blocks.{level}.resnets.{j}", m))
            elif isinstance(m, SpatialTransformer):
                out.append((ours, f"down_blocks.{level}.attentions.{j}", m))
        if n == 0:
            continue
        if any(isinstance(m, Downsample) for _, m in _spatial_members(block)):
            level, j = level + 1, 0
        else:
            j += 1
    res_i = attn_i = 0
    for i, m in _spatial_members(unet.middle_block):
        if isinstance(m, ResBlock):
            out.append((f"middle_block.{i}", f"mid_block.resnets.{res_i}", m))
            res_i += 1
        elif isinstance(m, SpatialTransformer):
            out.append((f"middle_block.{i}", f"mid_block.attentions.{attn_i}", m))
            attn_i += 1
    per_level = unet_num_res_blocks(unet) + 1
    for n, block in enumerate(unet.output_blocks):
        level, j = divmod(n, per_level)
        for i, m in _spatial_members(block):
            ours = f"output_blocks.{n}.{i}"
            if isinstance(m, Upsample):
                out.append((ours + ".conv", f"up_blocks.{level}.upsamplers.0.conv", None))
            elif isinstance(m, ResBlock):
                out.append((ours, f"up_blocks.{level}.resnets.{j}", m))
            elif isinstance(m, SpatialTransformer):
                out.append((ours, f"up_blocks.{level}.attentions.{j}", m))
    return out + [("time_embed.mlp.0", "time_embedding.linear_1", None),
                  ("time_embed.mlp.2", "time_embedding.linear_2", None),
                  ("out_norm", "conv_norm_out", None), ("out_conv", "conv_out", None)]


def unet_num_res_blocks(unet: UNet) -> int:
    """Residual blocks per level, read off the built U-Net (output blocks hold one more per level)."""
    levels = 1 + sum(isinstance(m, Upsample) for block in unet.output_blocks for m in block)
    return len(unet.output_blocks) // levels - 1


def diffusers_key_map(unet: UNet, layout: str = "diffusers") -> dict[str, str]:
    """``{our state-dict key: checkpoint key}`` for every image-layer tensor of ``unet`` (``layout`` is
    ``"diffusers"`` or ``"compvis"``, the latter without the ``model.diffusion_model.`` prefix)."""
    res_names = _RES_DIFFUSERS if layout == "diffusers" else _RES_COMPVIS
    ours_state = unet.state_dict()
    mapping = {}
    for ours, theirs, module in _module_map(unet, layout):
        for key in ours_state:
            if not key.startswith(ours + "."):
                continue
            suffix = key[len(ours) + 1:]
            if isinstance(module, ResBlock):
                head, _, rest = suffix.partition(".")
                suffix = f"{res_names[head]}.{rest}"
            mapping[key] = f"{theirs}.{suffix}"
    return mapping


def _convert(state_dict: dict[str, torch.Tensor], unet: UNet, layout: str) -> dict[str, torch.Tensor]:
    mapping = diffusers_key_map(unet, layout)
    ours_state = unet.state_dict()
    missing = [theirs for theirs in mapping.values() if theirs not in state_dict]
    used = set(mapping.values())
    unexpected = [k for k in state_dict if k not in used]
    shapes = [f"{theirs} {tuple(state_dict[theirs].shape)} vs {tuple(ours_state[ours].shape)} for {ours}"
              for ours, theirs in mapping.items()
              if theirs in state_dict and tuple(state_dict[theirs].shape) != tuple(ours_state[ours].shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {what}: {', '.join(items[:5])}{more}")
        raise ValueError(f"{layout} state dict does not fit this U-Net: " + "; ".join(parts))
    return {ours: state_dict[theirs] for ours, theirs in mapping.items()}


def diffusers_to_ours(state_dict: dict[str, torch.Tensor], unet: UNet) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict renamed onto ``unet``'s keys (image layers only, so
    an inflated video U-Net gets its 2D weights; its temporal layers are left out). ``ValueError`` naming
    the first missing / unexpected / mis-shaped keys when the two do not fit."""
    return _convert(state_dict, unet, "diffusers")


def compvis_to_ours(state_dict: dict[str, torch.Tensor], unet: UNet) -> dict[str, torch.Tensor]:
    """The original CompVis checkpoint's U-Net (``model.diffusion_model.*``; other top-level modules — VAE,
    text encoder — are ignored) renamed onto ``unet``'s keys."""
    prefix = "model.diffusion_model."
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return _convert(state_dict, unet, "compvis")


# ------------------------------------------------------------------------------------------ loading
def find_component(path: str | Path, sub: str, names: tuple[str, ...], what: str) -> tuple[Path, dict | None]:
    """One component of a local Stable Diffusion folder in diffusers layout: ``(weights file, config.json)`` from
    ``<path>/<sub>/`` or from the component folder itself (the first of ``names`` present; sharded or
    fp16-variant folders are not supported); a file path comes back as is with no config."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} weights at {path} (a diffusers folder or a .safetensors/.ckpt file)")
    if not path.is_dir():
        return path, None
    folder = path / sub if (path / sub / "config.json").exists() else path
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{path} has neither {sub}/config.json nor config.json (a diffusers {what} folder)")
    weights = next((folder / n for n in names if (folder / n).exists()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {' or '.join(names)} (sharded or fp16-variant folders are not "
                                "supported)")
    return weights, json.loads((folder / "config.json").read_text())


def load_sd_unet(path: str | Path, **overrides) -> UNet:
    """Our :class:`UNet` with SD weights from a local path (no downloads):

    * a diffusers pipeline folder (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``) or the
      ``unet`` folder itself — the config gives the architecture (:func:`kwargs_from_diffusers_config`);
    * a single ``.safetensors`` / ``.ckpt`` file, diffusers keys or CompVis ``model.diffusion_model.*`` keys —
      the SD-1.5 architecture (:func:`sd15_unet_kwargs`).

    ``overrides`` replace U-Net arguments (e.g. ``use_checkpoint=True``; ``image_size`` only moves which
    resolutions count as attention levels, so change it together with ``attention_resolutions``)."""
    weights, config = find_component(path, "unet", ("diffusion_pytorch_model.safetensors",
                                                     "diffusion_pytorch_model.bin"), "SD U-Net")
    if config is not None:
        kwargs = kwargs_from_diffusers_config(config)
        kwargs.update(overrides)
        unet = UNet(**kwargs)
        state = diffusers_to_ours(read_state_dict(weights), unet)
    else:
        unet = UNet(**sd15_unet_kwargs(**overrides))
        raw = read_state_dict(weights)
        compvis = any(k.startswith(("model.diffusion_model.", "input_blocks.")) for k in raw)
        state = compvis_to_ours(raw, unet) if compvis else diffusers_to_ours(raw, unet)
    unet.load_state_dict(state, strict=True)
    return unet
