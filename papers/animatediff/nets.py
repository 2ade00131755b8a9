"""Build the network of each AnimateDiff stage from one base image U-Net (Guo et al., ICLR 2024, Sec. 4).

``animatediff_net(image, stage=...)`` is what ``conf/model/animatediff_*.yaml`` instantiates:

* ``image`` — the base text-to-image model (here class-conditional: the digit is the "text"), trained alone.
* ``personalize_full`` / ``personalize_lora`` — the base (``image_weights``) fine-tuned on a small domain,
  every weight (DreamBooth-style) or LoRA factors only (``lora``: rank, alpha, target).
* ``motion`` — the base, frozen, with a zero-initialised motion module after every spatial stage
  (:func:`shared.nn.motion_module.from_image_model`); only the motion modules train (Sec. 4.2).
* ``motion_lora`` — base + trained motion modules (``motion_weights``), all frozen, plus MotionLoRA
  (``motion_lora``: rank, alpha) on the motion modules' attention projections (Sec. 4.3).
* ``animate`` — inference: base, optionally ``personal`` ({kind: full|lora, path}) applied (LoRA merged), the
  motion modules plugged in unchanged and optionally ``motion_lora_weights``; nothing trains.

Weights are safetensors written by :meth:`papers.animatediff.module.AnimateDiff.export_weights`: the full
image state dict (``image``, ``personalize_full``), LoRA factors (``personalize_lora``, ``motion_lora``) or the
motion modules alone (``motion``); ``motion_weights`` may also be a released ``mm_sd_v15*.ckpt`` (official key
layout, converted by :func:`shared.nn.motion_module.from_official`). The built net records its stage in
``net.animatediff_stage``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from shared.nn.build import buildable
from shared.nn.lora import inject_lora, load_lora_state_dict, remove_lora
from shared.nn.motion_module import from_image_model, from_official, inject_motion_lora, load_motion_module_state_dict

STAGES = ("image", "personalize_full", "personalize_lora", "motion", "motion_lora", "animate")


OFFICIAL_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.")


def load_weights(path: str):
    """A safetensors state dict of ours, or (``.ckpt``/``.pth``) a ``torch.load(weights_only=True)`` file."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    from shared.nn.motion_module import load_official_checkpoint

    return load_official_checkpoint(path)


def load_motion_weights(video: nn.Module, path: str) -> None:
    """Our motion-module export, or a released ``mm_sd_v15*.ckpt`` (official key layout, converted)."""
    state = load_weights(path)
    if state and all(k.startswith(OFFICIAL_PREFIXES) for k in state):
        state = from_official(state, video)
    load_motion_module_state_dict(video, state)


def apply_personalisation(image: nn.Module, personal: dict, lora: dict) -> nn.Module:
    """Load a personalised image model's weights into ``image`` (LoRA factors are merged into the weights)."""
    kind, path = personal["kind"], personal["path"]
    if kind == "full":
        image.load_state_dict(load_weights(path), strict=True)
    elif kind == "lora":
        inject_lora(image, target=lora.get("target"), rank=int(lora["rank"]), alpha=lora.get("alpha"),
                    freeze_base=False)
        load_lora_state_dict(image, load_weights(path))
        remove_lora(image, merge=True)
    else:
        raise ValueError(f"personal.kind must be 'full' or 'lora', got {kind!r}")
    return image


@buildable
def animatediff_net(image: nn.Module, stage: str = "image", image_weights: str | None = None,
                    personal: dict | None = None, motion_module: Callable[[int], nn.Module] | dict | None = None,
                    motion_weights: str | None = None, motion_lora_weights: str | None = None,
                    lora: dict | None = None, motion_lora: dict | None = None,
                    where: Sequence[str] = ("input", "middle", "output"), position: str = "end") -> nn.Module:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    lora = dict(lora or {"rank": 4, "alpha": None, "target": None})
    motion_lora = dict(motion_lora or {"rank": 4, "alpha": None})
    if image_weights:
        image.load_state_dict(load_weights(image_weights), strict=True)
    if personal:
        apply_personalisation(image, personal, lora)
    if stage == "image" or stage == "personalize_full":
        image.requires_grad_(True)
        image.animatediff_stage = stage
        return image
    if stage == "personalize_lora":
        inject_lora(image, target=lora.get("target"), rank=int(lora["rank"]), alpha=lora.get("alpha"),
                    freeze_base=True)
        image.animatediff_stage = stage
        return image
    video = from_image_model(image, motion_module, where=where, freeze=True, copy=False, position=position)
    if motion_weights:
        load_motion_weights(video, motion_weights)
    elif stage in ("motion_lora", "animate"):
        raise ValueError(f"stage {stage!r} needs motion_weights (a trained motion module)")
    if stage == "motion_lora" or motion_lora_weights:
        inject_motion_lora(video, rank=int(motion_lora["rank"]), alpha=motion_lora.get("alpha"))
        if motion_lora_weights:
            load_lora_state_dict(video, load_weights(motion_lora_weights))
    if stage == "animate":
        video.requires_grad_(False)
    video.animatediff_stage = stage
    return video
