"""Structure conditioning by concatenation, at a chosen level of detail (Gen-1: Esser et al., ICCV 2023, Sec. 3.3).

Gen-1 represents a video's *structure* by monocular depth estimates (MiDaS), concatenated to the diffusion model's
input, and controls how closely the output follows it with a *structure level* ``t_s``: depth maps are obscured
with increasing ``t_s`` (blurred and downsampled) and the model is trained on randomly drawn levels, so at sampling
a low ``t_s`` keeps the input's structure and a high one leaves the model free to follow the content.

* :func:`structure_blur` — the obscuring operator: level 0 is the map itself; level ``k`` area-downsamples by
  ``2**k`` and resamples bilinearly back (a per-item level tensor applies one level per item). Larger levels are
  lower-frequency; a test checks both.
* :class:`StructureEncoder` — depth (B, T, H, W) / (B, 1, T, H, W) / (B, [1,] H, W) -> ``(B, 1, [T,] h, w)``: depth
  mapped affinely from ``depth_range`` to [-1, 1], obscured at its level, resized (area) to the latent resolution
  ``size``. With an ``estimator`` (a frozen monocular depth network: MiDaS at paper scale, the styled-shapes judge's
  depth net at CPU scale) it takes the *video* (B, 3, T, H, W) in [-1, 1] and estimates the depth first, as Gen-1
  derives structure from the input video.
  Its level is set per call (``level=``; the conditioning seam's :class:`~shared.methods.conditions.LevelCondition`
  draws per-item levels in training) or by :attr:`level`.
* :class:`ConcatInputs` — a network with extra input channels: ``forward(x, t, structure=s, **kw) =
  net(cat([x, s], dim=1), t, **kw)``; its ``in_channels`` are ``x``'s (what a module samples).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.build import buildable

__all__ = ["structure_blur", "StructureEncoder", "ConcatInputs", "concat_inputs"]


def _blur_one(x: torch.Tensor, level: int) -> torch.Tensor:
    if level <= 0:
        return x
    h, w = x.shape[-2:]
    f = 2 ** int(level)
    small = F.adaptive_avg_pool2d(x, (max(1, h // f), max(1, w // f)))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def structure_blur(maps: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
    """Obscure (N, C, H, W) maps at ``level`` (an int, or one level per item as an (N,) tensor)."""
    if maps.dim() != 4:
        raise ValueError(f"structure_blur takes (N, C, H, W) maps, got shape {tuple(maps.shape)}")
    if not isinstance(level, torch.Tensor):
        if int(level) < 0:
            raise ValueError(f"the structure level must be >= 0, got {level}")
        return _blur_one(maps, int(level))
    level = level.to(maps.device).long().reshape(-1)
    if level.numel() != maps.shape[0]:
        raise ValueError(f"{level.numel()} levels for {maps.shape[0]} maps")
    if bool((level < 0).any()):
        raise ValueError(f"structure levels must be >= 0, got {level.tolist()}")
    out = maps.clone()
    for lv in level.unique().tolist():
        idx = level == lv
        out[idx] = _blur_one(maps[idx], lv)
    return out


class StructureEncoder(nn.Module):
    """Depth maps -> the structure input ``s`` of Gen-1 at structure level ``t_s`` (see the module docstring).

    Args:
        size: the resolution of the diffusion model's input (latent ``h = w``); ``None`` keeps the maps' size.
        depth_range: ``(near, far)`` mapped to ``(-1, 1)`` (values outside are not clipped).
        level: the default structure level (sampling).
        max_level: the largest level training draws (``0..max_level`` uniformly).
        estimator: a frozen depth network (frames in [-1, 1] -> (N, H, W)); the input is then the video.
        normalize: ``"range"`` (affine from ``depth_range``) or ``"per_frame"`` (each frame's min..max to -1..1, for
            relative depth such as MiDaS's inverse depth).
        channels: output channels (the map repeated; SD ControlNets take 3-channel hint images).
    """

    NORMALIZE = ("range", "per_frame")

    def __init__(self, size: int | None = None, depth_range: Sequence[float] = (0.0, 1.0), level: int = 0,
                 max_level: int = 0, estimator: nn.Module | None = None, normalize: str = "range",
                 channels: int = 1):
        super().__init__()
        self.channels = int(channels)
        if normalize not in self.NORMALIZE:
            raise ValueError(f"normalize must be one of {self.NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        self.estimator = estimator
        if estimator is not None:
            estimator.requires_grad_(False).eval()
        lo, hi = float(depth_range[0]), float(depth_range[1])
        if not hi > lo:
            raise ValueError(f"depth_range must be (near, far) with far > near, got {depth_range}")
        if int(level) < 0 or int(max_level) < 0:
            raise ValueError(f"structure levels must be >= 0, got level={level}, max_level={max_level}")
        self.size, self.depth_range = (None if size is None else int(size)), (lo, hi)
        self.level, self.max_level = int(level), int(max_level)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.estimator is not None:
            self.estimator.eval()
        return self

    @torch.no_grad()
    def estimate(self, video: torch.Tensor) -> torch.Tensor:
        """The estimator's depth of a video (B, 3, T, H, W) -> (B, 1, T, H, W) (or of images -> (B, 1, H, W))."""
        if video.dim() == 4:
            return self.estimator(video)[:, None]
        b, c, t, h, w = video.shape
        d = self.estimator(rearrange(video, "b c t h w -> (b t) c h w"))
        return rearrange(d.reshape(b * t, 1, *d.shape[-2:]), "(b t) c h w -> b c t h w", b=b)

    def forward(self, depth: torch.Tensor, level: int | torch.Tensor | None = None) -> torch.Tensor:
        if self.estimator is not None:
            if depth.shape[1] != 3:
                raise ValueError(f"with an estimator the structure encoder takes videos (B, 3, T, H, W) or images "
                                 f"(B, 3, H, W), got {tuple(depth.shape)}")
            depth = self.estimate(depth)
        video = depth.dim() == 5 or depth.dim() == 4 and depth.shape[1] != 1
        if depth.dim() == 4 and depth.shape[1] != 1:      # (B, T, H, W): the worlds' per-frame depth
            depth = depth[:, None]
        if depth.dim() == 3:                              # (B, H, W): one image's depth
            depth = depth[:, None]
        if depth.dim() not in (4, 5) or depth.shape[1] != 1:
            raise ValueError(f"depth must be (B, T, H, W), (B, 1, T, H, W), (B, 1, H, W) or (B, H, W), got "
                             f"{tuple(depth.shape)}")
        if self.normalize == "per_frame":
            d = depth.float()
            lo = d.amin(dim=(-2, -1), keepdim=True)
            hi = d.amax(dim=(-2, -1), keepdim=True)
            s = (d - lo) * (2.0 / (hi - lo).clamp_min(1e-6)) - 1.0
        else:
            lo, hi = self.depth_range
            s = (depth.float() - lo) * (2.0 / (hi - lo)) - 1.0
        level = self.level if level is None else level
        b = s.shape[0]
        frames = s.shape[2] if s.dim() == 5 else 1
        maps = rearrange(s, "b c t h w -> (b t) c h w") if s.dim() == 5 else s
        if isinstance(level, torch.Tensor):
            level = level.reshape(-1).repeat_interleave(frames)
        maps = structure_blur(maps, level)
        if self.size is not None and maps.shape[-1] != self.size:
            maps = F.interpolate(maps, size=(self.size, self.size), mode="area")
        if self.channels != 1:
            maps = maps.expand(-1, self.channels, -1, -1)
        if depth.dim() == 5 or video:
            return rearrange(maps, "(b t) c h w -> b c t h w", b=b)
        return maps


class ConcatInputs(nn.Module):
    """``net`` fed ``cat([x, structure], dim=1)``: ``net`` takes ``in_channels + channels`` channels. A missing
    ``structure`` is zeros (the null structure)."""

    def __init__(self, net: nn.Module, channels: int = 1, kwarg: str = "structure"):
        super().__init__()
        self.net, self.channels, self.kwarg = net, int(channels), str(kwarg)
        if net.in_channels <= self.channels:
            raise ValueError(f"the network takes {net.in_channels} channels, not more than the {self.channels} "
                             "concatenated ones")
        self.in_channels = net.in_channels - self.channels
        self.out_channels = getattr(net, "out_channels", self.in_channels)
        self.num_classes, self.context_dim = getattr(net, "num_classes", None), getattr(net, "context_dim", None)

    @property
    def null_label(self):
        return getattr(self.net, "null_label", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        s = kwargs.pop(self.kwarg, None)
        if s is None:
            s = x.new_zeros((x.shape[0], self.channels, *x.shape[2:]))
        if s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:] or s.shape[1] != self.channels:
            raise ValueError(f"{self.kwarg} is {tuple(s.shape)}; the input is {tuple(x.shape)} and {self.channels} "
                             "channel(s) are concatenated")
        return self.net(torch.cat([x, s.to(x.dtype)], dim=1), t, **kwargs)


@buildable
def concat_inputs(net: nn.Module, channels: int = 1, kwarg: str = "structure") -> ConcatInputs:
    return ConcatInputs(net, channels, kwarg)
