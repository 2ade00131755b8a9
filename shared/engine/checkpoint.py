"""Checkpoint I/O: atomic writes, safe loads, and rebuilding a module from a checkpoint alone.

Checkpoints are written to ``<path>.tmp`` and renamed, so a run killed while saving never leaves a
truncated ``last.ckpt``. Loading uses ``torch.load(weights_only=True)`` (no pickle of untrusted code) and
turns a corrupted or truncated file into a one-line error.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path: _PATH, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: _PATH, map_location=None, weights_only=None):
        return load_checkpoint_file(path, map_location or "cpu")


def load_checkpoint_file(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, unpickling refusal
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def check_state_dict(model: torch.nn.Module, state: dict, strict: bool = True, what: str = "weights") -> None:
    """Raise :class:`CheckpointError` naming the keys when ``state`` does not fit ``model``."""
    own = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_bad:
        k = shape_bad[0]
        raise CheckpointError(f"{what}: shape mismatch for {len(shape_bad)} key(s), e.g. {k}: "
                              f"checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{what}: {len(missing)} missing key(s) {missing[:5]}, "
                              f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")


def load_state_dict_strict(model: torch.nn.Module, state: dict, strict: bool = True, what: str = "weights") -> None:
    """Load ``state`` into ``model``; on missing/unexpected keys or shape mismatches name them in one line."""
    check_state_dict(model, state, strict, what)
    model.load_state_dict(state, strict=False)


def save_weights(module: torch.nn.Module, path: str | Path) -> Path:
    """``module.state_dict()`` as a safetensors file (how one stage hands its weights to the next)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(path))
    return path


def module_from_checkpoint(path, map_location="cpu"):
    """Rebuild the LightningModule a checkpoint came from, using only the config stored inside it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ckpt = load_checkpoint_file(path, map_location)
    cfg = ckpt.get("run_config")
    if not cfg or "module" not in cfg:
        raise CheckpointError(f"{path} carries no run config; it was not written by shared.engine.train")
    module = instantiate(OmegaConf.create(cfg)["module"])
    load_state_dict_strict(module, ckpt["state_dict"], what=str(path))
    module.run_config = cfg
    return module.eval()
