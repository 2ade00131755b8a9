"""Hydra entry point: ``python -m shared.engine.train experiment=<paper>/<claim> [overrides]``.

A config with a ``pipeline`` key (dotted path of a function ``f(cfg) -> dict``) runs that multi-stage
claim check (train → sample → evaluate → results.json); otherwise one module is trained.

A claim check writes its evidence into its run folder only. Copying it to ``papers/<id>/results/`` (publishing)
is an explicit act — ``++claim.publish=true``, which the ``make <paper>`` targets pass — and is refused before
anything runs unless the run is the experiment's committed protocol unchanged (:func:`check_publish`).
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

from shared.engine.claims import begin_claim, check_publish
from shared.engine.cli import hydra_cli
from shared.engine.console import start_run
from shared.engine.quick import expand_argv
from shared.engine.results import remember_git_state
from shared.engine.run import ConfigError, check_config, fit, new_run_stamp, prepare_resume, set_run_dir
from shared.engine.scaleout import prepare_argv, rank_launch_scope, remember_hydra_job

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
log = logging.getLogger(__name__)


def _experiment_choice() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment")
    except ValueError:  # not under Hydra (a test calling run() on a composed config)
        return None


def run(cfg: DictConfig, experiment: str | None = None):
    start_run(cfg)   # quiet console, sampling progress bars, a claim's expected wall time (shared/engine/console.py)
    remember_git_state()   # results record the revision the run started from (shared/engine/results.py)
    if cfg.get("pipeline"):
        if cfg.get("ckpt_path"):
            raise ConfigError("ckpt_path is for single training runs; a claim pipeline resumes its variants when "
                              "re-run in its own folder (hydra.run.dir=<that run folder>)")
        set_run_dir(cfg)
        check_config(cfg)
        check_publish(cfg, experiment or _experiment_choice())   # refused before anything is trained
        begin_claim()
        return get_method(cfg.pipeline)(cfg)
    set_run_dir(cfg)
    check_config(cfg)
    prepare_resume(cfg)                    # ckpt_path=last -> the run's own folder
    remember_hydra_job(cfg.run_dir)        # DDP ranks Lightning spawns reuse this job's run folder
    with rank_launch_scope():              # ... and the next job of a multirun spawns its own ranks
        module, _, trainer = fit(cfg)
    log.info("run folder: %s", cfg.run_dir)
    return module


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    return run(cfg)


_cli_main = hydra_cli(_hydra_main)


def main():
    new_run_stamp()  # this command's own run folder, even when called twice in one process
    prepare_argv()   # a DDP rank spawned by Lightning runs its parent's job (see shared.engine.scaleout)
    sys.argv[1:] = expand_argv(sys.argv[1:])   # quick=true (shared/engine/quick.py)
    return _cli_main()


if __name__ == "__main__":
    main()
