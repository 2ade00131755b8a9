"""The newcomer's harness: quick mode, the console (quiet, step progress, claim announcement and summary),
sampling progress, and what the loggers receive (learning rate, fixed-noise validation loss, sample grids as
native media), step checkpoints keeping the last K."""
from __future__ import annotations

import csv
import io
import json

import torch
from conftest import compose

from shared.engine.quick import expand


def test_quick_expands_the_experiments_own_overrides_and_the_kind_of_runs_base():
    plain = expand(["trainer.max_steps=2000", "quick=true"])
    assert plain[-1] == "quick=true" and "trainer.max_steps=2000" in plain
    assert "trainer.max_steps=4" not in plain, "what the user typed wins over quick mode"
    assert "callbacks.checkpoint.every_n_train_steps=2" in plain
    claim = expand(["experiment=ddim/digits_claim", "+quick=true"])
    own = list(compose(["experiment=ddim/digits_claim"]).quick_overrides)
    assert claim[: len(own) + 1] == ["trainer.fast_dev_run=true", *own]
    assert expand(["experiment=ddim/digits_claim", "quick=false"]) == ["experiment=ddim/digits_claim", "quick=false"]
    # a sweep: quick reads the config at the first value, the sweep itself is kept
    swept = expand(["experiment=ddpm/digits_claim", "claim.weightings=[simple],[vlb]", "quick=true"])
    assert "claim.weightings=[simple],[vlb]" in swept and "claim.weightings=[simple]" not in swept
    # entries for keys the (shrunk) config lacks are skipped: the toy claim has no callbacks
    cfg = compose(["experiment=dit/imagenet256_table4", "quick=true"])
    assert cfg.quick and cfg.trainer.max_steps == 4 and "checkpoint" not in (cfg.callbacks or {})
    assert compose(["quick=true"], config_name="evaluate").num_samples == 8


def test_quick_claim_never_publishes_and_prints_expected_time_and_summary(tmp_path, capsys):
    from shared.engine.train import run

    cfg = compose(["experiment=ddpm/digits_claim", "quick=true", "logger=none", f"run_dir={tmp_path}"])
    assert cfg.claim.get("publish", True)   # the config would publish; quick mode must not
    from shared.engine.claims import PROJECT_ROOT

    committed = PROJECT_ROOT / "papers" / "ddpm" / "results" / "digits_claim.json"
    stamp = committed.stat().st_mtime
    run(cfg)
    out = capsys.readouterr().out
    assert committed.stat().st_mtime == stamp, "a quick run published over the committed evidence"
    assert "[claim] ddpm_digits_claim: quick mode" in out and "a full run took" in out
    assert "== ddpm/digits_claim: results (quick mode, not evidence) ==" in out
    assert f"run folder: {tmp_path.resolve()}" in out


def test_announce_uses_the_committed_wall_time_or_says_there_is_none(capsys):
    from shared.engine.console import announce, expected_wall_time

    ref = expected_wall_time("ddim_digits_claim")
    assert ref is not None and ref["file"].endswith("papers/ddim/results/digits_claim.json")
    line = announce(compose(["experiment=ddim/digits_claim"]))
    assert f"a full run took {ref['wall_time_s'] / 60:.1f} min" in line and "add quick=true" in line
    assert "no committed run" in announce(compose(["experiment=ddim/digits_claim", "name=never_run"]))


def test_sampling_shows_a_progress_bar_over_network_evaluations(capsys):
    from shared.engine import progress
    from shared.methods.sampling import set_sampling_observer

    seen = []

    class Observer:
        def __call__(self, name, steps, batch):
            import contextlib

            @contextlib.contextmanager
            def cm():
                ticks = []
                yield lambda: ticks.append(1)
                seen.append((name, steps, batch, len(ticks)))
            return cm()

    cfg = compose(["data.size=8", "model.base_channels=8", "model.norm_groups=4"])
    from hydra.utils import instantiate

    module = instantiate(cfg.module).eval()
    module.sample_shape = (1, 8, 8)
    prev = set_sampling_observer(Observer())
    try:
        module.sample(3, sampler={"name": "ddim", "steps": 5})
        module.sample(2, sampler={"name": "heun", "steps": 4})
    finally:
        set_sampling_observer(prev)
    assert seen[0] == ("ddim", 5, 3, 5) and seen[1][:3] == ("heun", 4, 2) and seen[1][3] >= 4
    progress.enable(delay=0.0)
    try:
        module.sample(2, sampler={"name": "ddim", "steps": 3})
    finally:
        progress.disable()
    assert "sampling ddim x2" in capsys.readouterr().err


def _fit(tmp_path, *extra):
    from shared.engine.run import fit

    cfg = compose(["data.size=8", "data.batch_size=16", "model.base_channels=8", "model.norm_groups=4",
                   "trainer.max_steps=6", "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=2",
                   "callbacks.checkpoint.keep_last=2", "callbacks.samples.every_n_steps=3", "callbacks.samples.n=4",
                   "callbacks.samples.steps=2", "callbacks.val_metric.every_n_steps=2",
                   "module.lr_scheduler={_target_:torch.optim.lr_scheduler.LinearLR,_partial_:true,"
                   "start_factor:0.5,total_iters:6}", f"run_dir={tmp_path}", *extra])
    return fit(cfg)


