"""Scale-out and logging: DDP on 2 CPU processes (gloo) through Lightning and Hydra, strategy configs, and the
logger run id carried across a resume."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose
from omegaconf import OmegaConf

from shared.engine.checkpoint import load_checkpoint_file
from shared.engine.run import build_trainer, fit
from shared.engine.scaleout import child_argv, state_digest

TINY = [
    "data.size=8",
    "data.batch_size=8",
    "data.train.classes=[0,1]",
    "model.base_channels=8",
    "model.norm_groups=4",
    "callbacks.samples=null",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_one_run_folder_same_weights(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VDP_HYDRA_JOB", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.engine.train",
            "trainer=ddp_cpu",
            *TINY,
            "trainer.max_steps=3",
            "trainer.log_every_n_steps=1",
            "logger=csv",
            "+callbacks.digest._target_=shared.engine.scaleout.WeightsDigest",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stderr + r.stdout, "two processes expected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "one run folder, not one per rank"
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log"], "one log (rank 0's)"
    assert len(list(run.rglob("metrics.csv"))) == 1 and len(list(run.rglob("hparams.yaml"))) <= 1
    assert (run / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    ranks = [(run / f"weights_rank{i}.sha256").read_text().strip() for i in (0, 1)]
    assert ranks[0] == ranks[1], "DDP replicas diverged"
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and state_digest(ckpt["state_dict"]) == ranks[0]


def test_spawned_rank_reruns_its_parents_job(monkeypatch):
    job = '{"run_dir": "/x/out/3", "overrides": ["seed=2", "trainer=ddp_cpu"]}'
    monkeypatch.setenv("VDP_HYDRA_JOB", job)
    argv = ["train.py", "-m", "seed=1,2", "trainer=ddp_cpu", 'hydra.run.dir="outputs/a"']
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert child_argv(argv) == argv
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert child_argv(argv) == [
        "train.py",
        "seed=2",
        "trainer=ddp_cpu",
        "hydra.run.dir='/x/out/3'",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
        "hydra.job.name=rank1",
    ]


@pytest.mark.parametrize("trainer", ["ddp", "ddp_cpu"])
def test_ddp_configs_build_a_trainer(trainer, tmp_path):
    cfg = compose(
        [
            f"trainer={trainer}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
            *TINY,
            "logger=none",
            f"run_dir={tmp_path}",
        ]
    )
    assert cfg.trainer.use_distributed_sampler is False and cfg.trainer.strategy == "ddp"
    assert type(build_trainer(cfg, tmp_path).strategy).__name__ == "DDPStrategy"


def test_fsdp_config_builds_its_strategy():
    """Lightning's FSDP needs CUDA, so on CPU only its strategy object is built (wrap per DiT block)."""
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import FSDPStrategy

    from shared.nn.transformer import DiTBlock

    cfg = compose(["trainer=fsdp", "experiment=dit/imagenet256_xl2"])
    assert cfg.trainer.use_distributed_sampler is False and cfg.trainer.accelerator == "gpu"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {DiTBlock}


def test_slurm_launcher_composes_with_submitit():
    cfg = compose(
        ["launcher=slurm", "trainer=ddp"],
    )
    assert cfg.trainer.devices == 8
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        full = hcompose(
            config_name="train", overrides=["launcher=slurm", "trainer=ddp"], return_hydra_config=True
        )
    launcher = full.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 8 and launcher.gpus_per_node == 8
    from hydra.utils import get_class

    get_class(launcher._target_)  # the plugin is installed and importable


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_logger_run_id_is_stored_and_restored_on_resume(logger, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    over = [*TINY, f"logger={logger}", "trainer.log_every_n_steps=1", f"run_dir={tmp_path / 'a'}"]
    if logger != "wandb":  # a version of our own, to see it come back
        over.append(f"logger.{logger}.version=v7")
    module, _, trainer = fit(compose([*over, "trainer.max_steps=2"]))
    first = trainer.loggers[0].version
    assert first not in (None, "")
    if logger == "wandb":
        trainer.loggers[0].experiment.finish()
    saved = load_checkpoint_file(tmp_path / "a" / "checkpoints" / "last.ckpt")["loggers"]
    cls = {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}[logger]
    assert saved[cls]["version"] == first
    resume = [o for o in over if not o.startswith("logger.")] + ["trainer.max_steps=4", "ckpt_path=last"]
    _, _, trainer2 = fit(compose(resume))
    assert trainer2.global_step == 4
    assert trainer2.loggers[0].version == first, "the resumed run logs under the same run id"
    if logger == "wandb":
        trainer2.loggers[0].experiment.finish()
    assert OmegaConf.load(tmp_path / "a" / "config.yaml").trainer.max_steps == 4
