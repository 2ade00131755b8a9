"""The base of every LightningModule in the project: what each module must do the same way.

:class:`RunModule` owns

* the resolved run config (``run_config``, set by the train entry point and stored in every checkpoint, so a
  checkpoint alone rebuilds its module: :func:`shared.methods.registry.module_from_checkpoint`);
* the step generator: the randomness of training step ``k`` on rank ``r`` comes from a ``torch.Generator``
  seeded by ``(seed, r, k)``, so a run resumed at step ``k`` draws exactly what an uninterrupted run would;
* the global RNG states in checkpoints (dropout and anything else that uses the global generator);
* the non-finite-loss guard: a NaN/inf loss stops the run naming the step, before the optimiser step, so the
  last good checkpoint is what remains;
* the optimiser over the *trainable* parameters (``requires_grad``; frozen parts stay bit-identical) and its
  LR schedule, both Hydra partials.

A subclass implements :meth:`training_loss` ``(batch, generator) -> loss``; parts of the loss worth logging are
handed to :meth:`note` (logged as ``train/<name>`` by the training step).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["NonFiniteLossError", "RunModule", "batch_size_of"]


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or inf; the last good checkpoint is kept."""


def batch_size_of(batch: Any) -> int:
    """Number of items of a batch dict (its ``x``) — what ``self.log`` needs to weigh epoch means."""
    x = batch.get("x") if isinstance(batch, dict) else batch
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else 1


class RunModule(pl.LightningModule):
    """See the module docstring. ``optimizer`` / ``lr_scheduler`` are callables ``params -> Optimizer`` and
    ``optimizer -> scheduler`` (Hydra ``_partial_``); the scheduler steps every training step."""

    default_lr: float = 2e-4
    default_betas: tuple[float, float] = (0.9, 0.999)

    def __init__(self, optimizer: Callable | None = None, lr_scheduler: Callable | None = None, seed: int = 0):
        super().__init__()
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.seed = int(seed)
        self.run_config: dict | None = None  # the resolved Hydra config, set by the train entry point

    # ------------------------------------------------------------------ randomness
    def step_generator(self) -> torch.Generator:
        """The generator of this training step: seeded by ``(seed, rank, global_step)``."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.global_rank * 7919 + int(self.global_step)) % (2**63))
        return g

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict, generator: torch.Generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                                     "the last good checkpoint is kept")

    def note(self, **values) -> None:
        """Values of this step worth logging beside the loss (``train/<name>``); ignored outside training."""
        self.__dict__.setdefault("_notes", {}).update(values)

    def training_step(self, batch, batch_idx):
        self.__dict__["_notes"] = {}
        loss = self.training_loss(batch, self.step_generator())
        self.check_finite(loss)
        bs = batch_size_of(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        for name, value in self.__dict__.pop("_notes", {}).items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Every parameter with ``requires_grad`` (frozen backbones, teachers and EMA copies are excluded)."""
        seen = set()
        for p in self.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p

    def configure_optimizers(self):
        params = list(self.trainable_parameters())
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters (everything is frozen)")
        opt = (self.optimizer_fn(params) if self.optimizer_fn
               else torch.optim.Adam(params, lr=self.default_lr, betas=self.default_betas))
        if self.lr_scheduler_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_fn(opt), "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.run_config
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
