"""ReferenceNet and the reference-conditioned denoiser of Animate Anyone and EMO.

Animate Anyone (Hu et al., CVPR 2024), Sec. 3.2, "ReferenceNet": a copy of the denoising U-Net's spatial layers (same
architecture, initialised from the same weights, no temporal layers) run on the reference image; "we replace the
self-attention layer with spatial-attention": the denoiser's feature map x1 (h x w x c) and ReferenceNet's x2 of the
same layer are concatenated along w, self-attention is applied, and the first half of the output is kept — i.e. the
reference tokens join the keys and values of the denoiser's self-attention. The reference's CLIP image embedding
enters the cross-attention in place of the text embedding. EMO (Tian et al., ECCV 2024), Sec. 3.2, uses the same
ReferenceNet (structure identical to the backbone, reference features taken at the self-attention layers).

Pieces:

* :func:`name_reference_layers` — gives every :class:`~shared.nn.spatial_transformer.SpatialTransformer` of a U-Net
  its qualified name as ``reference_name``: the key under which a ReferenceNet writes that layer's tokens and a
  denoiser reads them (the hook itself lives in the spatial transformer: with no bank it is exactly SD's layer).
* :class:`ReferenceNet` — a 2D :class:`~shared.nn.unet.UNet` run on reference images at the clean-data time
  ``time``; returns the bank ``{layer name: [tokens (B, h*w, c) per transformer block]}``. The forward stops after
  the last block whose features are needed (the re-implementation freezes the unused last up block for the same
  reason); modules marked ``reference_tap`` (see ``papers/emo``) also record there.
* :class:`ReferenceDenoiser` — the network of both papers: ``forward(x, t, reference=, guide=, audio=)`` runs the
  ReferenceNet on ``reference`` (every denoising step; at CPU scale this costs one 2D pass of B images against the
  denoiser's B*T frames), the image encoder on ``reference`` for the cross-attention ``context`` (a zero token when
  there is none: SD's cross-attention with no text), the guider (``shared/nn/guider.py``) on ``guide`` and the
  audio encoder (``shared/nn/audio_attention.py``) on ``audio``, and calls the denoiser. Every part is optional, so
  the same class is the plain base model, the embedding-only ablation and the full model; subclasses add keywords
  through :meth:`ReferenceDenoiser.extra_ctx`.
* :class:`ImageTokenEncoder` — the CPU-scale stand-in for CLIP's image encoder: a small conv net, global average
  pooling and a linear map to ``tokens`` context tokens (CLIP ViT-L/14's projected image embedding is one token).
"""
from __future__ import annotations

import copy

import torch
from einops import rearrange
from torch import nn

from shared.nn.spatial_transformer import SpatialTransformer
from shared.nn.unet import UNet

__all__ = ["name_reference_layers", "reference_layer_names", "ReferenceNet", "ReferenceDenoiser",
           "ImageTokenEncoder", "EncodeWith", "copy_spatial"]


def name_reference_layers(unet: nn.Module) -> list[str]:
    """Set ``reference_name`` of every spatial transformer of ``unet`` to its qualified name; returns the names."""
    names = []
    for name, m in unet.named_modules():
        if isinstance(m, SpatialTransformer):
            m.reference_name = name
            names.append(name)
    return names


def reference_layer_names(unet: nn.Module) -> list[str]:
    return [m.reference_name for m in unet.modules() if isinstance(m, SpatialTransformer) and m.reference_name]


def _records(module: nn.Module) -> bool:
    return (isinstance(module, SpatialTransformer) and module.reference_name is not None) or \
        bool(getattr(module, "reference_tap", False))


