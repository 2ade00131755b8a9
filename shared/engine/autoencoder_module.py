"""LightningModule that trains the LDM KL autoencoder (Rombach et al. 2022, Sec. 3.1 / App. G).

``net`` is a :class:`shared.nn.autoencoder.AutoencoderKL`, ``loss`` an
:class:`shared.nn.autoencoder_loss.AutoencoderLoss` (reconstruction + KL, optional LPIPS / PatchGAN). One
optimiser trains the autoencoder, the loss's learned log-variance and the discriminator together (the
loss separates their gradients), so automatic optimisation, gradient clipping, checkpoint resume and
``global_step`` behave as for every other module. Batches are any ``{"x": ...}`` dicts: images
``(B, C, H, W)`` or videos ``(B, C, T, H, W)`` (frames are encoded as images). Logs ``train/loss``,
``train/rec``, ``train/kl``, ``train/psnr`` and, on validation, ``val/psnr`` / ``val/rec`` of the
posterior-mode reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from shared.engine.module import NonFiniteLossError
from shared.nn.autoencoder_loss import AutoencoderLoss, psnr


class AutoencoderModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        loss: AutoencoderLoss | None = None,
        optimizer: Callable | None = None,
        lr_scheduler: Callable | None = None,
        sample_posterior: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.net = net
        self.loss_fn = loss if loss is not None else AutoencoderLoss()
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.sample_posterior, self.seed = sample_posterior, seed
        self.sample_shape = None  # SampleGrid: nothing to sample from an autoencoder
        self.run_config: dict | None = None

    def step_generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.global_rank * 7919 + int(self.global_step)) % (2**63))
        return g

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x

    def forward(self, x: torch.Tensor, sample_posterior: bool = False) -> torch.Tensor:
        return self.net(x, sample_posterior=sample_posterior)[0]

    def training_step(self, batch, batch_idx):
        x = self._frames(batch["x"])
        x_rec, post = self.net(x, sample_posterior=self.sample_posterior, generator=self.step_generator())
        loss, logs = self.loss_fn(x, x_rec, post, step=int(self.global_step), last_layer=self.net.last_layer)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                "the last good checkpoint is kept"
            )
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self.log(
            "train/psnr", psnr(x, x_rec.detach()), prog_bar=True, on_step=True, on_epoch=False, batch_size=bs
        )
        for k, v in logs.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mode reconstruction (what a latent diffusion model's decoder sees)."""
        return self.net.decode(self.net.encode(x).mode())

    def validation_step(self, batch, batch_idx):
        x = self._frames(batch["x"])
        x_rec = self.reconstruct(x)
        self.log("val/psnr", psnr(x, x_rec), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        self.log("val/rec", (x - x_rec).abs().mean(), batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in [*self.net.parameters(), *self.loss_fn.parameters()] if p.requires_grad]
        opt = (
            self.optimizer_fn(params)
            if self.optimizer_fn
            else torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.9))
        )
        if self.lr_scheduler_fn is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.lr_scheduler_fn(opt), "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.run_config
        checkpoint["rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
