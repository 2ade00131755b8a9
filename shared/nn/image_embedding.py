"""Image-embedding conditioning: an image (a reference frame) -> cross-attention tokens.

Gen-1 (Esser et al., ICCV 2023, Sec. 3.3) represents a video's *content* by the CLIP image embedding of one of its
frames, given to the U-Net through its cross-attention layers (the text path of Stable Diffusion); image-to-video
models (SVD, Animate Anyone) do the same with a reference image. Two pieces:

* :class:`ImageEmbedder` — ``backbone`` (frozen unless ``trainable_backbone``; its ``features(x)`` or its output is
  a (B, D) embedding) followed by a trainable linear map to ``tokens`` tokens of width ``context_dim``. A video
  input (B, C, T, H, W) is embedded from its frame ``frame``. Declared as a condition's encoder
  (``shared.methods.conditions.TensorCondition(key=..., kwarg="context", encoder=..., drop_encoded=True)``), its null
  is the zero embedding, as SVD drops its CLIP embedding.
* :class:`CLIPImageEncoder` — CLIP's image tower (Radford et al. 2021; ViT-L/14 at paper scale: patch 14, width 1024,
  24 layers, 16 heads, a 768-d projection), with the key names of ``transformers``' ``CLIPVisionModelWithProjection``
  (``vision_model.embeddings.{class_embedding, patch_embedding, position_embedding}``, ``vision_model.pre_layrnorm``,
  ``vision_model.encoder.layers.{i}.*`` as the text tower's, ``vision_model.post_layernorm``,
  ``visual_projection``). ``forward`` takes images in [-1, 1] at any size (resized to ``image_size``, CLIP's
  normalisation) and returns the projected image embedding (B, projection_dim). :func:`load_clip_image_encoder`
  loads released weights from a local path, strictly; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.build import buildable
from shared.nn.text_encoder import _Encoder, _Layer

__all__ = ["ImageEmbedder", "image_embedder", "CLIPImageEncoder", "vit_l14_kwargs", "load_clip_image_encoder",
           "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEmbedder(nn.Module):
    """Images -> ``(B, tokens, context_dim)`` (see the module docstring)."""

    def __init__(self, backbone: nn.Module, embed_dim: int, context_dim: int, tokens: int = 1,
                 trainable_backbone: bool = False, frame: int = 0):
        super().__init__()
        self.backbone, self.trainable_backbone = backbone, bool(trainable_backbone)
        self.embed_dim, self.context_dim, self.tokens, self.frame = int(embed_dim), int(context_dim), int(tokens), \
            int(frame)
        self.backbone.requires_grad_(self.trainable_backbone)
        if not self.trainable_backbone:
            self.backbone.eval()
        self.proj = nn.Linear(self.embed_dim, self.tokens * self.context_dim)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable_backbone:
            self.backbone.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's (B, embed_dim) embedding of images (B, C, H, W) or of frame ``frame`` of videos."""
        if images.dim() == 5:
            images = images[:, :, self.frame]
        if images.dim() != 4:
            raise ValueError(f"ImageEmbedder takes images (B, C, H, W) or videos (B, C, T, H, W), got "
                             f"{tuple(images.shape)}")
        with torch.set_grad_enabled(self.trainable_backbone and torch.is_grad_enabled()):
            fn = getattr(self.backbone, "features", None) or self.backbone
            e = fn(images)
        if e.dim() != 2 or e.shape[1] != self.embed_dim:
            raise ValueError(f"the backbone gives embeddings of shape {tuple(e.shape)}, expected (B, {self.embed_dim})")
        return e

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        e = self.embed(images)
        return self.proj(e.to(self.proj.weight.dtype)).view(e.shape[0], self.tokens, self.context_dim)


@buildable
def image_embedder(backbone: nn.Module, embed_dim: int, context_dim: int, tokens: int = 1,
                   trainable_backbone: bool = False, frame: int = 0) -> ImageEmbedder:
    return ImageEmbedder(backbone, embed_dim, context_dim, tokens, trainable_backbone, frame)


# ------------------------------------------------------------------------------------------ CLIP image tower
def vit_l14_kwargs(**overrides) -> dict:
    """CLIP ViT-L/14's image tower (the encoder of Gen-1's content embeddings): 224 px, patch 14, width 1024, 24
    layers, 16 heads, MLP 4096, QuickGELU, projection to 768."""
    return {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24, "heads": 16, "mlp_dim": 4096,
            "projection_dim": 768, "act": "quick_gelu", "eps": 1e-5, **overrides}


