"""Callbacks of a training run (``conf/callbacks/default.yaml``):

* :class:`SampleGrid` — every ``every_n_steps`` (and at the end) a sample grid under ``<run_dir>/samples``
  (PNG, or GIF for videos), also logged as the loggers' native media (:func:`log_media`);
* :class:`ValLoss` — a cheap periodic validation metric: the module's own training loss on fixed held-out
  batches with fixed noise (``val/loss_fixed``), comparable across steps because nothing random changes;
* :class:`StepCheckpoint` — checkpoint every N steps keeping the last K (plus ``last.ckpt``, and always one at the
  end of training), instead of one per data epoch;
* :class:`LRMonitor` — Lightning's learning-rate monitor, a no-op for a run without loggers;
* :class:`StepProgressBar` — one progress bar over the run's optimiser steps with an ETA (``step 120/2000``),
  instead of Lightning's per-epoch bar (``Epoch 105/-2``). Added by the harness
  (:func:`shared.engine.console.harness_callbacks`) to every trainer that shows a progress bar.

:func:`log_media` hands an image or video file to every logger of the trainer in its own format: TensorBoard
``add_image`` and, for GIF/MP4 videos, an animated image summary (what ``SummaryWriter.add_video`` writes, without
its moviepy dependency); W&B ``Image`` / ``Video``; the CSV logger a ``media.csv`` of step, tag and file path.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

__all__ = ["SampleGrid", "ValLoss", "StepCheckpoint", "LRMonitor", "StepProgressBar", "log_media"]


# ---------------------------------------------------------------------------------------------- media
def _tensorboard_media(lg, tag: str, path: Path, step: int) -> None:
    from PIL import Image

    writer = lg.experiment
    if path.suffix.lower() == ".png":
        arr = np.asarray(Image.open(path).convert("RGB"))
        writer.add_image(tag, arr, global_step=step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = path.read_bytes()
    if path.suffix.lower() != ".gif":   # TensorBoard plays animated GIFs only: re-encode other videos
        import imageio.v3 as iio

        frames = iio.imread(path, index=None)
        buf = io.BytesIO()
        iio.imwrite(buf, frames, extension=".gif", duration=125, loop=0)
        data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=h, width=w, colorspace=3,
                                                                         encoded_image_string=data))])
    writer._get_file_writer().add_summary(summary, step)


def _csv_media(lg, tag: str, path: Path, step: int) -> None:
    f = Path(lg.log_dir) / "media.csv"
    f.parent.mkdir(parents=True, exist_ok=True)
    new = not f.exists()
    with open(f, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["step", "tag", "path"])
        w.writerow([step, tag, str(path)])


def log_media(trainer: pl.Trainer, tag: str, path: str | Path, step: int | None = None) -> list[str]:
    """Log the image/video file ``path`` under ``tag`` to every logger; returns the logger kinds that took it."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    path, step = Path(path), int(trainer.global_step if step is None else step)
    video = path.suffix.lower() in (".gif", ".mp4")
    done = []
    for lg in getattr(trainer, "loggers", None) or []:
        if isinstance(lg, TensorBoardLogger):
            _tensorboard_media(lg, tag, path, step)
            done.append("tensorboard")
        elif isinstance(lg, WandbLogger):
            if video:
                lg.log_video(tag, [str(path)], step=step, format=[path.suffix.lower().lstrip(".")])
            else:
                lg.log_image(tag, [str(path)], step=step)
            done.append("wandb")
        elif isinstance(lg, CSVLogger):
            _csv_media(lg, tag, path, step)
            done.append("csv")
    return done