class ReferenceNet(nn.Module):
    """A 2D U-Net run on reference images that returns its reference bank (module docstring)."""

    def __init__(self, unet: UNet, time: float = 0.0):
        super().__init__()
        if getattr(unet, "temporal_names", None):
            raise ValueError("the ReferenceNet is a 2D U-Net: build it before inflating the denoiser")
        self.unet, self.time = unet, float(time)
        unet.out_norm, unet.out_conv = nn.Identity(), nn.Identity()  # never used: the forward stops earlier
        self.names = name_reference_layers(unet)
        if not self.names:
            raise ValueError("the ReferenceNet's U-Net has no spatial transformers (build it with context_dim)")

    def _last_needed(self) -> tuple[str, int]:
        """(part, block index) of the last block holding a recording layer."""
        last = ("input", 0)
        for i, b in enumerate(self.unet.input_blocks):
            if any(_records(m) for m in b.modules()):
                last = ("input", i)
        if any(_records(m) for m in self.unet.middle_block.modules()):
            last = ("middle", 0)
        for i, b in enumerate(self.unet.output_blocks):
            if any(_records(m) for m in b.modules()):
                last = ("output", i)
        return last

    def forward(self, images: torch.Tensor, context: torch.Tensor | None = None, **ctx_extra) -> dict:
        u = self.unet
        if images.ndim != 4 or images.shape[1] != u.in_channels:
            raise ValueError(f"ReferenceNet expects (B, {u.in_channels}, H, W) images, got {tuple(images.shape)}")
        bank: dict = {}
        t = torch.full((images.shape[0],), self.time, device=images.device)
        ctx = {"num_frames": 1, "context": context, "reference_write": bank, **ctx_extra}
        emb = u.embed(t, None)
        part, stop = self._last_needed()
        h, skips = images, []
        for i, block in enumerate(u.input_blocks):
            h = block(h, emb, ctx)
            skips.append(h)
            if part == "input" and i == stop:
                return bank
        h = u.middle_block(h, emb, ctx)
        if part == "middle":
            return bank
        for i, block in enumerate(u.output_blocks):
            h = block(h, emb, ctx, skips=skips)
            if i == stop:
                break
        return bank


class ImageTokenEncoder(nn.Module):
    """Reference image ``(B, C, H, W)`` -> ``(B, tokens, context_dim)`` (CPU-scale stand-in for CLIP's image
    embedding): strided 3x3 convs (``widths``), SiLU, global average pooling, a linear map."""

    def __init__(self, in_channels: int = 3, context_dim: int = 32, widths: tuple = (16, 32), tokens: int = 1):
        super().__init__()
        layers, c = [], int(in_channels)
        for w in widths:
            layers += [nn.Conv2d(c, int(w), 3, stride=2, padding=1), nn.SiLU()]
            c = int(w)
        self.body = nn.Sequential(*layers)
        self.tokens, self.context_dim = int(tokens), int(context_dim)
        self.proj = nn.Linear(c, self.tokens * self.context_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images).mean(dim=(2, 3))
        return self.proj(h).view(images.shape[0], self.tokens, self.context_dim)


