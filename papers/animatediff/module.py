"""AnimateDiff (Guo, Yang, Rao, Liang, Wang, Qiao, Agrawala, Lin & Dai, ICLR 2024) — the LightningModule.

Every stage trains with the base diffusion objective (AnimateDiff Eq. 2/4: the eps-prediction MSE of latent
diffusion, here in pixel space at CPU scale) on whatever the stage's network leaves trainable
(:mod:`papers.animatediff.nets`): the image model, a personalised copy (full or LoRA), the motion modules with the
image model frozen (Sec. 4.2), or MotionLoRA (Sec. 4.3). The optimiser of
:class:`~shared.methods.diffusion_module.DiffusionModule` takes only ``requires_grad`` parameters, so the frozen weights
stay bit-identical. :meth:`AnimateDiff.export_weights` writes just the stage's trained part (the motion modules
alone, the LoRA factors alone, or the full image model) from the EMA copy.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.methods.diffusion_module import DiffusionModule
from shared.nn.lora import lora_state_dict
from shared.nn.motion_module import motion_module_state_dict


def stage_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a stage ships: full image weights, LoRA factors, or motion modules only."""
    stage = getattr(net, "animatediff_stage", "image")
    if stage in ("image", "personalize_full"):
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    if stage in ("personalize_lora", "motion_lora"):
        return lora_state_dict(net)
    if stage == "motion":
        return motion_module_state_dict(net)
    raise ValueError(f"stage {stage!r} trains nothing to export")


class AnimateDiff(DiffusionModule):
    """The base diffusion module; adds :meth:`export_weights`."""

    def export_weights(self, path: str | Path, use_ema: bool = True) -> Path:
        from safetensors.torch import save_file

        state = stage_state_dict(self.sampling_net(use_ema))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        return path
