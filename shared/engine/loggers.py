"""Logger run ids survive a resume: they are stored in every checkpoint and handed back to the loggers.

:class:`LoggerRunIds` writes ``checkpoint["loggers"] = {<class name>: {"version": ..., "name": ...}}`` (for
wandb the version *is* the run id); :func:`restore_logger_ids` sets those ids on the logger configs of a run
that resumes from that checkpoint (``ckpt_path=...``), so wandb continues the same run (``id=..``,
``resume="allow"``) and TensorBoard/CSV write into the same version folder.

A stored id is data from a file, so it is checked before it becomes part of a path: an integer, or a plain
folder name (letters, digits, ``_ . -``; not ``.``/``..``). Anything else (``../../../x``, an absolute path) is
a one-line :class:`CheckpointError` — a resumed run never writes outside its run folder.
"""

from __future__ import annotations

import re

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from shared.nn.weights import CheckpointError

VERSION_KEY = {"WandbLogger": "id", "TensorBoardLogger": "version", "CSVLogger": "version"}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _class_name(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def safe_version(cls: str, version, where: str = "checkpoint"):
    """``version`` if it is a safe logger version / run id (module docstring), else :class:`CheckpointError`."""
    if isinstance(version, bool):
        ok = False
    elif isinstance(version, int):
        ok = version >= 0
    else:
        ok = isinstance(version, str) and bool(_PLAIN_NAME.match(version)) and version not in (".", "..") \
            and ".." not in version
    if not ok:
        raise CheckpointError(f"{where}: stored {cls} version {version!r} is not a plain folder name or number; "
                              "refusing it (it would make the resumed run write outside its run folder)")
    return version


class LoggerRunIds(pl.Callback):
    """Store every logger's run id / version in the checkpoint (``checkpoint["loggers"]``)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        ids = {}
        for lg in trainer.loggers:
            try:
                version = lg.version
            except Exception:  # a logger that cannot say (never started): nothing to restore
                continue
            if version is not None:
                ids[type(lg).__name__] = {
                    "version": version if isinstance(version, (int, str)) else str(version),
                    "name": lg.name,
                }
        checkpoint["loggers"] = ids


def restore_logger_ids(cfg: DictConfig, checkpoint: dict, where: str = "checkpoint") -> dict:
    """Set the saved ids on ``cfg.logger``'s matching logger configs; returns what was restored. Every stored id
    is checked first (:func:`safe_version`), whether or not a logger of its kind is configured."""
    saved = checkpoint.get("loggers") or {}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: stored loggers entry is a {type(saved).__name__}, not a dict")
    for cls, entry in saved.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: stored {cls} logger entry is a {type(entry).__name__}, not a dict")
        if entry.get("version") not in (None, ""):
            safe_version(cls, entry["version"], where)
    restored = {}
    loggers = cfg.get("logger") or {}
    for key, node in loggers.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        cls = _class_name(node._target_)
        if cls in saved and cls in VERSION_KEY and saved[cls].get("version") not in (None, ""):
            with open_dict(node):
                node[VERSION_KEY[cls]] = saved[cls]["version"]
                if cls == "WandbLogger":
                    node["resume"] = "allow"
            restored[key] = saved[cls]["version"]
    return restored
