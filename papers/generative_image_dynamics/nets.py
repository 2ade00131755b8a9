"""Networks of Generative Image Dynamics (Li et al., CVPR 2024): the still-conditioned denoiser of spectral
volumes with frequency-coordinated attention (Sec. 4.2, Fig. 3) and the image-based renderer (Sec. 5, Fig. 4).

:class:`StillUNet` — a 2D U-Net run over a stack of maps along one axis (the K frequency bands of a spectral
volume, laid out as a "video" ``(B, C, K, h, w)``; or the frames of a clip for the video-diffusion baseline),
conditioned on the still ``I_0``:

* the still, resized to the map resolution, is concatenated to every slice (Sec. 4.2: "the downsampled input
  image I_0 is concatenated with the noisy latent");
* the 2D spatial layers run with the axis folded into the batch (every band is an independent sample for them,
  Sec. 4.2 "frequency-coordinated denoising");
* each slice knows its position on the axis through a learned embedding added to the time embedding (band ``k``
  or frame offset) — our choice: the paper does not say how a shared 2D network tells bands apart;
* ``axis_attention=True`` interleaves attention layers *across the axis* after the 2D layers of every U-Net block
  (Sec. 4.2: "we interleave attention layers across frequencies ... the attention layers treat the frequency axis
  as the sequence", Fig. 3 right). Each is :class:`shared.nn.video.TemporalAttention` (space folded into the
  batch, the K bands of a pixel attend to each other, relative position bias), inserted by
  :func:`shared.nn.video.inflate_unet` with a zero-initialised output, so the coordinated network equals the
  independent one at initialisation. ``axis_attention=False`` is the "independent prediction" ablation: the
  bands never see each other, and denoising the volume equals denoising each band alone (a test says so).

:class:`Renderer` — the image-based rendering module (Sec. 5): a feature pyramid of the still is forward-warped by
the motion field ``F_t`` with softmax splatting (Niklaus & Liu 2020; `shared.nn.splatting.softmax_splat`), each
pixel weighted by ``exp(Z)`` with the importance ``Z = a W(p) + r(I_0, W)``: ``W(p) = (1/T) sum_t ||F_t(p)||``
(Sec. 5, the mean motion magnitude of the predicted motion texture, larger motion = foreground), ``a`` a learned
scale and ``r`` a zero-initialised convolution over the still's features and ``W`` (the predicted part); the
warped features and the splatting coverage go through a synthesis network to the frame. The paper's feature
extractor is a ResNet-34 and the loss a VGG perceptual loss; here a two-level conv pyramid and L1 (no
pretrained weights offline). The synthesis residual is gated by the motion reaching each target pixel and by
the holes the splat leaves (``g = clamp(splat(|F|) + 1 - coverage, 0, 1)``), so pixels nothing moves into keep
the splatted still exactly: with zero motion the renderer returns the still for any weights (a test says so).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.layers import group_norm, zero_module
from shared.nn.splatting import softmax_splat
from shared.nn.unet import UNet
from shared.nn.video import TemporalAttention, inflate_unet

__all__ = ["StillUNet", "Renderer", "resize_still"]


def resize_still(still: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, h, w): area average when shrinking by a whole factor, bilinear otherwise."""
    h, w = int(size[0]), int(size[1])
    if still.shape[-2:] == (h, w):
        return still
    H, W = still.shape[-2:]
    if H % h == 0 and W % w == 0:
        return F.avg_pool2d(still, (H // h, W // w))
    return F.interpolate(still, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


class StillUNet(nn.Module):
    """Denoiser of a stack of maps ``(B, C, K, h, w)`` along an axis, conditioned on a still (module docstring).

    Args:
        channels: ``C`` of each slice (4 for a spectral band: Re x, Im x, Re y, Im y; 3 for a video frame).
        axis_len: ``K``, the number of slices (bands or frames) the position embedding covers.
        image_size: ``h`` (= ``w``) of the slices.
        axis_attention: attention across the axis after every U-Net block (frequency-coordinated denoising).
        axis_heads, axis_max_distance: heads and relative-position clip of that attention.
        still_channels: channels of the still concatenated to every slice (0: unconditional).
        base_channels, channel_mult, num_res_blocks, attention_resolutions, num_heads, norm_groups, dropout:
            the 2D U-Net (`shared.nn.unet.UNet`).
    """

    def __init__(self, channels: int = 4, axis_len: int = 16, image_size: int = 16, axis_attention: bool = True,
                 axis_heads: int = 1, axis_max_distance: int = 16, still_channels: int = 3,
                 base_channels: int = 32, channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attention_resolutions: Sequence[int] = (), num_heads: int = 1, norm_groups: int = 8,
                 dropout: float = 0.0):
        super().__init__()
        self.channels, self.axis_len, self.image_size = int(channels), int(axis_len), int(image_size)
        self.still_channels, self.axis_attention = int(still_channels), bool(axis_attention)
        self.unet = UNet(in_channels=self.channels + self.still_channels, out_channels=self.channels,
                         image_size=self.image_size, base_channels=base_channels, channel_mult=channel_mult,
                         num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                         dropout=dropout, num_heads=num_heads, norm_groups=norm_groups)
        emb_dim = 4 * base_channels
        self.axis_embed = nn.Embedding(self.axis_len, emb_dim)
        nn.init.normal_(self.axis_embed.weight, std=0.02)
        if self.axis_attention:
            def make(ch: int) -> nn.Module:
                return TemporalAttention(ch, num_heads=axis_heads, norm_groups=norm_groups,
                                         max_distance=axis_max_distance)
            inflate_unet(self.unet, make, insert="resblock")

    @property
    def in_channels(self) -> int:
        return self.channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, still: torch.Tensor | None = None,
                positions: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """``x`` (B, C, K', h, w), ``t`` network times (B,) or a scalar, ``still`` (B, 3, H, W);
        ``positions`` the axis indices of the K' slices (default ``0..K'-1``; a single band ``[k]`` runs band
        ``k`` alone)."""
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"StillUNet: x must be (B, {self.channels}, K, h, w), got {tuple(x.shape)}")
        b, _, k, h, w = x.shape
        if positions is None:
            if k > self.axis_len:
                raise ValueError(f"StillUNet: {k} slices but the position embedding covers {self.axis_len}")
            pos = torch.arange(k, device=x.device)
        else:
            pos = torch.as_tensor(positions).long().cpu()
            if pos.shape != (k,) or int(pos.min()) < 0 or int(pos.max()) >= self.axis_len:
                raise ValueError(f"StillUNet: positions must be {k} indices in [0, {self.axis_len}), got "
                                 f"{pos.tolist()}")
            pos = pos.to(x.device)
        if self.still_channels:
            if still is None:
                raise ValueError("StillUNet: this network is conditioned on a still; pass still=(B, 3, H, W)")
            if still.dim() != 4 or still.shape[:2] != (b, self.still_channels):
                raise ValueError(f"StillUNet: still must be ({b}, {self.still_channels}, H, W), got "
                                 f"{tuple(still.shape)}")
            s = resize_still(still.to(x.dtype), (h, w))
            x = torch.cat([x, s[:, :, None].expand(-1, -1, k, -1, -1)], dim=1)
        t = torch.as_tensor(t, device=x.device).float().expand(b)
        emb = self.unet.time_embed(t).repeat_interleave(k, dim=0) + self.axis_embed(pos).repeat(b, 1)
        hid = rearrange(x, "b c k h w -> (b k) c h w")
        out = self.unet._forward_blocks(hid, emb, {"num_frames": k, "context": None})
        return rearrange(out, "(b k) c h w -> b c k h w", b=b)


def _conv_block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), group_norm(cout, groups), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), group_norm(cout, groups), nn.SiLU())


