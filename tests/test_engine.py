"""The engine: configs compose and run, resume is exact, bad input fails clearly, results are recorded."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, compose
from omegaconf import OmegaConf, open_dict

from shared.engine.checkpoint import CheckpointError, load_checkpoint_file
from shared.engine.results import write_results
from shared.engine.run import ConfigError, fit
from shared.engine.train import run
from shared.methods.registry import module_from_checkpoint
from tools.report import fmt, lookup

EXPERIMENTS = sorted(p.relative_to(ROOT / "experiments").with_suffix("").as_posix()
                     for p in (ROOT / "experiments").glob("*/*.yaml"))

TINY = ["trainer.enable_progress_bar=false", "logger=none"]


def write_fake_cifar(root: Path, n: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def write_frame_folder(root: Path, n: int = 8) -> Path:
    """One video as a folder of its frames, the layout ``<root>/<video>/<clip>/*.png`` (FrameFolderDataset)."""
    from PIL import Image

    clip = root / "video" / "clip"
    clip.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(clip / f"{i:05d}.png")
    return root


def fake_data_root(cfg, tmp_path: Path) -> list[str]:
    """Overrides pointing real-dataset configs at tiny files of the right format written here."""
    target = str(OmegaConf.select(cfg, "data.train._target_", default=""))
    if target.endswith("Cifar10Dataset"):
        return [f"data.root={write_fake_cifar(tmp_path / 'cifar')}"]
    if str(OmegaConf.select(cfg, "data.train.world", default="")).endswith("FrameFolderDataset"):
        return [f"data.root={write_frame_folder(tmp_path / 'frames')}"]
    return []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_in_quick_mode(experiment, tmp_path):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.name and cfg.name != "default", "an experiment names its run folder"
    first = (ROOT / "experiments" / f"{experiment}.yaml").read_text().splitlines()
    assert first[0].strip() == "# @package _global_" and first[1].startswith("# "), \
        "first comment line names the table or figure it reproduces"
    # no publish override: publishing is off unless asked for (the suite fails if papers/ changed: conftest)
    overrides = [f"experiment={experiment}", "quick=true", *TINY, f"run_dir={tmp_path / 'run'}"]
    cfg = compose(overrides)
    cfg = compose(overrides + fake_data_root(cfg, tmp_path))
    assert cfg.quick and (cfg.trainer.fast_dev_run if cfg.get("pipeline") else cfg.trainer.max_steps <= 10)
    run(cfg)


def small_cfg(tmp_path, *extra):
    return compose(["data.size=8", "data.batch_size=16", "data.train.classes=[0,1]", "model.base_channels=8",
                    "model.norm_groups=4", "trainer.max_steps=30", "callbacks.samples=null",
                    "callbacks.checkpoint.every_n_train_steps=10", *TINY,
                    f"run_dir={tmp_path}", "seed=3", *extra])


class Interrupt(pl.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_from_last_gives_the_same_weights(tmp_path):
    full, _, _ = fit(small_cfg(tmp_path / "full"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(small_cfg(tmp_path / "crash"), extra_callbacks=[Interrupt(22)])
    last = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    assert last.exists() and load_checkpoint_file(last)["global_step"] < 22
    resumed, _, _ = fit(small_cfg(tmp_path / "crash", "ckpt_path=last"))
    assert resumed.global_step == full.global_step == 30
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_checkpoint_is_complete_and_rebuilds_the_module(tmp_path):
    module, _, _ = fit(small_cfg(tmp_path))
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "optimizer_states", "run_config", "schedule", "rng", "global_step", "loops"):
        assert key in ckpt, key
    assert ckpt["schedule"]["betas"] == "linear" and ckpt["schedule"]["num_steps"] == 1000
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])
    again = module_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    for a, b in zip(module.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "config.yaml").exists()


def test_corrupted_and_mismatched_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint_file(bad)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        fit(small_cfg(tmp_path / "x", f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    module, _, _ = fit(small_cfg(tmp_path / "a"))
    ck = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's at model\.base_channels: checkpoint 8, now"):
        fit(small_cfg(tmp_path / "b", "model.base_channels=16", f"ckpt_path={ck}"))


def test_missing_data_path_fails_before_training(tmp_path):
    cfg = compose(["experiment=ddpm/cifar10", "data.root=/definitely/not/here", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.root: path does not exist"):
        fit(cfg)


def test_non_finite_loss_stops_with_the_step(tmp_path):
    from shared.methods.base import NonFiniteLossError
    cfg = small_cfg(tmp_path, "module.optimizer.lr=1e30", "trainer.max_steps=200")
    with pytest.raises(NonFiniteLossError, match="at step"):
        fit(cfg)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "shared.engine.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_input_gives_one_line_errors(tmp_path):
    r = _cli("trainer.max_stepz=3", f"hydra.run.dir={tmp_path}/a")
    assert r.returncode != 0 and "max_stepz" in r.stderr and "Traceback" not in r.stderr
    r = _cli("experiment=ddpm/cifar10", "data.root=/no/such/dir", f"hydra.run.dir={tmp_path}/b")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: data.root: path does not exist: /no/such/dir"
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    r = _cli(f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}/c")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: cannot read checkpoint")


def test_results_record_provenance_and_report_lookup(tmp_path):
    rec = write_results(tmp_path / "results.json", {"fd": {"eta=0.0": {"10": {"mean": 1.5, "std": 0.1,
                                                                                  "per_seed": [1.4, 1.6]}}}},
                        paper="ddim", claim="x", seeds=[0, 1], config={"a": 1}, wall_time_s=1.0)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == json.loads(json.dumps(rec))
    assert len(data["git"]["revision"]) == 40 and isinstance(data["git"]["dirty"], bool)
    assert "torch" in data["packages"] and data["command"]
    assert data["compute"]["cpu_model"] and data["compute"]["cpu_time_s"] >= 0   # the machine behind a wall time
    assert lookup(data["metrics"], "fd.eta=0.0.10")["mean"] == 1.5
    assert fmt(lookup(data["metrics"], "fd.eta=0.0.10")) == "1.5 ± 0.1 (n=2)"
    with pytest.raises(KeyError):
        lookup(data["metrics"], "fd.eta=0.5.10")


def test_run_dir_config_snapshot(tmp_path):
    cfg = small_cfg(tmp_path, "trainer.max_steps=2")
    with open_dict(cfg):
        cfg.name = "snap"
    fit(cfg)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.seed == 3 and saved.trainer.max_steps == 2


def test_claim_variant_refuses_to_resume_over_a_changed_input_file(tmp_path):
    """A claim re-run in its old folder resumes a finished variant only if the weight files its overrides name (an
    earlier stage's output, e.g. a frozen base) are unchanged; a changed file is refused, naming variant_inputs."""
    from shared.engine.claims import fit_variant

    cfg = small_cfg(tmp_path, "trainer.max_steps=4")
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path)
    stage = tmp_path / "stage.safetensors"
    stage.write_bytes(b"first")
    fit_variant(cfg, "v", {"upstream_weights": str(stage)})
    again = fit_variant(cfg, "v", {"upstream_weights": str(stage)})      # same content: resumes, nothing new
    assert again.global_step == 4
    stage.write_bytes(b"second")
    with pytest.raises(ConfigError, match="variant_inputs"):
        fit_variant(cfg, "v", {"upstream_weights": str(stage)})


def test_results_record_the_revision_a_run_started_from(monkeypatch):
    """A long claim records the tree's state at its start (the code it ran), and says so when the tree changed before
    its results were written (files edited or committed meanwhile) instead of silently reporting the later state."""
    from shared.engine import results

    monkeypatch.setattr(results, "_RUN_START_GIT", None)
    start, later = {"revision": "a" * 40, "dirty": False}, {"revision": "b" * 40, "dirty": True}
    states = iter([start, start, start, later])
    monkeypatch.setattr(results, "git_revision", lambda cwd=None: next(states))
    assert results.remember_git_state() == start
    assert results.provenance()["git"] == start                                  # unchanged: nothing added
    results.remember_git_state()
    assert results.provenance()["git"] == {**start, "changed_during_run": True}  # the start's state, flagged


def test_write_json_atomic_round_trips_and_leaves_no_temporary(tmp_path):
    from shared.engine.results import write_json_atomic

    path = tmp_path / "record.json"
    path.write_text('{"old": true}\n')
    write_json_atomic(path, {"a": [1, 2.5]}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2.5]} and path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
