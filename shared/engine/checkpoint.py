"""Checkpoint files of training runs: atomic writes, safe reads, and what a resume may trust in them.

* Writing: :class:`AtomicCheckpointIO` writes ``<path>.tmp`` (flushed to disk) and renames it, so a run killed
  while saving never leaves a truncated ``*.ckpt``; a ``*.tmp`` a killed run left behind is removed when its run
  folder is next resumed (:func:`remove_partial_writes`).
* Finding: :func:`newest_checkpoint` is the most recently completed ``*.ckpt`` of a ``checkpoints/`` folder —
  ``last.ckpt`` or the epoch checkpoint written just before it (a kill between the two leaves the newer one
  without a ``last.ckpt``).
* Reading: :func:`shared.nn.weights.read_checkpoint` (``torch.load(weights_only=True)``: no pickle of untrusted
  code; a missing, empty, truncated or foreign file is a one-line :class:`CheckpointError`) and
  :func:`shared.methods.registry.upgrade_checkpoint` (names older checkpoints stored). Rebuilding a module from a
  checkpoint alone is :func:`shared.methods.registry.module_from_checkpoint` (allow-listed targets only).
* Trusting: :func:`check_resumable` refuses, in one line, a checkpoint that lacks what Lightning restores, or
  whose stored paths (the checkpoint callback's file names) or RNG state were tampered with; logger versions are
  checked by :func:`shared.engine.loggers.restore_logger_ids`. Nothing stored in a checkpoint may make a resumed
  run read, write or delete outside its run folder.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from shared.methods.registry import upgrade_checkpoint
from shared.nn.weights import CheckpointError, read_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "adopt_as_last", "load_checkpoint_file", "newest_checkpoint",
           "remove_partial_writes", "stale_checkpoints", "check_resumable", "checkpoint_step"]

log = logging.getLogger(__name__)
PARTIAL_SUFFIX = ".tmp"
_STEP = re.compile(r"(?:^|[-_])step=(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path: _PATH, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: _PATH, map_location=None, weights_only=None):
        return load_checkpoint_file(path, map_location or "cpu")


def load_checkpoint_file(path, map_location="cpu") -> dict:
    """A training checkpoint, read safely, with legacy names upgraded."""
    return upgrade_checkpoint(read_checkpoint(path, map_location))


def checkpoint_step(path: Path) -> int | None:
    """The global step in a Lightning checkpoint file name (``epoch=0-step=14.ckpt`` → 14), else None."""
    m = _STEP.search(Path(path).stem)
    return int(m.group(1)) if m else None


def newest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The most recently completed ``*.ckpt`` in ``ckpt_dir`` (writes are atomic: every ``*.ckpt`` is whole)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    files = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and p.stat().st_size > 0]
    if not files:
        return None
    # newest first; on a tie the higher step in the name, then last.ckpt (written after the epoch file)
    return max(files, key=lambda p: (p.stat().st_mtime_ns, checkpoint_step(p) or -1, p.name.startswith("last")))


def adopt_as_last(ckpt: Path) -> Path:
    """A run killed between writing its epoch checkpoint and ``last.ckpt`` leaves the epoch file newer: write it as
    ``last.ckpt`` (atomically; its checkpoint-callback state then names ``last.ckpt`` as the last file, so the next
    save overwrites it instead of starting ``last-v1.ckpt``) and resume from that, so the epoch file stays an
    ordinary tracked checkpoint that the next save rotates away (Lightning never deletes the file a run resumed
    from). Returns the file to resume."""
    ckpt = Path(ckpt)
    last = ckpt.with_name("last.ckpt")
    if ckpt.name == last.name or (last.is_file() and last.stat().st_mtime_ns >= ckpt.stat().st_mtime_ns):
        return ckpt
    state = read_checkpoint(ckpt)
    for cb in (state.get("callbacks") or {}).values():
        if isinstance(cb, dict) and "last_model_path" in cb and cb.get("dirpath"):
            cb["last_model_path"] = os.path.join(str(cb["dirpath"]), last.name)
    AtomicCheckpointIO().save_checkpoint(state, last)
    log.info("%s was newer than last.ckpt (a kill between the two writes): written as last.ckpt", ckpt.name)
    return last


def remove_partial_writes(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp`` files a run killed while saving left behind; call only while holding the run's lock
    (no live writer). Returns what was removed."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(f"*{PARTIAL_SUFFIX}"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    if removed:
        log.info("removed %d partial checkpoint write(s) of a killed run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def stale_checkpoints(ckpt_dir: str | os.PathLike, resumed: Path, checkpoint: dict) -> list[Path]:
    """Epoch checkpoints older than the one a run resumes from that its checkpoint callback no longer tracks
    (a kill between writing a new epoch file and deleting the previous one leaves one): nothing would ever
    remove them, so a resumed run deletes them."""
    step = int(checkpoint.get("global_step", 0))
    tracked = {Path(resumed).resolve()}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict):
            for key in ("best_model_path", "last_model_path", "kth_best_model_path"):
                if state.get(key):
                    tracked.add(Path(str(state[key])).resolve())
            tracked.update(Path(str(k)).resolve() for k in (state.get("best_k_models") or {}))
    out = []
    for p in Path(ckpt_dir).glob("*.ckpt"):
        s = checkpoint_step(p)
        if s is not None and s < step and p.resolve() not in tracked:
            out.append(p)
    return out


_CALLBACK_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def check_resumable(checkpoint: dict, path) -> None:
    """Refuse (one line) a checkpoint a training run cannot resume from safely (module docstring)."""
    missing = [k for k in ("state_dict", "optimizer_states", "loops", "global_step") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of shared.engine.train (no {', '.join(missing)}); "
                              "resume from a run's checkpoints/*.ckpt")
    if not isinstance(checkpoint["global_step"], int) or checkpoint["global_step"] < 0:
        raise CheckpointError(f"{path}: global_step {checkpoint['global_step']!r} is not a step count")
    for state in (checkpoint.get("callbacks") or {}).values():
        if not isinstance(state, dict):
            continue
        dirpath = state.get("dirpath")
        paths = [(k, state.get(k)) for k in _CALLBACK_PATH_KEYS] + \
            [("best_k_models", k) for k in (state.get("best_k_models") or {})]
        for key, p in paths:
            if not p:
                continue
            if not isinstance(p, str) or ".." in Path(p).parts or (dirpath and not _inside(p, str(dirpath))):
                raise CheckpointError(f"{path}: the checkpoint callback's stored {key} {p!r} points outside its "
                                      f"folder {dirpath!r}; refusing to resume from a tampered checkpoint")
    rng = checkpoint.get("rng")
    if rng is not None:
        want = torch.get_rng_state()
        t = rng.get("torch") if isinstance(rng, dict) else None
        if not (isinstance(t, torch.Tensor) and t.dtype == want.dtype and t.shape == want.shape):
            raise CheckpointError(f"{path}: stored RNG state is not a torch generator state "
                                  f"({type(t).__name__}); refusing to resume from it")
