"""Checkpoint files of training runs: atomic writes and safe reads for Lightning.

Checkpoints are written to ``<path>.tmp`` and renamed, so a run killed while saving never leaves a truncated
``last.ckpt``. Reading goes through :func:`shared.nn.weights.read_checkpoint` (``torch.load(weights_only=True)``:
no pickle of untrusted code; a corrupt or truncated file is a one-line error) and
:func:`shared.methods.registry.upgrade_checkpoint` (names older checkpoints stored). Rebuilding a module from a
checkpoint alone is :func:`shared.methods.registry.module_from_checkpoint`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from shared.methods.registry import upgrade_checkpoint
from shared.nn.weights import CheckpointError, read_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint_file"]


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
    """A training checkpoint, read safely, with legacy names upgraded."""
    return upgrade_checkpoint(read_checkpoint(path, map_location))
