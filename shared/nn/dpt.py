"""MiDaS's DPT depth estimator (Ranftl, Bochkovskiy & Koltun, "Vision Transformers for Dense Prediction", ICCV 2021;
MiDaS v3 "DPT-Large") in the key layout of the released MiDaS weights — Gen-1's structure estimator at paper scale
(Esser et al. 2023, Sec. 3.3: "depth estimates from MiDaS").

    image in [-1, 1] (MiDaS's DPT normalisation: mean 0.5, std 0.5) -> ViT (timm's VisionTransformer layout,
    ``pretrained.model.*``; hooks after blocks 5, 11, 17, 23 for ViT-L/16) -> reassemble: readout projection
    (``act_postprocess{k}.0.project.0``: [token, cls] -> Linear -> GELU), tokens to a grid, a 1x1 conv and a
    x4 / x2 transposed conv, identity, or a stride-2 conv (``act_postprocess{k}.3/.4``) -> 3x3 convs to ``features``
    (``scratch.layer{k}_rn``) -> fusion (``scratch.refinenet{k}``: residual conv units ``resConfUnit1/2`` with
    ``conv1``/``conv2``, x2 bilinear upsampling, ``out_conv``) -> head (``scratch.output_conv.{0,2,4}``: 3x3 conv,
    x2 upsampling, 3x3 conv, ReLU, 1x1 conv, ReLU) -> inverse relative depth at the input's size.

:func:`dpt_large_kwargs` is DPT-Large (ViT-L/16 at 384, features 256); :func:`load_midas_dpt` reads a released
``dpt_large-midas-*.pt`` / ``dpt_large_384.pt`` (a state dict, or ``{"model": ...}``) from a local path, strictly.
The output is a disparity-like map (larger = nearer); :class:`shared.nn.structure.StructureEncoder` normalises it per
frame (``normalize="per_frame"``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.build import buildable

__all__ = ["ViTBackbone", "MidasDPT", "dpt_large_kwargs", "load_midas_dpt", "midas_dpt"]


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch_size, stride=patch_size)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width, eps=eps), _Attention(width, heads)
        self.norm2, self.mlp = nn.LayerNorm(width, eps=eps), _Mlp(width, int(width * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """A ViT in timm's ``VisionTransformer`` key layout (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``); :meth:`hooked` returns
    the token sequences after the blocks ``hooks``, with the position embedding resized bilinearly to the input's
    grid (MiDaS's ``forward_flex``)."""

    def __init__(self, image_size: int = 384, patch_size: int = 16, width: int = 1024, depth: int = 24,
                 heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000, eps: float = 1e-6):
        super().__init__()
        self.patch_size, self.grid = int(patch_size), int(image_size) // int(patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid ** 2 + 1, width) * 0.02)
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.blocks = nn.ModuleList([_Block(width, heads, mlp_ratio, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()

    def pos_embedding(self, gh: int, gw: int) -> torch.Tensor:
        tok, grid = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear").permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([tok, grid], dim=1)

    def hooked(self, x: torch.Tensor, hooks: Sequence[int]) -> list[torch.Tensor]:
        h = self.patch_embed.proj(x)
        gh, gw = h.shape[-2:]
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h.flatten(2).transpose(1, 2)], dim=1)
        h = h + self.pos_embedding(gh, gw)
        outs = []
        for i, block in enumerate(self.blocks[: max(hooks) + 1]):
            h = block(h)
            if i in hooks:
                outs.append(h)
        return outs


class _ProjectReadout(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, x):
        return self.project(torch.cat([x[:, 1:], x[:, :1].expand(-1, x.shape[1] - 1, -1)], dim=-1))


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Upsample2(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def dpt_large_kwargs(**overrides) -> dict:
    """MiDaS v3 DPT-Large: ViT-L/16 at 384 px (width 1024, 24 blocks, 16 heads), hooks after blocks 5, 11, 17, 23,
    reassembled to 256 / 512 / 1024 / 1024 channels, fused at 256 features, readout "project"."""
    return {"vit": {"image_size": 384, "patch_size": 16, "width": 1024, "depth": 24, "heads": 16},
            "hooks": (5, 11, 17, 23), "reassemble": (256, 512, 1024, 1024), "features": 256, **overrides}


class MidasDPT(nn.Module):
    """DPT depth model (see the module docstring): images (B, 3, H, W) in [-1, 1] -> inverse relative depth
    (B, H, W), non-negative. As MiDaS's transform does, the input is resized (bicubic) to the network's
    ``image_size`` square when it is another size and the prediction resized back."""

    def __init__(self, vit: dict | None = None, hooks: Sequence[int] = (5, 11, 17, 23),
                 reassemble: Sequence[int] = (256, 512, 1024, 1024), features: int = 256):
        super().__init__()
        self.hooks = tuple(int(h) for h in hooks)
        self.pretrained = nn.Module()
        self.pretrained.model = ViTBackbone(**dict(vit or {}))
        width = self.pretrained.model.cls_token.shape[-1]
        r = [int(c) for c in reassemble]
        tails = [nn.ConvTranspose2d(r[0], r[0], 4, stride=4), nn.ConvTranspose2d(r[1], r[1], 2, stride=2), None,
                 nn.Conv2d(r[3], r[3], 3, stride=2, padding=1)]
        for k in range(4):   # indices 1, 2 are MiDaS's parameter-free Transpose / Unflatten
            layers = [_ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, r[k], 1)]
            if tails[k] is not None:
                layers.append(tails[k])
            setattr(self.pretrained, f"act_postprocess{k + 1}", nn.Sequential(*layers))
        self.scratch = nn.Module()
        for k in range(4):
            setattr(self.scratch, f"layer{k + 1}_rn", nn.Conv2d(r[k], features, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{k + 1}", _FusionBlock(features))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1), _Upsample2(), nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.pretrained.model
        size = vit.grid * vit.patch_size
        h, w = images.shape[-2:]
        if (h, w) != (size, size):
            x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
            d = self.predict(x)
            return F.interpolate(d[:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0].clamp_min(0)
        return self.predict(images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The network at its own input size (H, W multiples of 32)."""
        vit = self.pretrained.model
        gh, gw = images.shape[-2] // vit.patch_size, images.shape[-1] // vit.patch_size
        layers = []
        for k, tokens in enumerate(vit.hooked(images, self.hooks)):
            post = getattr(self.pretrained, f"act_postprocess{k + 1}")
            h = post[0](tokens).transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
            for layer in post[3:]:
                h = layer(h)
            layers.append(getattr(self.scratch, f"layer{k + 1}_rn")(h))
        path = self.scratch.refinenet4(layers[3])
        for k in (3, 2, 1):
            path = getattr(self.scratch, f"refinenet{k}")(path, layers[k - 1])
        return self.scratch.output_conv(path)[:, 0]


def load_midas_dpt(path: str | Path, **overrides) -> MidasDPT:
    """A :class:`MidasDPT` with released MiDaS weights from a local file (nothing is downloaded), DPT-Large's
    architecture unless ``overrides`` say otherwise; strict, one-line error naming the first missing / unexpected /
    mis-shaped key."""
    from shared.nn.weights import read_checkpoint, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MiDaS DPT weights at {path} (expected a released dpt_large-midas-*.pt or "
                                "dpt_large_384.pt state dict)")
    if path.suffix == ".safetensors":
        state = read_state_dict(path, "MiDaS DPT weights")
    else:
        raw = read_checkpoint(path, what="MiDaS DPT weights")
        state = raw["model"] if isinstance(raw.get("model"), dict) else raw.get("state_dict", raw)
    model = MidasDPT(**dpt_large_kwargs(**overrides))
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = sorted(k for k in set(mine) & set(state) if mine[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(mine[shapes[0]].shape)}")
        raise ValueError(f"{path} does not match a MiDaS DPT: {detail}")
    model.load_state_dict(state, strict=True)
    return model


@buildable
def midas_dpt(weights: str | None = None, **kwargs) -> MidasDPT:
    """Hydra target: released MiDaS DPT weights from a local ``weights`` file (frozen by the structure encoder), or
    a fresh model of ``kwargs`` (tests)."""
    return load_midas_dpt(weights, **kwargs) if weights else MidasDPT(**kwargs)
