"""PVDM's projected video autoencoder (Yu et al., CVPR 2023, Sec. 3.1, Fig. 2).

A video x (B, C, T, H, W) is encoded by a space-time backbone into a feature volume u (B, D, T, H', W')
(H' = H / (patch · 2^(levels-1)); time is not downsampled, as in the paper's 16-frame model), projected onto
three 2D planes

    z_xy = f_xy(u) ∈ R^{c×H'×W'}   (collapses time: the content plane; learned attention pooling by default)
    z_yt = f_yt(u) ∈ R^{c×T×W'}    (collapses height)
    z_xt = f_xt(u) ∈ R^{c×T×H'}    (collapses width)

(:class:`shared.nn.triplane.AxisPool`, followed by a 1×1 conv to the latent width ``c``), regularised either
with a diagonal-Gaussian posterior and a KL term (``regularization: kl``, LDM-style) or with the official code's
deterministic ``tanh`` bottleneck (``regularization: tanh``: a plain autoencoder, no KL). The decoder maps each
plane back to ``D`` channels (1×1 conv), broadcast-sums them into a volume
``u(t, h, w) = z_xy(h, w) + z_yt(t, w) + z_xt(t, h)`` (:func:`shared.nn.triplane.broadcast_sum`) and decodes it
to frames with a mirrored space-time network.

The latent the diffusion model sees is the *canvas*: the three planes stacked along the height,
(B, c, H' + 2T, W') (:func:`shared.nn.triplane.to_canvas`). ``encode``/``decode`` speak canvases and return a
:class:`shared.nn.autoencoder.DiagonalGaussian`, so the module is a drop-in autoencoder for
:class:`shared.diffusion.latent.LatentSpace` and ``latent_diffusion``.

Backbone: residual 3×3×3 convolutions with space-only stride-2 downsampling — the paper uses a TimeSformer
(ViT with divided space-time attention, patch 8, 8 layers, width 384); a conv backbone is our CPU-scale
substitute (see the README's deviations).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.autoencoder import DiagonalGaussian
from shared.nn.triplane import PLANES, AxisPool, broadcast_sum, canvas_shape, from_canvas, to_canvas
from shared.nn.weights import load_state_dict_strict, read_state_dict

REGULARIZATIONS = ("kl", "tanh")


class ResBlock3D(nn.Module):
    """GN–SiLU–conv3×3×3, GN–SiLU–conv3×3×3 plus a 1×1×1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, in_ch), nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, out_ch), nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class TriplaneAutoencoder(nn.Module):
    """Video (B, C, T, H, W) <-> triplane canvas (B, c, H' + 2T, W'); H' = W' = image_size / (patch · 2^(levels-1)).

    Args:
        in_channels, frames, image_size: the (fixed) video shape; a different one raises a ValueError.
        patch_size: the stem's space-only patchify stride (and the output's un-patchify).
        channels: backbone width per level (one stride-2 spatial downsampling between levels).
        num_res_blocks: residual blocks per level (encoder; the decoder mirrors it).
        latent_channels: c, channels of each plane.
        projection: pooling per plane, ``{"xy": "attention", "yt": "mean", "xt": "mean"}`` by default.
        regularization: ``kl`` (Gaussian posterior + KL in the loss) or ``tanh`` (official code: deterministic).
        weights_path: a safetensors / torch state dict or an ``AutoencoderModule`` checkpoint (``net.`` keys).
    """

    def __init__(self, in_channels: int = 1, frames: int = 8, image_size: int = 16,
                 patch_size: int = 2, channels: Sequence[int] = (32,), num_res_blocks: int = 1,
                 latent_channels: int = 4,
                 norm_groups: int = 8, projection: dict | None = None, attention_heads: int = 1,
                 regularization: str = "kl", scaling_factor: float = 1.0, weights_path: str | None = None):
        super().__init__()
        if regularization not in REGULARIZATIONS:
            raise ValueError(f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}")
        channels = list(channels)
        factor = patch_size * 2 ** (len(channels) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {factor}")
        self.in_channels, self.out_channels, self.frames, self.image_size = in_channels, in_channels, frames, image_size
        self.latent_channels, self.regularization = latent_channels, regularization
        self.downsample_factor, self.scaling_factor, self.shift_factor = factor, scaling_factor, None
        self.side = image_size // factor
        proj = {"xy": "attention", "yt": "mean", "xt": "mean", **dict(projection or {})}
        d = channels[-1]

        # patchify stem (the paper's ViT patch embedding; patch 8 at 256^2): a strided space-only conv
        enc = [nn.Conv3d(in_channels, channels[0], (1, patch_size, patch_size), stride=(1, patch_size, patch_size))]
        cur = channels[0]
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                enc.append(ResBlock3D(cur, ch, norm_groups))
                cur = ch
            if i != len(channels) - 1:
                enc.append(nn.Conv3d(cur, cur, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        enc += [nn.GroupNorm(norm_groups, d), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        lengths = {"xy": frames, "yt": self.side, "xt": self.side}
        self.project = nn.ModuleDict({p: AxisPool(p, d, lengths[p], proj[p], attention_heads) for p in PLANES})
        moments = 2 * latent_channels if regularization == "kl" else latent_channels
        self.pre = nn.ModuleDict({p: nn.Conv2d(d, moments, 1) for p in PLANES})
        self.post = nn.ModuleDict({p: nn.Conv2d(latent_channels, d, 1) for p in PLANES})

        dec, cur = [], d
        for i, ch in enumerate(reversed(channels)):
            for _ in range(num_res_blocks + 1):
                dec.append(ResBlock3D(cur, ch, norm_groups))
                cur = ch
            if i != len(channels) - 1:
                dec += [nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"), nn.Conv3d(cur, cur, 3, padding=1)]
        dec += [nn.GroupNorm(norm_groups, cur), nn.SiLU()]
        self.decoder = nn.Sequential(*dec)
        # un-patchify (the official code's ConvTranspose2d ``to_pixel``), space only
        self.conv_out = nn.ConvTranspose3d(cur, in_channels, (1, patch_size, patch_size),
                                           stride=(1, patch_size, patch_size))
        if weights_path:
            state = read_state_dict(weights_path)
            if any(k.startswith("net.") for k in state):  # a checkpoint of an AutoencoderModule
                state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
            load_state_dict_strict(self, state, what=f"triplane autoencoder weights {weights_path}")

    # ------------------------------------------------------------------ shapes
    def latent_shape(self, pixel_shape=None) -> tuple[int, int, int]:
        """The canvas shape (c, H' + 2T, W') of one video."""
        return canvas_shape(self.latent_channels, self.frames, self.side, self.side)

    def check_video(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.frames, self.image_size, self.image_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"TriplaneAutoencoder takes videos (B, C, T, H, W) = (B, {', '.join(map(str, want))}), "
                             f"got {tuple(x.shape)}")

    # ------------------------------------------------------------------ encode / decode
    def planes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three raw plane features (before the latent 1×1 conv): xy (B,D,H',W'), yt (B,D,T,W'), xt (B,D,T,H')."""
        self.check_video(x)
        u = self.encoder(x)
        return {p: self.project[p](u) for p in PLANES}

    def encode(self, x: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """Video -> posterior over canvases (B, c, H' + 2T, W'); deterministic for ``tanh``."""
        if chunk_size and chunk_size < x.shape[0]:
            posts = [self.encode(c) for c in x.split(chunk_size)]
            return DiagonalGaussian(torch.cat([p.mean for p in posts]), torch.cat([p.logvar for p in posts]),
                                    posts[0].deterministic)
        feats = self.planes(x)
        m = {p: self.pre[p](feats[p]) for p in PLANES}
        if self.regularization == "tanh":
            mean = to_canvas(*(torch.tanh(m[p]) for p in PLANES))
            return DiagonalGaussian(mean, torch.zeros_like(mean), deterministic=True)
        mean = to_canvas(*(m[p][:, : self.latent_channels] for p in PLANES))
        logvar = to_canvas(*(m[p][:, self.latent_channels:] for p in PLANES))
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Canvas (B, c, H' + 2T, W') -> video (B, C, T, H, W)."""
        if chunk_size and chunk_size < z.shape[0]:
            return torch.cat([self.decode(c) for c in z.split(chunk_size)])
        if z.dim() != 4 or tuple(z.shape[1:]) != self.latent_shape():
            raise ValueError(f"expected canvases (B, {', '.join(map(str, self.latent_shape()))}), got {tuple(z.shape)}")
        planes = from_canvas(z, self.frames)
        u = broadcast_sum(*(self.post[p](zp) for p, zp in zip(PLANES, planes)))
        return self.conv_out(self.decoder(u))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Reconstruct ``x``; returns ``(reconstruction, posterior)``."""
        post = self.encode(x)
        z = post.sample(generator) if sample_posterior else post.mode()
        return self.decode(z), post

    @property
    def last_layer(self) -> nn.Parameter:
        return self.conv_out.weight
