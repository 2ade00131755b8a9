"""CLIP's image tower with its projection (Radford et al. 2021; transformers ``CLIPVisionModelWithProjection``) from a
local folder: the reference-image embedding Animate Anyone feeds to the denoiser's cross-attention in place of the
text embedding (Hu et al. 2024, Sec. 3.2; the public re-implementation uses ``sd-image-variations-diffusers/
image_encoder``, a ViT-L/14 whose projected embedding has 768 dimensions — SD-1.5's context width).

Layout (sub-module names are transformers', so released files load one to one): ``vision_model.embeddings.{
class_embedding, patch_embedding (conv, no bias), position_embedding}``, ``vision_model.pre_layrnorm``,
``vision_model.encoder.layers.k.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`` (the text
tower's layers of ``shared/nn/text_encoder.py`` without the causal mask), ``vision_model.post_layernorm``,
``visual_projection`` (no bias). ``image_embeds = visual_projection(post_layernorm(h[:, 0]))`` (the class token).

:class:`CLIPImageEmbedder` takes images in [-1, 1] of any size, resizes them to ``image_size`` (bilinear with
antialiasing; transformers' ``CLIPImageProcessor`` resizes bicubically and centre-crops — a documented difference)
and normalises with CLIP's mean/std, and returns ``(B, 1, projection_dim)`` context tokens; frozen by default
(Animate Anyone freezes it). Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.build import buildable
from shared.nn.text_encoder import _Encoder, _Layer

__all__ = ["CLIPVisionEncoder", "CLIPImageEmbedder", "load_clip_vision_encoder", "clip_image_encoder",
           "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _VisionEmbeddings(nn.Module):
    def __init__(self, width: int, image_size: int, patch_size: int, channels: int = 3):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.02)
        self.patch_embedding = nn.Conv2d(channels, width, patch_size, stride=patch_size, bias=False)
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, width)


class _VisionModel(nn.Module):
    def __init__(self, width, image_size, patch_size, layers, heads, mlp_dim, act, eps):
        super().__init__()
        self.embeddings = _VisionEmbeddings(width, image_size, patch_size)
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)  # (sic: transformers' name)
        self.encoder = _Encoder([_Layer(width, heads, mlp_dim, act, eps, causal=False) for _ in range(layers)])
        self.post_layernorm = nn.LayerNorm(width, eps=eps)


class CLIPVisionEncoder(nn.Module):
    """Normalised pixels ``(B, 3, image_size, image_size)`` -> projected image embeddings ``(B, projection_dim)``."""

    def __init__(self, width: int = 1024, image_size: int = 224, patch_size: int = 14, layers: int = 24,
                 heads: int = 16, mlp_dim: int | None = None, projection_dim: int = 768, act: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.projection_dim = int(image_size), int(projection_dim)
        self.vision_model = _VisionModel(width, image_size, patch_size, layers, heads, mlp_dim or 4 * width, act, eps)
        self.visual_projection = nn.Linear(width, projection_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        if pixels.ndim != 4 or pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            raise ValueError(f"CLIP's image tower takes (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(pixels.shape)}")
        e = vm.embeddings
        patches = e.patch_embedding(pixels.to(e.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = e.class_embedding.expand(pixels.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + e.position_embedding.weight[None]
        x = vm.pre_layrnorm(x)
        for layer in vm.encoder.layers:
            x = layer(x)
        return self.visual_projection(vm.post_layernorm(x[:, 0]))


class CLIPImageEmbedder(nn.Module):
    """Images in [-1, 1] -> ``(B, 1, projection_dim)`` context tokens (module docstring)."""

    def __init__(self, encoder: CLIPVisionEncoder, frozen: bool = True):
        super().__init__()
        self.encoder, self.frozen = encoder, bool(frozen)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.encoder.requires_grad_(False).eval()

    @property
    def context_dim(self) -> int:
        return self.encoder.projection_dim

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        size = self.encoder.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=max(x.shape[-2:]) > size)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.encoder(self.preprocess(images))[:, None]


def _config_kwargs(config: dict) -> dict:
    cfg = config.get("vision_config", config)  # a full CLIPConfig nests the tower's
    return {"width": cfg["hidden_size"], "image_size": cfg.get("image_size", 224),
            "patch_size": cfg.get("patch_size", 14), "layers": cfg["num_hidden_layers"],
            "heads": cfg["num_attention_heads"], "mlp_dim": cfg.get("intermediate_size"),
            "projection_dim": config.get("projection_dim", cfg.get("projection_dim", 768)),
            "act": cfg.get("hidden_act", "quick_gelu"), "eps": cfg.get("layer_norm_eps", 1e-5)}


def load_clip_vision_encoder(path: str | Path, **overrides) -> CLIPVisionEncoder:
    """A :class:`CLIPVisionEncoder` from a local ``CLIPVisionModelWithProjection`` folder (``config.json`` +
    ``model.safetensors`` / ``pytorch_model.bin``; or a pipeline folder with ``image_encoder/``). Strict: a missing,
    unexpected or mis-shaped tensor is a one-line error."""
    from shared.nn.sd_unet import find_component
    from shared.nn.weights import read_state_dict

    weights, config = find_component(path, "image_encoder", ("model.safetensors", "pytorch_model.bin"),
                                     "CLIP image-encoder")
    if config is None:
        raise ValueError(f"{path}: a CLIP image encoder needs its config.json (a transformers folder)")
    kwargs = {**_config_kwargs(config), **overrides}
    state = {k: v for k, v in read_state_dict(weights).items() if not k.endswith("position_ids")}
    encoder = CLIPVisionEncoder(**kwargs)
    mine = encoder.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(mine[shapes[0]].shape)}")
        raise ValueError(f"{weights} does not match a CLIP image encoder of {kwargs}: {detail}")
    encoder.load_state_dict(state, strict=True)
    return encoder


@buildable
def clip_image_encoder(weights: str | None = None, frozen: bool = True, **encoder_kwargs) -> CLIPImageEmbedder:
    """Hydra target: CLIP's image tower from a local folder (``weights``) or a fresh one of ``encoder_kwargs``."""
    encoder = load_clip_vision_encoder(weights) if weights else CLIPVisionEncoder(**encoder_kwargs)
    return CLIPImageEmbedder(encoder, frozen=frozen)
