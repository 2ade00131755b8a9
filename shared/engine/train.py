"""Hydra entry point: ``python -m shared.engine.train experiment=<paper>/<claim> [overrides]``.

A config with a ``pipeline`` key (dotted path of a function ``f(cfg) -> dict``) runs that multi-stage
claim check (train → sample → evaluate → results.json); otherwise one module is trained.
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

from shared.engine.cli import friendly_errors
from shared.engine.console import start_run
from shared.engine.quick import expand_argv
from shared.engine.run import fit, set_run_dir
from shared.engine.scaleout import prepare_argv, rank_launch_scope, remember_hydra_job

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
log = logging.getLogger(__name__)


def run(cfg: DictConfig):
    start_run(cfg)   # quiet console, sampling progress bars, a claim's expected wall time (shared/engine/console.py)
    if cfg.get("pipeline"):
        set_run_dir(cfg)
        return get_method(cfg.pipeline)(cfg)
    remember_hydra_job(set_run_dir(cfg))   # DDP ranks Lightning spawns reuse this job's run folder
    with rank_launch_scope():              # ... and the next job of a multirun spawns its own ranks
        module, _, trainer = fit(cfg)
    log.info("run folder: %s", cfg.run_dir)
    return module


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    with friendly_errors():
        return run(cfg)


def main():
    prepare_argv()   # a DDP rank spawned by Lightning runs its parent's job (see shared.engine.scaleout)
    sys.argv[1:] = expand_argv(sys.argv[1:])   # quick=true (shared/engine/quick.py)
    return _hydra_main()


if __name__ == "__main__":
    main()
