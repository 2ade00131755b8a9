"""The base LightningModule of every diffusion-style paper.

It owns the network, the schedule, the parameterisation, the training loss, the optimiser and LR schedule
(both Hydra partials), an EMA copy and the sampler used for logging and evaluation. Papers subclass it
and override :meth:`training_loss` (their objective) or :meth:`sample` (their sampler).

Reliability: the noise of each training step is drawn from a generator seeded by ``(seed, rank, step)`` so a
resumed run draws exactly what an uninterrupted one would; global RNG states are stored in checkpoints
too (dropout); a non-finite loss stops the run with the step number; the checkpoint stores the resolved
run config and the schedule's unambiguous description.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from shared.diffusion.guidance import cfg_kwargs_net, cfg_net, drop_captions, drop_labels
from shared.diffusion.losses import diffusion_loss
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import SAMPLERS
from shared.diffusion.samplers import sample as run_sampler
from shared.diffusion.schedules import Schedule
from shared.nn.ema import EMA


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or inf; the last good checkpoint is kept."""


class DiffusionModule(pl.LightningModule):
    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps", loss_weighting: str = "simple",
                 optimizer: Callable | None = None, lr_scheduler: Callable | None = None,
                 ema_decay: float | None = 0.9999, ema_warmup: bool = False, cond_drop_prob: float = 0.0,
                 sampler: dict | None = None, clip_x0: float | None = 1.0, seed: int = 0,
                 sample_shape: tuple | list | None = None, text_encoder: nn.Module | None = None):
        super().__init__()
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.loss_weighting = loss_weighting
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.ema = EMA(net, ema_decay, ema_warmup) if ema_decay else None
        self.cond_drop_prob, self.seed, self.clip_x0 = cond_drop_prob, seed, clip_x0
        self.sampler_cfg = dict(sampler or {"name": "ddim", "steps": 50, "eta": 0.0})
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.run_config: dict | None = None  # the resolved Hydra config, set by the train entry point
        # captions -> cross-attention ``context`` (shared.nn.text_encoder.TextConditioner; SD: frozen CLIP)
        self.text_encoder = text_encoder
        width, want = getattr(text_encoder, "context_dim", None), getattr(net, "context_dim", None)
        if text_encoder is not None and want is None:
            raise ValueError("a text encoder is configured but the network has no cross-attention (context_dim)")
        if text_encoder is not None and width != want:
            raise ValueError(f"the text encoder gives {width}-dim tokens, the network's context_dim is {want}")

    # ------------------------------------------------------------------ text conditioning
    def text_context(self, captions, drop_prob: float = 0.0, generator: torch.Generator | None = None):
        """``(B, L, D)`` context of ``captions``; each dropped to the null (empty) caption with ``drop_prob``."""
        if self.text_encoder is None:
            raise ValueError("captions were given but this module has no text encoder (module.text_encoder)")
        return self.text_encoder(drop_captions(captions, drop_prob, generator))

    # ------------------------------------------------------------------ training
    def step_generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.global_rank * 7919 + int(self.global_step)) % (2**63))
        return g

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x0 = batch["x"]
        kw = {}
        if "y" in batch and getattr(self.net, "num_classes", None):
            kw["y"] = drop_labels(batch["y"], self.cond_drop_prob, self.net.null_label, generator)
        if self.text_encoder is not None:
            if "caption" not in batch:
                raise ValueError("a text encoder is configured but the batch has no 'caption' (a captioned dataset: "
                                 "shapes_video, webvid, ucf101)")
            kw["context"] = self.text_context(batch["caption"], self.cond_drop_prob, generator)
        return diffusion_loss(self.net, x0, self.schedule, self.prediction, self.loss_weighting,
                              generator=generator, **kw)

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch, self.step_generator())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                                     "the last good checkpoint is kept")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch["x"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.net)

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.training_loss(batch, g)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.text_encoder is not None:  # trained with the model only when not frozen (LDM's small models)
            params += [p for p in self.text_encoder.parameters() if p.requires_grad]
        opt = self.optimizer_fn(params) if self.optimizer_fn else torch.optim.Adam(params, lr=2e-4)
        if self.lr_scheduler_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_fn(opt), "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.run_config
        checkpoint["schedule"] = self.schedule.describe()
        checkpoint["prediction"] = self.prediction
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("schedule")
        if saved is not None and saved != self.schedule.describe():
            raise ValueError(f"checkpoint schedule {saved} differs from the configured {self.schedule.describe()}")
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ sampling
    def sampling_net(self, use_ema: bool = True) -> nn.Module:
        return self.ema.model if (use_ema and self.ema is not None) else self.net

    def denoiser(self, use_ema: bool = True, y: torch.Tensor | None = None, guidance_scale: float = 1.0,
                 captions=None, **net_kwargs):
        net = self.sampling_net(use_ema)
        fn = net
        if y is not None and captions is not None:
            raise ValueError("pass class labels y or captions, not both")
        if y is not None:
            fn = cfg_net(net, y, net.null_label, guidance_scale)
        if captions is not None:
            ctx = self.text_context(list(captions))
            fn = cfg_kwargs_net(net, {"context": ctx}, {"context": self.text_context([""] * len(ctx))}, guidance_scale)
        return make_denoiser(fn, self.schedule, self.prediction, clip_x0=self.clip_x0, **net_kwargs)

    def noise(self, n: int, generator: torch.Generator | None = None, shape=None) -> torch.Tensor:
        shape = tuple(shape or self.sample_shape)
        return torch.randn((n, *shape), generator=generator, device=self.device)

    @torch.no_grad()
    def sample(self, n: int | None = None, x_T: torch.Tensor | None = None, sampler: dict | None = None,
               generator: torch.Generator | None = None, y: torch.Tensor | None = None,
               guidance_scale: float = 1.0, use_ema: bool = True, batch_size: int = 500, captions=None) -> torch.Tensor:
        """Draw samples with the configured sampler (overridable per call: name, steps, eta, variance); class
        labels ``y`` or ``captions`` (one per sample) condition them, guided at ``guidance_scale``."""
        cfg = {**self.sampler_cfg, **(sampler or {})}
        name, steps = cfg.pop("name"), cfg.pop("steps")
        if x_T is None:
            x_T = self.noise(len(captions) if n is None and captions is not None else n, generator)
        if captions is not None and len(captions) != x_T.shape[0]:
            raise ValueError(f"{len(captions)} captions for {x_T.shape[0]} samples")
        outs = []
        for i in range(0, x_T.shape[0], batch_size):
            yb = None if y is None else y[i:i + batch_size]
            cb = None if captions is None else list(captions)[i:i + batch_size]
            den = self.denoiser(use_ema, yb, guidance_scale, **({} if cb is None else {"captions": cb}))
            kw = sampler_kwargs(name, {**cfg, "generator": generator})
            outs.append(run_sampler(name, den, x_T[i:i + batch_size], self.schedule, steps, **kw))
        return torch.cat(outs)


def sampler_kwargs(name: str, cfg: dict) -> dict:
    """Keep only the options the named sampler takes (``eta`` for DDIM, ``variance`` for DDPM, ...)."""
    params = inspect.signature(SAMPLERS[name]).parameters
    return {k: v for k, v in cfg.items() if k in params}
