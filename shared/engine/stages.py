"""Stages of multi-stage claim pipelines that chain training runs (rectified flow, InstaFlow): a stage trains on
the previous stage's saved coupling and hands its weights on (``module.init_from``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.methods.diffusion_module import DiffusionModule


def pair_data(path, batch_size: int, seed: int) -> dict:
    """Data override for a stage that trains on a saved coupling, served by the shared ImageDataModule."""
    return {
        "_target_": "shared.data.datamodule.ImageDataModule",
        "train": {"_target_": "shared.diffusion.flow.CouplingDataset", "path": str(path)},
        "batch_size": int(batch_size),
        "seed": int(seed),
    }


def fit_stage(cfg, tag: str, seed: int, steps: int, overrides: dict | None = None):
    """Train one stage with ``fit_variant`` (= ``shared.engine.train``) and save its weights to
    ``<run_dir>/<tag>/weights.pt`` for the next stage's ``module.init_from``; returns ``(module, path)``."""
    from shared.engine.claims import fit_variant

    module = fit_variant(cfg, tag, {"trainer.max_steps": int(steps), **(overrides or {})}, seed)
    path = Path(cfg.run_dir) / tag / "weights.pt"
    torch.save({"state_dict": module.state_dict()}, path)
    return module, path


def save_reflow_pairs(
    module: DiffusionModule,
    noise: torch.Tensor,
    path,
    y: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    rtol: float = 1e-3,
    batch_size: int = 1024,
) -> float:
    """Reflow coupling ``(X_0, ODE(X_0)[, y])`` from the module's EMA flow (RK45, optionally classifier-free
    guided), saved as a :class:`~shared.diffusion.flow.CouplingDataset`; returns the mean NFE per batch."""
    from shared.diffusion.flow import CouplingDataset, generate_pairs

    _, x1, nfes = generate_pairs(
        lambda yb: module.denoiser(True) if yb is None else module.denoiser(True, {"y": yb}, guidance_scale),
        noise,
        module.schedule,
        y=y,
        solver="rk45",
        rtol=rtol,
        atol=rtol,
        batch_size=batch_size,
    )
    CouplingDataset(noise=noise, x=x1, y=y).save(path)
    return sum(nfes) / len(nfes)
