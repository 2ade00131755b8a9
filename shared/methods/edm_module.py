"""The EDM-preconditioned diffusion module (Karras et al. 2022) and the frozen teacher of the distillation papers.

:class:`EDMModule` is the base :class:`~shared.methods.diffusion_module.DiffusionModule` with its network wrapped in
:class:`shared.diffusion.edm.EDMPrecond` (so it predicts ``x0`` through ``c_skip/c_out/c_in/c_noise``), the
:class:`EDMSchedule` (VE, time = sigma) and EDM's weighted loss; conditions reach the network through the seam
like every other module's. Every sampler of the shared core runs on it unchanged; DDIM (eta 0) on this schedule is
the Euler step of the probability-flow ODE.

:class:`TeacherMixin` gives a distillation student its frozen teacher, loaded lazily from ``teacher_ckpt``
(knowledge, progressive and consistency distillation). How a claim pipeline trains or caches that teacher is the
harness's business (:mod:`shared.engine.teachers`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.diffusion.edm import EDMPrecond, edm_loss
from shared.methods.diffusion_module import DiffusionModule
from shared.methods.registry import module_from_checkpoint
from shared.nn.weights import load_state_dict_strict, read_checkpoint


class EDMModule(DiffusionModule):
    """Diffusion module with EDM preconditioning; ``net`` is the raw network ``F``."""

    def __init__(self, net, schedule, sigma_data: float = 0.5, boundary_eps: float | None = None, **kwargs):
        kwargs["prediction"] = "x0"
        kwargs.setdefault("loss_weighting", "simple")
        super().__init__(EDMPrecond(net, sigma_data, boundary_eps), schedule, **kwargs)
        self.sigma_data = float(sigma_data)

    def objective(self, x0: torch.Tensor, generator: torch.Generator, **net_kwargs) -> torch.Tensor:
        return edm_loss(self.net, x0, self.schedule, generator, **net_kwargs)

    def noise(self, n: int, generator: torch.Generator | None = None, shape=None) -> torch.Tensor:
        """``x_T = sigma_max z`` (variance exploding: the prior at ``t_max`` is ``N(0, sigma_max^2 I)``)."""
        return super().noise(n, generator, shape) * self.schedule.t_max


def load_teacher_net(path: str | Path, use_ema: bool = True):
    """The frozen sampling network (EMA if present) of a saved EDM module, and the module itself."""
    module = module_from_checkpoint(path)
    net = module.sampling_net(use_ema).eval().requires_grad_(False)
    return net, module


def sampling_state(path: str | Path) -> dict:
    """The sampling network's weights (EMA copy if the checkpoint has one) of a saved module, keyed as its ``net``."""
    sd = read_checkpoint(path)["state_dict"]
    prefix = "ema.model." if any(k.startswith("ema.model.") for k in sd) else "net."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def init_from_checkpoint(module: DiffusionModule, path: str | Path) -> None:
    """Initialise ``module.net`` (and its EMA copy) from the sampling weights of a saved module (a student starts
    as its teacher: Luhman & Luhman, Salimans & Ho, Song et al.). Reads the file only — no instantiation."""
    state = sampling_state(path)
    load_state_dict_strict(module.net, state, what=f"init from {path}")
    if module.ema is not None:
        load_state_dict_strict(module.ema.model, state, what=f"init EMA from {path}")


class TeacherMixin:
    """A frozen teacher loaded lazily from ``teacher_ckpt`` (kept out of ``state_dict`` and the optimiser)."""

    teacher_ckpt: str | None = None

    @property
    def teacher(self):
        cached = self.__dict__.get("_teacher_net")
        if cached is None:
            if not self.teacher_ckpt:
                raise ValueError(f"{type(self).__name__} needs teacher_ckpt")
            cached, mod = load_teacher_net(self.teacher_ckpt)
            object.__setattr__(self, "_teacher_net", cached.to(self.device))
            object.__setattr__(self, "_teacher_module", mod)
        return cached

    def teacher_denoiser(self, clip: bool = True):
        """``denoise(x_t, sigma) -> (x0_hat, eps_hat)`` of the frozen teacher (its sampler's clipping if ``clip``)."""
        from shared.diffusion.parameterization import make_denoiser
        net = self.teacher
        mod = self.__dict__["_teacher_module"]
        return make_denoiser(net, mod.schedule, "x0", clip_x0=mod.clip_x0 if clip else None)