# ---------------------------------------------------------------------------------------------- samples
class SampleGrid(pl.Callback):
    """Every ``every_n_steps`` (and at the end of training) sample ``n`` items with the module's sampler and
    save a grid under ``<run_dir>/samples``; videos (B, C, T, H, W) are saved as GIFs. Each grid is also logged
    to the loggers as ``samples`` (an image, or a video).

    Class-conditional networks get labels ``0, 1, ...``; a text-conditioned module (a ``caption`` condition) gets
    ``captions`` (cycled to ``n``) or, if none are configured, the captions of the first training batch, guided at
    ``guidance_scale``."""

    def __init__(self, every_n_steps: int = 0, n: int = 16, seed: int = 0, steps: int | None = None,
                 out_dir: str | None = None, captions: list[str] | None = None, guidance_scale: float = 1.0,
                 log: bool = True):
        self.every, self.n, self.seed, self.steps, self.out_dir = every_n_steps, n, seed, steps, out_dir
        self.captions, self.guidance_scale = list(captions) if captions else None, float(guidance_scale)
        self.log = bool(log)
        self._seen_captions: list[str] | None = None

    def sample_captions(self) -> list[str] | None:
        caps = self.captions or self._seen_captions
        return None if not caps else [caps[i % len(caps)] for i in range(self.n)]

    def _save(self, trainer, module, tag):
        if not trainer.is_global_zero or module.sample_shape is None or trainer.fast_dev_run:
            return None  # fast_dev_run is a smoke test: no sampling (a 1000-step sampler would dominate it)
        from shared.engine.video_io import save_image_grid, save_video_grid

        g = torch.Generator(device=module.device).manual_seed(self.seed)
        sampler = {"steps": self.steps} if self.steps else {}
        cond = {}
        conditions = getattr(module, "conditions", {})
        if "y" in conditions and getattr(module.net, "num_classes", None):
            cond["y"] = torch.arange(self.n, device=module.device) % module.net.num_classes
        if "caption" in conditions:
            cond["caption"] = self.sample_captions() or [""] * self.n  # no caption seen yet: unconditional
            sampler["guidance_scale"] = self.guidance_scale
        was_training = module.training
        module.eval()
        x = module.sample(self.n, cond=cond, sampler=sampler, generator=g)
        module.train(was_training)
        out = Path(self.out_dir or trainer.default_root_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        nrow = int(self.n**0.5) or 1
        if x.dim() == 5:
            path = save_video_grid(x.cpu(), out / f"{tag}.gif", nrow=nrow)
        elif x.dim() == 4:
            path = save_image_grid(x.cpu(), out / f"{tag}.png", nrow=nrow)
        else:
            return None
        if self.log:
            log_media(trainer, "samples", path)
        return path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._seen_captions is None and isinstance(batch, dict) and "caption" in batch:
            self._seen_captions = [str(c) for c in batch["caption"]]
        if self.every and trainer.global_step % self.every == 0:
            self._save(trainer, module, f"step{trainer.global_step:07d}")

    def on_train_end(self, trainer, module):
        self._save(trainer, module, "final")


# ---------------------------------------------------------------------------------------------- validation
class ValLoss(pl.Callback):
    """Every ``every_n_steps``: the module's training loss on ``batches`` fixed held-out batches (the datamodule's
    validation split; without one, the first training batch of the run, logged as ``train/loss_fixed`` instead),
    each with its own fixed noise generator, in eval mode without gradients. Logged as ``val/loss_fixed``.

    It costs ``batches`` forward passes, and because the batch and the noise never change its curve moves only
    when the weights do — the loss logged during training mixes in a new batch and new noise every step."""

    def __init__(self, every_n_steps: int = 200, batches: int = 2, seed: int = 10_000):
        self.every, self.num_batches, self.seed = int(every_n_steps), int(batches), int(seed)
        self._batches: list | None = None
        self.key = "val/loss_fixed"

    def _held_out(self, trainer, first_train_batch) -> list:
        if self._batches is None:
            batches = []
            dm = trainer.datamodule
            loader = None
            if dm is not None and hasattr(dm, "val_dataloader"):
                try:
                    loader = dm.val_dataloader()
                except Exception:  # noqa: BLE001 - a datamodule without a validation split
                    loader = None
            if loader is not None:
                try:
                    for b in loader:
                        batches.append(b)
                        if len(batches) >= self.num_batches:
                            break
                except Exception:  # noqa: BLE001 - an empty/unavailable validation split
                    batches = []
            if not batches:
                batches, self.key = [first_train_batch], "train/loss_fixed"
            self._batches = batches
        return self._batches

    def value(self, trainer, module, batch) -> float:
        batches = self._held_out(trainer, batch)
        was_training = module.training
        module.eval()
        losses = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):   # the run's global RNG stream is untouched
            for i, b in enumerate(batches):
                b = module.transfer_batch_to_device(b, module.device, 0)
                g = torch.Generator(device=module.device).manual_seed(self.seed + i)
                losses.append(float(module.training_loss(b, g)))
        module.__dict__.pop("_notes", None)
        module.train(was_training)
        return sum(losses) / len(losses)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not self.every or trainer.global_step % self.every or trainer.fast_dev_run:
            return
        v = self.value(trainer, module, batch)
        for lg in trainer.loggers:
            lg.log_metrics({self.key: v}, step=trainer.global_step)