class _VisionEmbeddings(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.02)
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2 + 1, width)
        nn.init.normal_(self.position_embedding.weight, std=0.01)


class _VisionModel(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, mlp_dim, act, eps):
        super().__init__()
        self.embeddings = _VisionEmbeddings(image_size, patch_size, width)
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)   # sic: the released checkpoints' spelling
        self.encoder = _Encoder([_Layer(width, heads, mlp_dim, act, eps, causal=False) for _ in range(layers)])
        self.post_layernorm = nn.LayerNorm(width, eps=eps)


class CLIPImageEncoder(nn.Module):
    """Images in [-1, 1] -> CLIP image embeddings (B, projection_dim) (see the module docstring)."""

    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1024, layers: int = 24,
                 heads: int = 16, mlp_dim: int | None = None, projection_dim: int = 768, act: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.width = int(image_size), int(patch_size), int(width)
        self.projection_dim = int(projection_dim)
        self.vision_model = _VisionModel(image_size, patch_size, width, layers, heads, mlp_dim or 4 * width, act, eps)
        self.visual_projection = nn.Linear(width, projection_dim, bias=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> CLIP's input: [0, 1], bicubic resize to ``image_size``, normalised."""
        x = (images.float() + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=x.shape[-1] > self.image_size).clamp(0, 1)
        return (x - self.mean) / self.std

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """The post-LayerNorm class token of normalised ``pixels`` (B, 3, image_size, image_size)."""
        vm = self.vision_model
        x = vm.embeddings.patch_embedding(pixels.to(vm.embeddings.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = vm.embeddings.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vm.embeddings.position_embedding.weight[None]
        x = vm.pre_layrnorm(x)
        for layer in vm.encoder.layers:
            x = layer(x)
        return vm.post_layernorm(x[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.pooled(self.preprocess(images)))


def _vision_config_kwargs(config: dict) -> dict:
    vc = config.get("vision_config", config)
    proj = config.get("projection_dim", vc.get("projection_dim", 512))
    return {"image_size": vc.get("image_size", 224), "patch_size": vc.get("patch_size", 32),
            "width": vc["hidden_size"], "layers": vc["num_hidden_layers"], "heads": vc["num_attention_heads"],
            "mlp_dim": vc.get("intermediate_size"), "projection_dim": proj,
            "act": vc.get("hidden_act", "quick_gelu"), "eps": vc.get("layer_norm_eps", 1e-5)}


def load_clip_image_encoder(path: str | Path, **overrides) -> CLIPImageEncoder:
    """A :class:`CLIPImageEncoder` with released weights from a local path (nothing is downloaded):

    * a folder with ``config.json`` (a ``CLIPVisionConfig``, or a ``CLIPConfig`` whose ``vision_config`` it reads)
      and ``model.safetensors`` / ``pytorch_model.bin`` — an ``image_encoder/`` subfolder of a pipeline is found too;
    * a single ``.safetensors`` / ``.bin`` file — ViT-L/14's architecture (:func:`vit_l14_kwargs`, ``overrides``).

    A full CLIP model's text tower (``text_model.*``, ``text_projection``, ``logit_scale``) is ignored; the image
    tower's tensors must match exactly (one-line error naming the first missing / unexpected / mis-shaped key)."""
    from shared.nn.sd_unet import find_component
    from shared.nn.weights import read_state_dict

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no CLIP image-encoder weights at {path} (expected a folder with config.json and "
                                "model.safetensors, or a .safetensors/.bin file)")
    weights, config = find_component(path, "image_encoder", ("model.safetensors", "pytorch_model.bin"),
                                     "CLIP image-encoder")
    kwargs = {**_vision_config_kwargs(config), **overrides} if config else vit_l14_kwargs(**overrides)
    state = read_state_dict(weights, "CLIP image-encoder weights")
    state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))
             and not k.endswith("position_ids")}
    if not state:
        raise ValueError(f"{weights} holds no CLIP image-tower tensors (vision_model.* / visual_projection.*)")
    enc = CLIPImageEncoder(**kwargs)
    mine = enc.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = sorted(k for k in set(mine) & set(state) if mine[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(mine[shapes[0]].shape)}")
        raise ValueError(f"{weights} does not match a CLIP image encoder of {kwargs}: {detail}")
    enc.load_state_dict(state, strict=True)
    return enc


@buildable
def clip_image_encoder(weights: str | None = None, **kwargs) -> CLIPImageEncoder:
    """Hydra target: released weights from a local ``weights`` path, or a fresh tower of ``kwargs``."""
    return load_clip_image_encoder(weights) if weights else CLIPImageEncoder(**kwargs)