class Renderer(nn.Module):
    """Feature-pyramid softmax-splatting renderer (GID Sec. 5; module docstring).

    Args:
        widths: channels of the pyramid levels (level ``l`` at ``1/2^l`` resolution).
        norm_groups: group norm groups.
        importance_scale: initial ``a`` of ``Z = a W + r``.
    """

    def __init__(self, widths: Sequence[int] = (16, 32), norm_groups: int = 8, importance_scale: float = 1.0):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.extract = nn.ModuleList()
        cin = 3
        for w in self.widths:
            self.extract.append(_conv_block(cin, w, norm_groups))
            cin = w
        self.log_scale = nn.Parameter(torch.tensor(float(importance_scale)).log())
        self.importance = zero_module(nn.Conv2d(self.widths[0] + 1, 1, 3, padding=1))
        self.synth = nn.ModuleList()
        up = 0
        for level in reversed(range(len(self.widths))):
            w = self.widths[level]
            extra = 3 if level == 0 else 0  # the splatted still itself at full resolution
            self.synth.append(_conv_block(w + 1 + extra + up, w, norm_groups))
            up = w
        self.out = nn.Conv2d(self.widths[0], 3, 3, padding=1)

    def pyramid(self, still: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], still
        for level, block in enumerate(self.extract):
            if level:
                h = F.avg_pool2d(h, 2)
            h = block(h)
            feats.append(h)
        return feats

    def importance_map(self, feats: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """``Z = a W + r([features, W])`` (B, 1, H, W) from the motion magnitude ``W`` (B, 1, H, W)."""
        return self.log_scale.exp() * weight + self.importance(torch.cat([feats[0], weight], dim=1))

    def forward(self, still: torch.Tensor, flow: torch.Tensor, weight: torch.Tensor,
                feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Frame ``I_t`` (B, 3, H, W) from the still (B, 3, H, W), its motion ``F_t`` (B, 2, H, W) in pixels and
        the motion magnitude ``W`` (B, 1, H, W); ``feats`` = `pyramid(still)` to reuse over many frames."""
        if still.dim() != 4 or still.shape[1] != 3:
            raise ValueError(f"Renderer: still must be (B, 3, H, W), got {tuple(still.shape)}")
        b, _, H, W = still.shape
        if flow.shape != (b, 2, H, W) or weight.shape != (b, 1, H, W):
            raise ValueError(f"Renderer: flow must be {(b, 2, H, W)} and weight {(b, 1, H, W)}, got "
                             f"{tuple(flow.shape)} and {tuple(weight.shape)}")
        f = 2 ** (len(self.widths) - 1)
        if H % f or W % f:
            raise ValueError(f"Renderer: the still's sides must be divisible by {f}, got {H}x{W}")
        feats = self.pyramid(still) if feats is None else feats
        z = self.importance_map(feats, weight)
        ones = torch.ones_like(weight)
        # coverage: how much bilinear mass lands on each target pixel (1 everywhere for zero motion);
        # reach: the motion magnitude splatted to where it lands (0 where nothing moving arrives)
        cov_reach = softmax_splat(torch.cat([ones, flow.norm(dim=1, keepdim=True)], 1), flow, None,
                                  return_weight=True)
        coverage = cov_reach[1].clamp(0, 1)
        gate = (cov_reach[0][:, 1:2] * coverage + (1 - coverage)).clamp(0, 1)
        warped_rgb = softmax_splat(still, flow, z)
        h = None
        for i, level in enumerate(reversed(range(len(self.widths)))):
            s = 2 ** level
            fl = F.avg_pool2d(flow, s) / s if s > 1 else flow
            zl = F.avg_pool2d(z, s) if s > 1 else z
            wf, den = softmax_splat(feats[level], fl, zl, return_weight=True)
            cov = (den > 0).to(wf.dtype)
            parts = [wf, cov] + ([warped_rgb] if level == 0 else []) + ([h] if h is not None else [])
            h = self.synth[i](torch.cat(parts, dim=1))
            if level:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return warped_rgb + gate * self.out(h)
