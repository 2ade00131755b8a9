"""Library side of the entry points: build data, module and trainer from a composed config and fit.

Kept free of ``@hydra.main`` so pipelines (multi-stage claim checks) and tests call the same code:
``fit(cfg)`` trains one module exactly as ``python -m shared.engine.train`` would.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from shared.engine.checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint_file
from shared.engine.console import harness_callbacks
from shared.engine.loggers import LoggerRunIds, restore_logger_ids
from shared.nn.weights import check_state_dict

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot run (missing data path, unknown option, ...)."""


def set_run_dir(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    if run_dir is None:
        run_dir = cfg.get("run_dir")
    if run_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig
            run_dir = HydraConfig.get().runtime.output_dir
        except ValueError:
            run_dir = Path("outputs") / str(cfg.get("name", "run")) / time.strftime("%Y-%m-%d_%H-%M-%S")
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Path(run_dir)


def check_paths(cfg: DictConfig) -> None:
    """Fail before training on a data/weights path that does not exist (one line, naming the key)."""
    def walk(node, prefix):
        if isinstance(node, DictConfig):
            for k in node.keys():
                key = f"{prefix}.{k}" if prefix else str(k)
                if OmegaConf.is_missing(node, k):
                    if key.startswith(("data", "module", "model")):
                        raise ConfigError(f"required config value {key} is not set (pass {key}=...)")
                    continue
                try:
                    v = node[k]
                except Exception:  # an interpolation that cannot resolve yet: instantiate will say why
                    continue
                if isinstance(v, str) and k in ("root", "path", "csv_path", "video_root", "weights_path") \
                        and v and not Path(v).exists():
                    raise ConfigError(f"{key}: path does not exist: {v}")
                if isinstance(v, DictConfig):
                    walk(v, key)
    walk(cfg.get("data"), "data")


def resolve_ckpt(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path=last`` → this run folder's last.ckpt, else the newest last.ckpt of runs with this name."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        here = run_dir / "checkpoints" / "last.ckpt"
        if here.exists():
            return str(here)
        runs = sorted(Path(run_dir).parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise CheckpointError(f"ckpt_path=last but no last.ckpt under {run_dir.parent}/*/checkpoints/")
        return str(runs[-1])
    if not Path(ckpt).is_file():
        raise CheckpointError(f"ckpt_path: checkpoint not found: {ckpt}")
    return str(ckpt)


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks=()) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [*extra_callbacks, LoggerRunIds()]   # the loggers' run ids go into every checkpoint
    callbacks += harness_callbacks(cfg)               # step progress bar, quiet console (shared/engine/console.py)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("_target_", None)
    if isinstance(trainer_cfg.get("strategy"), dict):   # a strategy object (FSDP settings), not just a name
        trainer_cfg["strategy"] = instantiate(cfg.trainer.strategy)
    return pl.Trainer(**trainer_cfg, default_root_dir=str(run_dir), callbacks=callbacks,
                      logger=loggers or False, plugins=[AtomicCheckpointIO()])


def build(cfg: DictConfig):
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("compile") and torch.cuda.is_available():
        module.net = torch.compile(module.net)
    return datamodule, module


def fit(cfg: DictConfig, run_dir=None, extra_callbacks=()):
    """Train the module a config describes; returns ``(module, datamodule, trainer)``."""
    run_dir = set_run_dir(cfg, run_dir)
    check_paths(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    ckpt = resolve_ckpt(cfg, run_dir)
    datamodule, module = build(cfg)
    if ckpt is not None:  # fail in one line, naming keys, before Lightning's long load error
        saved = load_checkpoint_file(ckpt)
        check_state_dict(module, saved["state_dict"], what=ckpt)
        restore_logger_ids(cfg, saved)   # wandb continues the same run, TB/CSV the same version
    trainer = build_trainer(cfg, run_dir, extra_callbacks)
    if rank_zero_only.rank == 0:   # DDP ranks > 0 re-run this script: one config snapshot per run
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    t0 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    module.fit_wall_time_s = time.time() - t0
    return module, datamodule, trainer
