"""The EDM-preconditioned diffusion module (Karras et al. 2022) and the teacher helper of the distillation papers.

:class:`EDMModule` is the base :class:`~shared.engine.module.DiffusionModule` with its network wrapped in
:class:`shared.diffusion.edm.EDMPrecond` (so it predicts ``x0`` through ``c_skip/c_out/c_in/c_noise``), the
:class:`EDMSchedule` (VE, time = sigma) and EDM's weighted loss. Every sampler of the shared core runs on it
unchanged; DDIM (eta 0) on this schedule is the Euler step of the probability-flow ODE.

One EDM teacher serves knowledge distillation, progressive distillation and consistency distillation. Papers
never import each other, so each pipeline trains its teacher with :func:`teacher_for_seed` — the same recipe
(the experiment's ``module``/``model``/``data``/``trainer``) and seed give bit-identical teachers on CPU, and a
teacher cache under ``<paths.output_dir>/teacher_cache/<hash>`` (keyed by that recipe, the seed and the source
of the code that trains it) lets the second and third pipelines load instead of re-training.
``claim.teacher_ckpt`` (a path, ``{seed}`` substituted) reuses a checkpoint file instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.diffusion.edm import EDMPrecond, edm_loss
from shared.engine.module import DiffusionModule

log = logging.getLogger(__name__)
_ROOT = Path(__file__).resolve().parents[2]


class EDMModule(DiffusionModule):
    """Diffusion module with EDM preconditioning; ``net`` is the raw network ``F``."""

    def __init__(self, net, schedule, sigma_data: float = 0.5, boundary_eps: float | None = None, **kwargs):
        kwargs["prediction"] = "x0"
        kwargs.setdefault("loss_weighting", "simple")
        super().__init__(EDMPrecond(net, sigma_data, boundary_eps), schedule, **kwargs)
        self.sigma_data = float(sigma_data)

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return edm_loss(self.net, batch["x"], self.schedule, generator)

    def noise(self, n: int, generator: torch.Generator | None = None, shape=None) -> torch.Tensor:
        """``x_T = sigma_max z`` (variance exploding: the prior at ``t_max`` is ``N(0, sigma_max^2 I)``)."""
        return super().noise(n, generator, shape) * self.schedule.t_max


def save_module(module, path: str | Path) -> Path:
    """A minimal checkpoint (weights + resolved run config) that ``module_from_checkpoint`` rebuilds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": module.state_dict(), "run_config": module.run_config,
                "schedule": module.schedule.describe()}, tmp)
    tmp.replace(path)
    return path


def _code_digest() -> str:
    h = hashlib.sha256()
    # the source that trains a teacher (not the samplers or the students' code, which do not change its weights)
    for rel in ("shared/diffusion/edm.py", "shared/diffusion/schedules.py", "shared/nn/unet.py", "shared/nn/layers.py",
                "shared/nn/attention.py", "shared/nn/embeddings.py", "shared/nn/ema.py", "shared/engine/module.py",
                "shared/data/digits.py", "shared/data/datamodule.py"):
        p = _ROOT / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            if f.exists():
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def teacher_key(cfg: DictConfig, seed: int) -> str:
    """Hash of everything that determines the trained teacher."""
    from shared.engine.claims import variant_config
    sub = variant_config(cfg, None, seed)
    parts = {k: OmegaConf.to_container(sub[k], resolve=True) for k in ("model", "module", "data")}
    parts["max_steps"] = int(sub.trainer.max_steps)
    parts["seed"] = int(seed)
    parts["code"] = _code_digest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_for_seed(cfg: DictConfig, seed: int):
    """Return ``(teacher_module, ckpt_path, how)``: loaded from ``claim.teacher_ckpt``, from the cache, or trained
    with ``fit_variant`` (the experiment's ``module``/``trainer`` config) and cached."""
    from shared.engine.checkpoint import module_from_checkpoint
    from shared.engine.claims import fit_variant, note_reused

    c = cfg.claim
    if c.get("teacher_ckpt"):
        path = str(c.teacher_ckpt).format(seed=seed)
        return module_from_checkpoint(path), path, "teacher_ckpt"
    cache = None
    if c.get("teacher_cache", True) and not cfg.trainer.get("fast_dev_run"):   # never cache a 1-step smoke teacher
        cache = Path(cfg.paths.output_dir) / "teacher_cache" / teacher_key(cfg, seed) / "teacher.ckpt"
        if cache.is_file():
            log.info("teacher seed %s: cached %s", seed, cache)
            note_reused(f"teacher_cache:seed{seed}")  # this run's wall time excludes the teacher's training
            return module_from_checkpoint(cache), str(cache), "cache"
    module = fit_variant(cfg, f"teacher_seed{seed}", seed=seed)
    path = save_module(module, Path(cfg.run_dir) / f"teacher_seed{seed}" / "teacher.ckpt")
    if cache is not None:
        save_module(module, cache)
    return module, str(path), "trained"


def load_teacher_net(path: str | Path, use_ema: bool = True):
    """The frozen sampling network (EMA if present) of a saved EDM module, and the module itself."""
    from shared.engine.checkpoint import module_from_checkpoint

    module = module_from_checkpoint(path)
    net = module.sampling_net(use_ema).eval().requires_grad_(False)
    return net, module


def sampling_state(path: str | Path) -> dict:
    """The sampling network's weights (EMA copy if the checkpoint has one) of a saved module, keyed as its ``net``."""
    from shared.engine.checkpoint import load_checkpoint_file

    sd = load_checkpoint_file(path)["state_dict"]
    prefix = "ema.model." if any(k.startswith("ema.model.") for k in sd) else "net."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def init_from_checkpoint(module: DiffusionModule, path: str | Path) -> None:
    """Initialise ``module.net`` (and its EMA copy) from the sampling weights of a saved module (a student starts
    as its teacher: Luhman & Luhman, Salimans & Ho, Song et al.). Reads the file only — no instantiation."""
    from shared.engine.checkpoint import load_state_dict_strict

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


def teacher_ddim_fd(cfg: DictConfig, teacher, seed: int, reference: torch.Tensor, save_steps=()) -> dict[int, float]:
    """FD_judge of the teacher's deterministic DDIM samples (on the nested EDM grid) at each of
    ``cfg.claim.ddim_steps``; the baseline every few-step paper's table compares against. Grids of the
    step counts in ``save_steps`` are saved for the first seed."""
    from shared.diffusion.edm import nested_grid
    from shared.engine.video_io import save_image_grid
    from shared.metrics.judge import fd_judge

    c = cfg.claim
    out = {}
    for steps in c.ddim_steps:
        g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
        times = nested_grid(teacher.schedule, int(steps))
        x = teacher.sample(int(c.num_samples), sampler={"name": "ddim", "steps": int(steps), "times": times},
                           generator=g)
        out[int(steps)] = fd_judge(x, reference)
        if int(seed) == int(c.seeds[0]) and int(steps) in save_steps:
            save_image_grid(x[:64], f"{cfg.run_dir}/teacher_ddim_{steps}step.png", nrow=8)
    return out