def test_loggers_get_lr_validation_loss_and_sample_grids_as_media(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, "logger=all", "trainer.enable_progress_bar=false")
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "val/loss_fixed", "lr-Adam"} <= set(tags["scalars"]) and "samples" in tags["images"]
    lrs = [e.value for e in ea.Scalars("lr-Adam")]
    assert lrs[0] < lrs[-1], "the LR schedule shows in the logged learning rate"
    img = ea.Images("samples")
    assert [e.step for e in img] == [3, 6, 6] and img[0].width > 0   # every 3 steps and the final grid
    rows = list(csv.DictReader(open(tmp_path / "logs" / "media.csv")))
    assert [r["step"] for r in rows] == ["3", "6", "6"] and rows[-1]["path"].endswith("final.png")
    header = open(tmp_path / "logs" / "metrics.csv").readline()
    assert "val/loss_fixed" in header and "lr-Adam" in header
    media = list((tmp_path / "wandb").rglob("media/images/samples_*.png"))
    assert len(media) == 3, "W&B (offline) got the grids as wandb.Image"
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000004.ckpt", "step0000006.ckpt"], "every 2 steps, the newest 2 kept"


def test_video_grids_are_animated_images_in_tensorboard(tmp_path):
    import pytorch_lightning as pl
    from PIL import Image
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from shared.engine.callbacks import log_media
    from shared.engine.video_io import save_video_grid

    gif = save_video_grid(torch.rand(2, 3, 5, 8, 8) * 2 - 1, tmp_path / "v.gif", nrow=2)
    mp4 = save_video_grid(torch.rand(2, 3, 5, 8, 8) * 2 - 1, tmp_path / "v.mp4", nrow=2)
    tb = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = pl.Trainer(logger=tb, enable_checkpointing=False, enable_progress_bar=False)
    assert log_media(trainer, "videos", gif, step=1) == ["tensorboard"]
    log_media(trainer, "videos", mp4, step=2)
    tb.experiment.flush()
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    ea.Reload()
    for ev in ea.Images("videos"):
        frames = Image.open(io.BytesIO(ev.encoded_image_string))
        assert frames.format == "GIF" and frames.n_frames == 5


def test_the_step_checkpoint_holds_the_end_of_step_state(tmp_path):
    """A checkpoint written mid-run by the step callback carries the EMA update of its own step (Lightning runs
    the module's batch-end hook after the callbacks'), so its weights equal a run stopped at that step."""
    from shared.nn.weights import read_checkpoint

    _fit(tmp_path / "a", "logger=none", "trainer.enable_progress_bar=false", "callbacks.samples=null")
    _fit(tmp_path / "b", "logger=none", "trainer.enable_progress_bar=false", "callbacks.samples=null",
         "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=100")
    mid = read_checkpoint(tmp_path / "a" / "checkpoints" / "step0000004.ckpt")["state_dict"]
    end = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["state_dict"]
    assert int(mid["ema.num_updates"]) == int(end["ema.num_updates"]) == 4
    for k in mid:
        assert torch.equal(mid[k], end[k]), k


def test_progress_bar_counts_steps_and_the_console_is_quiet(tmp_path, capsys):
    _fit(tmp_path, "logger=none", "callbacks.samples=null", "trainer.enable_progress_bar=true")
    cap = capsys.readouterr()
    console = cap.out + cap.err
    assert "step 6/6" in console and "Epoch" not in console
    assert "Tip:" not in console and "GPU available" not in console


def test_claim_summary_lists_the_report_rows_and_the_run_folder(tmp_path, capsys):
    from shared.engine.console import claim_summary

    cfg = compose(["experiment=ddpm/digits_claim", f"run_dir={tmp_path}"])
    rec = {"paper": "ddpm", "claim": "digits_claim", "seeds": [0, 1], "wall_time_s": 300.0,
           "metrics": {"fd_judge_simple": {"mean": 1.5, "std": 0.1, "per_seed": [1.4, 1.6]}}}
    text = claim_summary(rec, cfg, tmp_path / "pub.json")
    assert "FD_judge, L_simple, 1000-step ancestral" in text and "1.5 ± 0.1 (n=2)" in text
    assert "(paper: FID 3.17 (CIFAR-10))" in text and "missing" in text   # the rows this record lacks say so
    assert "wall time: 5.0 min" in text and str(tmp_path.resolve()) in text and "pub.json" in text
    assert json.dumps(rec)  # plain data


def test_timed_seeds_runs_every_seed_in_order_and_keeps_the_first_artefacts():
    from shared.engine.claims import summarise_seeds, timed_seeds

    calls = []

    def job(seed):
        calls.append(seed)
        return {"score": float(seed) * 2}, f"gif of {seed}"

    per_seed, first = timed_seeds([3, "1", 2], job)
    assert calls == [3, 1, 2] and first == "gif of 3"
    assert [r["score"] for r in per_seed] == [6.0, 2.0, 4.0]
    assert all(r["seed_wall_time_s"] >= 0 for r in per_seed)
    assert summarise_seeds(per_seed)["score"]["per_seed"] == [6.0, 2.0, 4.0]
