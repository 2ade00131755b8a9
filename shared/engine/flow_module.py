"""The LightningModule of the rectified-flow family (rectified flow, InstaFlow), on the base
:class:`~shared.engine.module.DiffusionModule`: a ``flow``-predicting network on the
:class:`~shared.diffusion.schedules.FlowSchedule`, trained in one of two stages
(:mod:`shared.diffusion.flow` holds the maths):

* ``stage: flow`` — the rectified-flow objective (Liu et al. 2023, Eq. 1). The coupling is taken from the
  batch: ``batch["noise"]`` (reflow pairs from :class:`~shared.diffusion.flow.CouplingDataset`), else
  ``batch["source"]`` (domain transfer, an independent draw of the source toy), else fresh Gaussian noise
  (1-rectified flow). Labels are dropped with ``cond_drop_prob`` for classifier-free guidance.
* ``stage: distill`` — one-step distillation on coupled pairs (Sec. 2.3; InstaFlow Sec. 3.3).

``init_from`` starts a stage from the (EMA) weights of a previous stage's checkpoint, as reflow and
distillation do in the papers. Both papers' modules are thin subclasses that name the paper.
"""

from __future__ import annotations

import torch

from shared.diffusion.flow import TIME_SAMPLINGS, distillation_loss, flow_matching_loss
from shared.diffusion.guidance import drop_labels
from shared.engine.checkpoint import load_checkpoint_file, load_state_dict_strict
from shared.engine.module import DiffusionModule

STAGES = ("flow", "distill")


def load_stage_weights(module: DiffusionModule, path: str, prefer_ema: bool = True) -> None:
    """Copy the network weights of checkpoint ``path`` (its EMA copy if present) into ``module.net`` and
    EMA."""
    state = load_checkpoint_file(path)["state_dict"]
    prefix = "ema.model." if prefer_ema and any(k.startswith("ema.model.") for k in state) else "net."
    net_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_strict(module.net, net_state, what=f"{path} ({prefix}*)")
    if module.ema is not None:
        module.ema.model.load_state_dict(module.net.state_dict())


class RectifiedFlowModule(DiffusionModule):
    def __init__(
        self,
        *args,
        stage: str = "flow",
        time_sampling: str = "uniform",
        time_kwargs: dict | None = None,
        init_from: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("prediction", "flow")
        kwargs.setdefault("clip_x0", None)
        super().__init__(*args, **kwargs)
        if self.prediction != "flow":
            raise ValueError("rectified flow predicts the velocity (prediction: flow)")
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        self.stage, self.time_sampling = stage, time_sampling
        self.time_kwargs = dict(time_kwargs or {})
        self.init_from = init_from
        if init_from:
            load_stage_weights(self, init_from)

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x = batch["x"]
        noise = batch.get("noise", batch.get("source"))
        kw = {}
        if "y" in batch and getattr(self.net, "num_classes", None):
            kw["y"] = drop_labels(batch["y"], self.cond_drop_prob, self.net.null_label, generator)
        if self.stage == "distill":
            if noise is None:
                raise ValueError(
                    "distillation trains on coupled pairs: the batch needs 'noise' (a CouplingDataset)"
                )
            return distillation_loss(self.net, noise, x, self.schedule, **kw)
        return flow_matching_loss(
            self.net,
            x,
            self.schedule,
            noise=noise,
            time_sampling=self.time_sampling,
            generator=generator,
            time_kwargs=self.time_kwargs,
            **kw,
        )


# ------------------------------------------------------------------ pipeline stages (reflow / distillation)
def pair_data(path, batch_size: int, seed: int) -> dict:
    """Data override for a stage that trains on a saved coupling, served by the shared ImageDataModule."""
    return {
        "_target_": "shared.data.datamodule.ImageDataModule",
        "train": {"_target_": "shared.diffusion.flow.CouplingDataset", "path": str(path)},
        "batch_size": int(batch_size),
        "seed": int(seed),
    }


def fit_stage(cfg, tag: str, seed: int, steps: int, overrides: dict | None = None):
    """Train one stage with ``fit_variant`` (= ``shared.engine.train``) and save its weights to
    ``<run_dir>/<tag>/weights.pt`` for the next stage's ``module.init_from``; returns ``(module, path)``."""
    from pathlib import Path

    from shared.engine.claims import fit_variant

    module = fit_variant(cfg, tag, {"trainer.max_steps": int(steps), **(overrides or {})}, seed)
    path = Path(cfg.run_dir) / tag / "weights.pt"
    torch.save({"state_dict": module.state_dict()}, path)
    return module, path


def save_reflow_pairs(
    module: DiffusionModule,
    noise: torch.Tensor,
    path,
    y: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    rtol: float = 1e-3,
    batch_size: int = 1024,
) -> float:
    """Reflow coupling ``(X_0, ODE(X_0)[, y])`` from the module's EMA flow (RK45, optionally classifier-free
    guided), saved as a :class:`~shared.diffusion.flow.CouplingDataset`; returns the mean NFE per batch."""
    from shared.diffusion.flow import CouplingDataset, generate_pairs

    _, x1, nfes = generate_pairs(
        lambda yb: module.denoiser(True, yb, guidance_scale),
        noise,
        module.schedule,
        y=y,
        solver="rk45",
        rtol=rtol,
        atol=rtol,
        batch_size=batch_size,
    )
    CouplingDataset(noise=noise, x=x1, y=y).save(path)
    return sum(nfes) / len(nfes)
