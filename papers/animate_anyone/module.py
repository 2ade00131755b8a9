"""Animate Anyone (Hu, Gao, Zhang, Sun, Zhang & Bo, CVPR 2024) — the LightningModule.

Every stage trains with the latent-diffusion objective of the paper (Sec. 3.1, Eq. 1: the eps-prediction MSE; here
in pixel space at CPU scale) on whatever the stage's network (:mod:`papers.animate_anyone.nets`) leaves trainable —
the base image model, stage 1 (denoiser + ReferenceNet + Pose Guider + image encoder, on single frames) or stage 2
(the motion modules alone, everything else frozen; Sec. 3.3). The reference image and the pose maps reach the
network through the conditioning seam (``module.conditions`` in the experiment config: ``reference`` and
``pose_map`` -> ``guide``), so neither the loss nor the sampler is overridden. :meth:`AnimateAnyone.export_weights`
writes the stage's trained part from the EMA copy.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.methods.diffusion_module import DiffusionModule
from shared.nn.motion_module import motion_module_state_dict
from shared.nn.weights import save_weights


def stage_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a stage ships: the denoiser for ``base``, the whole network for the image stages, the motion
    modules for ``motion``."""
    stage = getattr(net, "stage", None)
    if stage == "base":
        return {k: v.detach().clone() for k, v in net.denoiser.state_dict().items()}
    if stage in ("image", "image_embed"):
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    if stage == "motion":
        return motion_module_state_dict(net.denoiser)
    raise ValueError(f"stage {stage!r} trains nothing to export")


class AnimateAnyone(DiffusionModule):
    """The diffusion module; adds :meth:`export_weights`."""

    def export_weights(self, path: str | Path, use_ema: bool = True) -> Path:
        return save_weights(stage_state_dict(self.sampling_net(use_ema)), path)
