"""Build Animate Anyone's network for each training stage (Hu et al., CVPR 2024, Sec. 3.2-3.3) from one denoiser.

``animate_anyone_net(denoiser, stage=...)`` is what ``conf/model/animate_anyone_*.yaml`` instantiates; the pieces are
shared (``shared/nn/reference.py``: ReferenceNet and the reference-conditioned denoiser; ``shared/nn/guider.py``: the
Pose Guider; ``shared/nn/motion_module.py``: the temporal layers):

* ``base`` — the pretrained image model the paper starts from (Stable Diffusion; at CPU scale an unconditional
  image model of the world's frames, its cross-attention on a zero token). Everything trains.
* ``image`` — stage 1 (Sec. 3.3): denoiser and ReferenceNet both initialised from the base (``base_weights``),
  Pose Guider (last layer zero), the reference's image embedding in the cross-attention (``image_encoder``: CLIP at
  paper scale, frozen there; a small trainable encoder at CPU scale). Trained on single frames.
* ``image_embed`` — the ablation "embedding-only": stage 1 without the ReferenceNet (the reference reaches the model
  only through its image embedding in the cross-attention), same budget.
* ``motion`` — stage 2: the stage-1 network (``image_weights``) with AnimateDiff motion modules inserted in the
  denoiser (zero-initialised output: the video model equals the image model frame by frame at the start), every
  other weight frozen; only the motion modules train.
* ``animate`` — inference: stage 2 with trained ``motion_weights``; nothing trains.
* ``frames`` — the stage-1 network used frame by frame (``image_weights``); nothing trains.

Weight files (safetensors, written by :meth:`papers.animate_anyone.module.AnimateAnyone.export_weights`): the whole
network's state for ``base`` / ``image`` / ``image_embed`` and the motion modules alone for ``motion``.
``released`` points at a folder of the public re-implementation's files instead (``denoising_unet.pth``,
``reference_unet.pth``, ``pose_guider.pth``, ``motion_module.pth``: :func:`papers.animate_anyone.weights
.load_released`). ``reference_encoder`` (latent diffusion at paper scale) maps the reference pixels to the
ReferenceNet's input — SD's VAE latents — while the image encoder (CLIP) sees the pixels. The built network records
its stage in ``net.stage``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from shared.nn.build import buildable
from shared.nn.motion_module import from_image_model, load_motion_module_state_dict
from shared.nn.reference import ReferenceDenoiser, ReferenceNet, copy_spatial
from shared.nn.unet import UNet
from shared.nn.weights import load_state_dict_strict, read_state_dict

STAGES = ("base", "image", "image_embed", "motion", "animate", "frames")


def _load(net: nn.Module, path: str, what: str) -> None:
    load_state_dict_strict(net, read_state_dict(path, what), what=f"{what} {path}")


@buildable
def animate_anyone_net(denoiser: UNet, stage: str = "image", guider: nn.Module | None = None,
                       image_encoder: nn.Module | None = None, reference_encoder: nn.Module | None = None,
                       reference_time: float = 0.0,
                       reference_net: bool = True, base_weights: str | None = None,
                       image_weights: str | None = None, motion_weights: str | None = None,
                       released: str | None = None, motion_module: Callable[[int], nn.Module] | dict | None = None,
                       where: Sequence[str] = ("input", "middle", "output"), position: str = "end",
                       freeze_image_encoder: bool = False) -> ReferenceDenoiser:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "base":
        net = ReferenceDenoiser(denoiser)
        net.stage = stage
        return net
    if base_weights:
        _load(denoiser, base_weights, "base image model")
    with_reference = reference_net and stage != "image_embed"
    ref = ReferenceNet(copy_spatial(denoiser), time=reference_time) if with_reference else None
    net = ReferenceDenoiser(denoiser, reference_net=ref, image_encoder=image_encoder, guider=guider,
                            reference_encoder=reference_encoder if ref is not None else None)
    if image_weights:
        _load(net, image_weights, "stage-1 (image) weights")
    if released:
        from papers.animate_anyone.weights import load_released

        load_released(net, released, motion=False)
    if freeze_image_encoder and image_encoder is not None:
        image_encoder.requires_grad_(False)
    if stage in ("image", "image_embed"):
        net.stage = stage
        return net
    if stage == "frames":
        net.requires_grad_(False)
        net.stage = stage
        return net
    net.requires_grad_(False)
    from_image_model(denoiser, motion_module, where=where, freeze=True, copy=False, position=position)
    if motion_weights:
        load_motion_module_state_dict(denoiser, read_state_dict(motion_weights, "motion-module weights"))
    elif released:
        from papers.animate_anyone.weights import load_released

        load_released(net, released, motion=True)
    elif stage == "animate":
        raise ValueError("stage 'animate' needs motion_weights (trained motion modules) or released weights")
    if stage == "animate":
        net.requires_grad_(False)
    net.stage = stage
    return net
