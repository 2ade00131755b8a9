"""Callbacks: periodic sample grids (images, or GIF videos for 5-D samples) and the run-config snapshot."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class SampleGrid(pl.Callback):
    """Every ``every_n_steps`` (and at the end of training) sample ``n`` items with the module's sampler and
    save a grid under ``<run_dir>/samples``; videos (B, C, T, H, W) are saved as GIFs.

    Class-conditional networks get labels ``0, 1, ...``; a text-conditioned module (a ``caption`` condition) gets
    ``captions`` (cycled to ``n``) or, if none are configured, the captions of the first training batch, guided at
    ``guidance_scale``."""

    def __init__(self, every_n_steps: int = 0, n: int = 16, seed: int = 0, steps: int | None = None,
                 out_dir: str | None = None, captions: list[str] | None = None, guidance_scale: float = 1.0):
        self.every, self.n, self.seed, self.steps, self.out_dir = every_n_steps, n, seed, steps, out_dir
        self.captions, self.guidance_scale = list(captions) if captions else None, float(guidance_scale)
        self._seen_captions: list[str] | None = None

    def sample_captions(self) -> list[str] | None:
        caps = self.captions or self._seen_captions
        return None if not caps else [caps[i % len(caps)] for i in range(self.n)]

    def _save(self, trainer, module, tag):
        if not trainer.is_global_zero or module.sample_shape is None or trainer.fast_dev_run:
            return  # fast_dev_run is a smoke test: no sampling (a 1000-step sampler would dominate it)
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
            save_video_grid(x.cpu(), out / f"{tag}.gif", nrow=nrow)
        elif x.dim() == 4:
            save_image_grid(x.cpu(), out / f"{tag}.png", nrow=nrow)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._seen_captions is None and isinstance(batch, dict) and "caption" in batch:
            self._seen_captions = [str(c) for c in batch["caption"]]
        if self.every and trainer.global_step % self.every == 0:
            self._save(trainer, module, f"step{trainer.global_step:07d}")

    def on_train_end(self, trainer, module):
        self._save(trainer, module, "final")
