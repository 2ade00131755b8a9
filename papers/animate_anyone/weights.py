"""Load the weight layout of the public Animate Anyone re-implementation (MooreThreads/Moore-AnimateAnyone, the
files users have: ``pretrained_weights/{denoising_unet,reference_unet,pose_guider,motion_module}.pth``) into
:class:`~shared.nn.reference.ReferenceDenoiser` — strictly, one line naming the file and the keys on a mismatch.

Facts of that layout (read from its ``train_stage_1.py`` / ``train_stage_2.py`` / ``src/models``):

* ``denoising_unet.pth`` — the stage-1 ``UNet3DConditionModel`` without motion modules: diffusers'
  ``UNet2DConditionModel`` key names (its inflated convolutions and group norms keep them), SD-1.5 shapes;
* ``reference_unet.pth`` — the ReferenceNet, a ``UNet2DConditionModel`` whose ``conv_norm_out`` / ``conv_out`` were
  removed (unused): diffusers' names without those four tensors;
* ``pose_guider.pth`` — ``PoseGuider(320, block_out_channels=(16, 32, 96, 256))``: ``conv_in``, ``blocks.0-5``,
  ``conv_out`` (our :class:`shared.nn.guider.Guider` names, ``target="conv_in"``, ``stride=2``);
* ``motion_module.pth`` — the stage-2 denoiser's keys containing ``motion_modules`` (AnimateDiff's official layout,
  ``down_blocks.i.motion_modules.j....``; v2 placement with a mid-block module, ``position="before_resample"``),
  converted by :func:`shared.nn.motion_module.from_official`.

Files are read with ``torch.load(weights_only=True)`` (``shared/nn/weights.py``); nothing is unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.nn.motion_module import from_official, load_motion_module_state_dict
from shared.nn.reference import ReferenceDenoiser
from shared.nn.sd_unet import diffusers_key_map
from shared.nn.weights import CheckpointError, load_state_dict_strict, read_state_dict

FILES = {"denoiser": "denoising_unet.pth", "reference": "reference_unet.pth", "guider": "pose_guider.pth",
         "motion": "motion_module.pth"}


def _renamed(state: dict[str, torch.Tensor], unet, path: Path) -> dict[str, torch.Tensor]:
    """A diffusers-named U-Net state dict on ``unet``'s keys (image layers), strict."""
    mapping = diffusers_key_map(unet)  # ours -> theirs
    theirs = set(mapping.values())
    missing = sorted(t for t in theirs if t not in state)
    unexpected = sorted(k for k in state if k not in theirs)
    own = unet.state_dict()
    shapes = [t for o, t in mapping.items() if t in state and tuple(state[t].shape) != tuple(own[o].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: {len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected "
                              f"{unexpected[:3]}, {len(shapes)} mis-shaped {shapes[:3]} (diffusers U-Net layout)")
    return {o: state[t] for o, t in mapping.items()}


def load_released(net: ReferenceDenoiser, folder: str | Path, motion: bool = False) -> ReferenceDenoiser:
    """Load the image files (``motion=False``: denoiser, ReferenceNet, Pose Guider) or ``motion_module.pth``
    (``motion=True``; the denoiser must already hold its motion modules) from ``folder``."""
    folder = Path(folder)
    if motion:
        path = folder / FILES["motion"]
        state = read_state_dict(path, "motion-module weights")
        load_motion_module_state_dict(net.denoiser, from_official(state, net.denoiser))
        return net
    if net.reference_net is None or net.guider is None:
        raise ValueError("the released Animate Anyone weights need a network with a ReferenceNet and a Pose Guider")
    path = folder / FILES["denoiser"]
    ours = _renamed(read_state_dict(path, "denoising U-Net weights"), net.denoiser, path)
    net.denoiser.load_state_dict(ours, strict=False)
    path = folder / FILES["reference"]
    ours = _renamed(read_state_dict(path, "ReferenceNet weights"), net.reference_net.unet, path)
    load_state_dict_strict(net.reference_net.unet, ours, what=f"ReferenceNet weights {path}")
    path = folder / FILES["guider"]
    load_state_dict_strict(net.guider, read_state_dict(path, "Pose Guider weights"), what=f"Pose Guider weights {path}")
    return net


def to_released(net: ReferenceDenoiser) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse (for tests and export): ``{file name: state dict}`` in the re-implementation's layout."""
    out = {}
    for key, unet in (("denoiser", net.denoiser), ("reference", net.reference_net.unet)):
        own = unet.state_dict()
        out[FILES[key]] = {t: own[o].clone() for o, t in diffusers_key_map(unet).items()}
    out[FILES["guider"]] = {k: v.clone() for k, v in net.guider.state_dict().items()}
    if getattr(net.denoiser, "temporal_names", None):
        from shared.nn.motion_module import motion_module_state_dict, to_official

        out[FILES["motion"]] = to_official(motion_module_state_dict(net.denoiser), net.denoiser)
    return out
