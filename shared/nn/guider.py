"""The conditioning guider: a light conv encoder of a spatial control image added to the denoiser's input.

* Animate Anyone's **Pose Guider** (Hu et al. 2024, Sec. 3.2): "four convolution layers (4x4 kernels, 2x2 strides,
  16, 32, 64, 128 channels) ... to align the pose image with the same resolution as the noise latent. The processed
  pose image is added to the noise latent before being input into the denoising UNet. The Pose Guider is
  initialized with Gaussian weights, and in the final projection layer we employ zero convolution."
* EMO's **Face Locator** (Tian et al. 2024, Sec. 3.2): "lightweight convolutional layers designed to encode the
  bounding box mask. The resulting encoded mask is then added to the noisy latent representation before being fed
  into the Backbone."

One module serves both. Layout (sub-module names) of the public Animate Anyone re-implementation's
``PoseGuider`` (MooreThreads/Moore-AnimateAnyone ``src/models/pose_guider.py``, released ``pose_guider.pth``):
``conv_in`` (3x3, ``in_channels -> widths[0]``), then for each consecutive pair of widths ``blocks.2k`` (3x3,
``w_k -> w_k``) and ``blocks.2k+1`` (3x3, ``w_k -> w_{k+1}``, stride ``stride``), each followed by SiLU, and
``conv_out`` (3x3, ``widths[-1] -> out_channels``) zero-initialised — so a freshly added guider changes nothing
(the model with it equals the base model; ``tests/test_avatar_nets.py``). ``stride=2`` with four widths is the 8x
reduction to SD's latent grid; at CPU scale in pixel space ``stride=1`` keeps the resolution.

``target`` says where the output goes: ``"input"`` — added to the noisy input ``x`` (the papers' text;
``out_channels`` = the denoiser's input channels); ``"conv_in"`` — added to the output of the denoiser's first
convolution (the re-implementation: ``conditioning_embedding_channels=320``, ``UNet3DConditionModel`` adds
``pose_cond_fea`` after ``conv_in``), via ``ctx["input_residual"]`` of :class:`shared.nn.unet.UNet`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.layers import zero_module

__all__ = ["Guider", "TARGETS"]

TARGETS = ("input", "conv_in")


class Guider(nn.Module):
    """``(N, in_channels, H, W) -> (N, out_channels, H / stride^(len(widths)-1), ...)``; see the module docstring."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4, widths: Sequence[int] = (16, 32, 64, 128),
                 stride: int = 2, target: str = "input", zero_init: bool = True):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"guider target must be one of {TARGETS}, got {target!r}")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or int(stride) < 1:
            raise ValueError(f"guider widths must be positive and stride >= 1, got widths={widths}, stride={stride}")
        self.in_channels, self.out_channels, self.target, self.stride = int(in_channels), int(out_channels), target, \
            int(stride)
        self.conv_in = nn.Conv2d(self.in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=self.stride))
        self.conv_out = nn.Conv2d(widths[-1], self.out_channels, 3, padding=1)
        if zero_init:
            zero_module(self.conv_out)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.ndim != 4 or cond.shape[1] != self.in_channels:
            raise ValueError(f"the guider expects (N, {self.in_channels}, H, W), got {tuple(cond.shape)}")
        h = F.silu(self.conv_in(cond))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)
