"""Logger run ids survive a resume: they are stored in every checkpoint and handed back to the loggers.

:class:`LoggerRunIds` writes ``checkpoint["loggers"] = {<class name>: {"version": ..., "name": ...}}`` (for
wandb the version *is* the run id); :func:`restore_logger_ids` sets those ids on the logger configs of a run
that resumes from that checkpoint (``ckpt_path=...``), so wandb continues the same run (``id=..``,
``resume="allow"``) and TensorBoard/CSV write into the same version folder.
"""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

VERSION_KEY = {"WandbLogger": "id", "TensorBoardLogger": "version", "CSVLogger": "version"}


def _class_name(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


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


def restore_logger_ids(cfg: DictConfig, checkpoint: dict) -> dict:
    """Set the saved ids on ``cfg.logger``'s matching logger configs; returns what was restored."""
    saved = checkpoint.get("loggers") or {}
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