# ---------------------------------------------------------------------------------------------- checkpoints
class StepCheckpoint(ModelCheckpoint):
    """Checkpoint every ``every_n_train_steps`` steps, keeping the newest ``keep_last`` (``step0001200.ckpt``),
    plus ``last.ckpt``; a final checkpoint at the end of training whatever the step count, so a finished run
    always leaves its final weights."""

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 500, keep_last: int = 2,
                 save_last: bool = True, filename: str = "step{step:07d}"):
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max",
                         save_top_k=int(keep_last), every_n_train_steps=int(every_n_train_steps),
                         save_last=save_last, auto_insert_metric_name=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if due and not self._should_skip_saving_checkpoint(trainer):
            _module_batch_end_now(pl_module, outputs, batch, batch_idx)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        else:
            super().on_train_end(trainer, pl_module)


def _module_batch_end_now(module, outputs, batch, batch_idx) -> None:
    """Run the module's ``on_train_batch_end`` now (its EMA / target-network update of this step) and skip the call
    Lightning makes right after the callbacks', so a checkpoint written at this step holds the state after the
    whole step — a run resumed from it equals the uninterrupted one. Lightning calls callbacks' batch-end hooks
    before the module's, and checkpoint callbacks last of the callbacks, so the order of everything else is kept."""
    module.on_train_batch_end(outputs, batch, batch_idx)

    def skip_once(*args, **kwargs):
        del module.on_train_batch_end   # the class's hook again from the next step on

    module.on_train_batch_end = skip_once


class LRMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` (``lr-<optimizer>`` every ``logging_interval``) that does nothing without loggers
    (Lightning's raises on a run with ``logger=none``)."""

    def on_train_start(self, trainer, *args, **kwargs):
        self._active = bool(trainer.loggers)
        if self._active:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs):
        if getattr(self, "_active", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs):
        if getattr(self, "_active", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- progress
class StepProgressBar(TQDMProgressBar):
    """One bar over the run's optimiser steps: ``step 120/2000 |███     | 6% [00:10<02:40, 11.7step/s, loss=…]``.

    The total is ``trainer.max_steps`` (the project trains by steps; epochs of the small synthetic datasets are
    a few dozen steps); a resumed run starts the bar at its step. Off a terminal (a log file) it redraws about
    every 5 % of the run instead of every step."""

    BAR = "{desc}{n_fmt}/{total_fmt} |{bar:24}| {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, refresh_rate: int | None = None):
        super().__init__(refresh_rate=refresh_rate or 1)
        self._auto_rate = refresh_rate is None

    def init_train_tqdm(self, total: int | None = None, initial: int = 0):
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(desc="step ", total=total, initial=initial, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stdout, smoothing=0.1, unit="step", bar_format=self.BAR)

    def init_validation_tqdm(self):
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        if self.trainer.fast_dev_run:   # quick mode's one validation batch: no bar
            return Tqdm(disable=True)
        return super().init_validation_tqdm()

    def on_train_start(self, trainer, pl_module):
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if self._auto_rate and not sys.stdout.isatty():
            self._refresh_rate = max(1, (total or 1000) // 20)
        self.train_progress_bar = self.init_train_tqdm(total, int(trainer.global_step))

    def on_train_epoch_start(self, trainer, *_):
        pass   # one bar for the whole run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = int(trainer.global_step)
        bar = self.train_progress_bar
        if bar is not None and (n == bar.total or self._should_update(n, bar.total or 0)):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module):
        pass

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {k.split("/")[-1] if k.startswith("train/") else k: v for k, v in items.items()}
