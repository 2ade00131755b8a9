"""Weight files in and out: the one place that reads and writes tensors on disk (pure torch + safetensors).

* :func:`read_state_dict` — a state dict from ``.safetensors`` or a torch file read with
  ``torch.load(weights_only=True)`` (never unpickles code); ``{"state_dict": ...}`` and a DDP ``module.``
  prefix are unwrapped. :func:`read_safetensors` also returns the file's metadata.
* :func:`read_checkpoint` — a whole torch checkpoint dict (``weights_only=True``).
* :func:`check_state_dict` / :func:`load_state_dict_strict` — strict loading whose error names the missing,
  unexpected and mis-shaped keys in one line (a motion module that silently did not load is a known cause of
  flicker in other codebases).
* :func:`save_weights` — a module's (or a dict's) tensors as safetensors, written atomically.

Every failure is a :class:`CheckpointError` with a one-line message naming the file and what was expected.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "read_state_dict", "read_safetensors", "read_checkpoint", "check_state_dict",
           "load_state_dict_strict", "save_weights"]


class CheckpointError(RuntimeError):
    """A weights or checkpoint file that cannot be read, or does not fit the model."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): an interrupted download or write?")
    return path


def read_safetensors(path: str | os.PathLike, what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a safetensors file."""
    from safetensors import safe_open

    path = _existing(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:
        raise CheckpointError(f"cannot read {what} {path}: {_first_line(e)}") from None


def read_checkpoint(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint") -> dict:
    """A torch checkpoint (a dict) read with ``weights_only=True``."""
    path = _existing(path, what)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, unpickling refusal
        raise CheckpointError(f"cannot read {what} {path}: {_first_line(e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}, not a dict")
    return ckpt


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a torch file (``weights_only=True``); unwraps ``state_dict`` and a DDP
    ``module.`` prefix."""
    if Path(path).suffix == ".safetensors":
        state, _ = read_safetensors(path, what)
    else:
        state = read_checkpoint(path, what=what)
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} {path}: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True,
                     what: str = "weights") -> None:
    """Raise :class:`CheckpointError` naming the keys when ``state`` does not fit ``model``: mis-shaped keys always,
    missing and unexpected ones when ``strict`` — all in one line."""
    own = model.state_dict()
    problems = []
    shape_bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shape_bad:
        k = shape_bad[0]
        problems.append(f"shape mismatch for {len(shape_bad)} key(s), e.g. {k}: "
                        f"checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        problems.append(f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) "
                        f"{unexpected[:5]}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True,
                           what: str = "weights") -> None:
    """Load ``state`` into ``model``; on missing/unexpected keys or shape mismatches name them in one line."""
    check_state_dict(model, state, strict, what)
    model.load_state_dict(dict(state), strict=False)


def save_weights(module: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """``module.state_dict()`` (or a dict of tensors) as a safetensors file, written to ``<path>.tmp`` and
    renamed so a killed run never leaves a truncated file."""
    from safetensors.torch import save_file

    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
