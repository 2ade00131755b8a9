"""Rebuilding a module from a checkpoint alone — safely.

A checkpoint of ``shared.engine.train`` stores the resolved run config. :func:`module_from_checkpoint` rebuilds
the LightningModule from ``run_config["module"]`` and loads its weights strictly. Because the file may come from
anywhere, the config is checked before anything is imported or built (:func:`check_buildable`):

* every ``_target_`` (and the latent wrapper's ``base``) must name, after the legacy renames below, a class of
  the project (``shared.*`` / ``papers.*``) that is an ``nn.Module``, a schedule, a dataset or an LR-schedule
  factor; a project function marked ``@buildable`` (:mod:`shared.nn.build`); or a known optimiser / LR
  scheduler of ``torch.optim``. Nothing else is imported;
* no interpolation (``${...}``) may appear: a stored config is resolved, so one is a sign of tampering.

:func:`upgrade_checkpoint` maps what older checkpoints stored (class paths before the method layer moved to
``shared.methods``, the text encoder's state-dict keys before the conditioning seam) to today's names, so
checkpoints written before the change keep loading.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.nn.build import is_buildable
from shared.nn.weights import CheckpointError, load_state_dict_strict, read_checkpoint

__all__ = ["LEGACY_TARGETS", "upgrade_checkpoint", "upgrade_config", "check_buildable", "safe_instantiate",
           "module_from_checkpoint", "UnsafeCheckpointError"]

LEGACY_TARGETS = {
    "shared.engine.module.DiffusionModule": "shared.methods.diffusion_module.DiffusionModule",
    "shared.engine.edm_module.EDMModule": "shared.methods.edm_module.EDMModule",
    "shared.engine.flow_module.RectifiedFlowModule": "shared.methods.flow_module.RectifiedFlowModule",
    "shared.engine.autoencoder_module.AutoencoderModule": "shared.methods.autoencoder_module.AutoencoderModule",
    "shared.engine.schedulers.LinearWarmup": "shared.methods.schedulers.LinearWarmup",
    "shared.diffusion.latent.latent_diffusion": "shared.methods.latent_module.latent_diffusion",
}
LEGACY_STATE_PREFIXES = {"text_encoder.": "conditions.caption.encoder."}

_PROJECT = ("shared.", "papers.")
_EXTERNAL_MODULES = ("torch.optim", "torch.optim.lr_scheduler")


class UnsafeCheckpointError(CheckpointError):
    """A stored config names something outside the allow-list."""


def upgrade_config(node: Any) -> Any:
    """A copy of a stored config with legacy class paths renamed."""
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            if k in ("_target_", "base") and isinstance(v, str):
                v = LEGACY_TARGETS.get(v, v)
            out[k] = upgrade_config(v)
        return out
    if isinstance(node, list):
        return [upgrade_config(v) for v in node]
    return node


def upgrade_checkpoint(ckpt: dict) -> dict:
    """In place: legacy class paths in ``run_config`` and legacy state-dict keys renamed."""
    if isinstance(ckpt.get("run_config"), Mapping):
        ckpt["run_config"] = upgrade_config(ckpt["run_config"])
    state = ckpt.get("state_dict")
    if isinstance(state, dict):
        for old, new in LEGACY_STATE_PREFIXES.items():
            for k in [k for k in state if k.startswith(old)]:
                state[new + k[len(old):]] = state.pop(k)
    return ckpt


def _allowed_class(obj) -> bool:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import Dataset

    from shared.diffusion.schedules import Schedule
    from shared.methods.schedulers import LRFactor

    bases = (torch.nn.Module, Schedule, Dataset, pl.LightningDataModule, LRFactor)
    return inspect.isclass(obj) and issubclass(obj, bases)


def _resolve(path: str, where: str):
    if not isinstance(path, str) or not path or "." not in path:
        raise UnsafeCheckpointError(f"{where}: {path!r} is not a dotted class path")
    module, _, name = path.rpartition(".")
    if path.startswith(_PROJECT):
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise UnsafeCheckpointError(f"{where}: cannot find {path!r} ({type(e).__name__})") from None
        if _allowed_class(obj) or (inspect.isfunction(obj) and is_buildable(obj)):
            return obj
        raise UnsafeCheckpointError(f"{where}: {path!r} is not a buildable class or factory of the project; "
                                    "refusing to call it from a stored config")
    if module in _EXTERNAL_MODULES:
        import torch

        obj = getattr(importlib.import_module(module), name, None)
        ok = inspect.isclass(obj) and issubclass(obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))
        if ok:
            return obj
    raise UnsafeCheckpointError(f"{where}: {path!r} is outside the allow-list (project modules, networks, "
                                "schedules, datasets, torch optimisers and LR schedulers); refusing to load")


def check_buildable(node: Any, where: str = "config") -> None:
    """Raise :class:`UnsafeCheckpointError` unless every target in ``node`` is allowed (module docstring)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{where}.{k}"
            if k == "_target_":
                _resolve(v, key)
            elif k == "base" and "_target_" in node and str(node["_target_"]).endswith("latent_diffusion"):
                from shared.methods.diffusion_module import DiffusionModule

                cls = _resolve(v, key)
                if not (inspect.isclass(cls) and issubclass(cls, DiffusionModule)):
                    raise UnsafeCheckpointError(f"{key}: {v!r} is not a diffusion module class")
            else:
                check_buildable(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_buildable(v, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise UnsafeCheckpointError(f"{where}: stored configs are resolved; an interpolation {node!r} is refused")


def safe_instantiate(cfg: Mapping, where: str = "config"):
    """``hydra.utils.instantiate`` of a stored config after :func:`check_buildable`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = upgrade_config(cfg)
    check_buildable(cfg, where)
    return instantiate(OmegaConf.create(cfg))


def module_from_checkpoint(path: str | Path, map_location="cpu"):
    """Rebuild the LightningModule a checkpoint came from, using only the config stored inside it (checked
    against the allow-list first), and load its weights strictly."""
    ckpt = upgrade_checkpoint(read_checkpoint(path, map_location))
    cfg = ckpt.get("run_config")
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("module"), Mapping):
        raise CheckpointError(f"{path} carries no run config; it was not written by shared.engine.train")
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} has no state_dict")
    module = safe_instantiate(cfg["module"], where=f"{path}: module")
    load_state_dict_strict(module, ckpt["state_dict"], what=str(path))
    module.run_config = dict(cfg)
    return module.eval()
