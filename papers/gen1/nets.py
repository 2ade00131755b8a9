"""Gen-1's network at paper scale (Esser et al., ICCV 2023, Sec. 3.2-3.3): a pretrained image LDM U-Net with the
structure channel added to its input and temporal layers after its spatial stages.

:func:`gen1_unet` takes an image U-Net (``shared.nn.sd_unet.sd15_unet``, weights from a local SD folder), widens its
first convolution by ``structure_channels`` input channels initialised at zero (the pretrained model is unchanged at
initialisation, as for depth-conditioned SD fine-tunes), inflates it with temporal blocks (``shared.nn.video``:
temporal attention + temporal convolution, zero-initialised; ``insert="resblock"``) and wraps it in
:class:`shared.nn.structure.ConcatInputs`, so the module feeds ``structure=`` and samples latents of the image model's
channel count. Every weight trains (Gen-1 fine-tunes the whole model on images and videos). The CPU claim builds the
same layout from scratch (``conf/model/gen1_tiny.yaml``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from shared.nn.build import buildable
from shared.nn.structure import ConcatInputs
from shared.nn.unet import UNet
from shared.nn.video import video_from_image


def widen_input(unet: UNet, extra: int) -> UNet:
    """Add ``extra`` input channels to ``unet``'s first convolution, their weights zero (outputs unchanged)."""
    conv = unet.input_blocks[0][0]
    new = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : conv.in_channels] = conv.weight
        new.bias.copy_(conv.bias)
    unet.input_blocks[0][0] = new
    unet.in_channels = conv.in_channels + extra
    return unet


@buildable
def gen1_unet(image: UNet, temporal: Callable[[int], nn.Module], structure_channels: int = 1,
              insert: str = "resblock", where: Sequence[str] = ("input", "middle", "output")) -> ConcatInputs:
    """The pretrained image U-Net widened by the structure channel(s) and inflated with temporal layers."""
    video = video_from_image(widen_input(image, int(structure_channels)), temporal, insert=insert, where=where,
                             freeze=False, copy=False)
    return ConcatInputs(video, int(structure_channels), "structure")
