"""EMO: Emote Portrait Alive (Tian, Wang, Zhang & Bo, ECCV 2024) — the LightningModule.

Every stage trains with SD's objective (Sec. 3.1, Eq. 1: eps-prediction MSE; pixel space at CPU scale) on what the
stage's network (:mod:`papers.emo.nets`) leaves trainable: the base image model; stage 1 (backbone, ReferenceNet,
face locator on single frames); stage 2 (temporal modules and audio layers, clips of n motion frames + f frames);
stage 3 (temporal modules and speed layers). The reference image, the face region, the audio feature windows, the
head speed and the motion frames reach the network through the conditioning seam (``module.conditions``); no loss
or sampler override. :meth:`EMO.export_weights` writes the stage's trained part from the EMA copy.
"""
from __future__ import annotations

from pathlib import Path

from papers.emo.nets import stage_state_dict
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.weights import save_weights


class EMO(DiffusionModule):
    """The diffusion module; adds :meth:`export_weights`."""

    def export_weights(self, path: str | Path, use_ema: bool = True) -> Path:
        return save_weights(stage_state_dict(self.sampling_net(use_ema)), path)
