"""The paper-scale video ControlNet: ControlNet (Zhang et al., ICCV 2023) on Stable Diffusion 1.5, run per frame
under AnimateDiff's motion module (Guo et al., ICLR 2024) — how depth/edge/pose ControlNets drive AnimateDiff videos.

:func:`animatediff_controlnet` builds, from one SD-1.5 image U-Net (``shared.nn.sd_unet.sd15_unet``, its weights from
a local SD folder): the ControlNet copied from the image U-Net (Sec. 3.2) — or a released ControlNet loaded strictly
(``controlnet_weights``: a diffusers folder or file, or the original ``control_sd15_*.pth`` / ``control_v11*.pth``,
``shared.nn.controlnet.load_controlnet``) — then the image U-Net inflated with motion modules
(``shared.nn.motion_module.from_image_model``; ``motion_weights``: our export or a released ``mm_sd_v15*.ckpt``,
official layout converted) and frozen, and the two joined in a :class:`shared.nn.controlnet.ControlledUNet`. Only the
ControlNet trains. At CPU scale the claim builds the same thing from a tiny trained base
(``shared.nn.controlnet.controlled_unet``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from shared.nn.build import buildable
from shared.nn.controlnet import ControlledUNet, ControlNet, load_controlnet
from shared.nn.motion_module import (
    from_image_model,
    from_official,
    load_motion_module_state_dict,
    load_official_checkpoint,
)
from shared.nn.weights import read_state_dict

OFFICIAL_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.")


def load_motion_weights(video: nn.Module, path: str) -> None:
    """Motion modules from our export (safetensors of ``motion_module_state_dict``) or a released AnimateDiff
    checkpoint (official key layout, converted), strictly."""
    state = read_state_dict(path, "motion-module weights") if str(path).endswith(".safetensors") \
        else load_official_checkpoint(path)
    if state and all(k.startswith(OFFICIAL_PREFIXES) for k in state):
        state = from_official(state, video)
    load_motion_module_state_dict(video, state)


@buildable
def animatediff_controlnet(image: nn.Module, motion_module: Callable[[int], nn.Module] | dict | None = None,
                           motion_weights: str | None = None, controlnet_weights: str | None = None,
                           hint_channels: int = 3, hint_block: Sequence[int] = (16, 32, 96, 256),
                           where: Sequence[str] = ("input", "output"), position: str = "before_resample",
                           conditioning_scale: float = 1.0) -> ControlledUNet:
    """SD-1.5 + AnimateDiff motion modules (frozen) steered per frame by a ControlNet (trainable)."""
    cn = ControlNet.from_unet(image, hint_channels, hint_block)   # the image layers, before inflation
    if controlnet_weights:
        load_controlnet(controlnet_weights, into=cn)
    video = from_image_model(image, motion_module, where=where, freeze=True, copy=False, position=position)
    if motion_weights:
        load_motion_weights(video, motion_weights)
    return ControlledUNet(video, cn, conditioning_scale, freeze_base=True)
