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

import torch
from torch import nn

from shared.methods.base import RunModule
from shared.nn.autoencoder_loss import AutoencoderLoss, psnr


class AutoencoderModule(RunModule):
    default_lr, default_betas = 1e-3, (0.5, 0.9)

    def __init__(
        self,
        net: nn.Module,
        loss: AutoencoderLoss | None = None,
        optimizer: Callable | None = None,
        lr_scheduler: Callable | None = None,
        sample_posterior: bool = True,
        seed: int = 0,
    ):
        super().__init__(optimizer, lr_scheduler, seed)
        self.net = net
        self.loss_fn = loss if loss is not None else AutoencoderLoss()
        self.sample_posterior = sample_posterior
        self.sample_shape = None  # SampleGrid: nothing to sample from an autoencoder

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x

    def forward(self, x: torch.Tensor, sample_posterior: bool = False) -> torch.Tensor:
        return self.net(x, sample_posterior=sample_posterior)[0]

    def training_loss(self, batch: dict, generator: torch.Generator):
        x = self._frames(batch["x"])
        x_rec, post = self.net(x, sample_posterior=self.sample_posterior, generator=generator)
        loss, logs = self.loss_fn(x, x_rec, post, step=int(self.global_step), last_layer=self.net.last_layer)
        self.note(psnr=psnr(x, x_rec.detach()), **logs)
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