class ReferenceDenoiser(nn.Module):
    """Denoiser + optional ReferenceNet, image encoder, guider and audio encoder (module docstring).

    ``forward(x, t, reference=None, guide=None, audio=None)``: ``x`` images ``(B, C, H, W)`` or videos
    ``(B, C, T, H, W)``; ``reference`` ``(B, C, H, W)``; ``guide`` the guider's control image, per frame
    ``(B, C_g, T, H, W)`` (pose maps) or one per clip ``(B, C_g, H, W)`` (EMO's face region); ``audio`` per-frame
    windows ``(B, T, D, W)``. ``reference_encoder`` maps the reference to the ReferenceNet's input when that differs
    from the image encoder's (latent diffusion: :class:`EncodeWith` a frozen VAE latent space, while CLIP sees
    pixels).
    """

    def __init__(self, denoiser: UNet, reference_net: ReferenceNet | None = None,
                 image_encoder: nn.Module | None = None, guider: nn.Module | None = None,
                 audio_encoder: nn.Module | None = None, reference_encoder: nn.Module | None = None):
        super().__init__()
        self.denoiser, self.reference_net, self.reference_encoder = denoiser, reference_net, reference_encoder
        self.image_encoder, self.guider, self.audio_encoder = image_encoder, guider, audio_encoder
        if reference_net is not None:
            ours = name_reference_layers(denoiser)
            if ours != reference_net.names:
                raise ValueError(f"ReferenceNet layers {reference_net.names[:3]}... differ from the denoiser's "
                                 f"{ours[:3]}...: the ReferenceNet must be a copy of the denoiser's spatial U-Net")
        if guider is not None and guider.target == "input" and guider.out_channels != denoiser.in_channels:
            raise ValueError(f"guider adds {guider.out_channels} channels to an input of {denoiser.in_channels}")

    @property
    def in_channels(self) -> int:
        return self.denoiser.in_channels

    @property
    def context_dim(self) -> int | None:
        return self.denoiser.context_dim

    def reference_context(self, reference: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """Cross-attention tokens: the image encoder's embedding of ``reference``, else one zero token."""
        if self.image_encoder is not None:
            if reference is None:
                raise ValueError("this network encodes the reference image for its cross-attention: pass reference")
            return self.image_encoder(reference)
        if self.context_dim is None:
            return None
        return torch.zeros(batch, 1, self.context_dim, device=device)

    def guide_features(self, guide: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The guider's output per frame, folded like the denoiser folds frames: (B*T, C', h, w)."""
        if x.ndim == 5:
            t = x.shape[2]
            if guide.ndim == 5:
                if guide.shape[2] != t:
                    raise ValueError(f"guide has {guide.shape[2]} frames, x has {t}")
                guide = rearrange(guide, "b c t h w -> (b t) c h w")
            else:  # one control image for the whole clip
                guide = guide.repeat_interleave(t, dim=0)
        elif guide.ndim != 4:
            raise ValueError(f"an image x takes a (B, C, H, W) guide, got {tuple(guide.shape)}")
        return self.guider(guide)

    def extra_ctx(self, x: torch.Tensor, reference, bank: dict, **extra) -> dict:
        """Further ``ctx`` entries for the denoiser (subclasses: speed, motion frames); unknown keywords fail."""
        if extra:
            raise TypeError(f"{type(self).__name__} got unexpected keyword(s) {sorted(extra)}")
        return {}

    def reference_bank(self, reference: torch.Tensor, context: torch.Tensor | None) -> dict:
        if self.reference_encoder is not None:  # e.g. the VAE: the ReferenceNet runs on latents, CLIP on pixels
            reference = self.reference_encoder(reference)
        return self.reference_net(reference, context)

    guide_name = "a guider"   # how the one-line error for a missing ``guide`` names it (EMO: its face locator)

    def apply_guider(self, x: torch.Tensor, guide: torch.Tensor | None, kw: dict) -> torch.Tensor:
        """``x`` with the guider's features of ``guide`` added (``target="input"``), or unchanged with them put in
        ``kw["input_residual"]`` (added after the U-Net's first convolution); ``x`` itself without a guider."""
        if self.guider is None:
            return x
        if guide is None:
            raise ValueError(f"this network has {self.guide_name}: pass guide")
        g = self.guide_features(guide, x)
        if self.guider.target == "input":
            return x + (rearrange(g, "(b t) c h w -> b c t h w", b=x.shape[0]) if x.ndim == 5 else g)
        kw["input_residual"] = g
        return x

    def forward(self, x: torch.Tensor, t: torch.Tensor, reference: torch.Tensor | None = None,
                guide: torch.Tensor | None = None, audio: torch.Tensor | None = None, **extra) -> torch.Tensor:
        b = x.shape[0]
        context = self.reference_context(reference, b, x.device)
        kw: dict = {}
        bank: dict = {}
        if self.reference_net is not None:
            if reference is None:
                raise ValueError("this network has a ReferenceNet: pass reference")
            bank = self.reference_bank(reference, context)
            kw["reference_read"] = bank
        x = self.apply_guider(x, guide, kw)
        if self.audio_encoder is not None and audio is not None:
            tokens = self.audio_encoder(audio)
            frames = x.shape[2] if x.ndim == 5 else 1
            if tokens.shape[0] != b * frames:
                raise ValueError(f"audio for {tokens.shape[0] // b} frames per item, x has {frames}")
            kw["audio_tokens"] = tokens
        kw.update(self.extra_ctx(x, reference, bank, **extra))
        return self.denoiser(x, t, context=context, **kw)


class EncodeWith(nn.Module):
    """``space.encode(x)`` as a module (a frozen latent space, e.g. ``shared.diffusion.latent.LatentSpace`` of SD's
    VAE, encoding the reference for the ReferenceNet)."""

    def __init__(self, space: nn.Module):
        super().__init__()
        self.space = space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.encode(x)


def copy_spatial(unet: UNet) -> UNet:
    """A deep copy of a 2D U-Net (the ReferenceNet's initialisation from the denoiser's weights)."""
    if getattr(unet, "temporal_names", None) or getattr(unet, "audio_names", None):
        raise ValueError("copy the denoiser before adding temporal or audio layers")
    return copy.deepcopy(unet)

