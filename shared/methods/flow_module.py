"""The LightningModule of the rectified-flow family (rectified flow, InstaFlow), on the base
:class:`~shared.methods.diffusion_module.DiffusionModule`: a ``flow``-predicting network on the
:class:`~shared.diffusion.schedules.FlowSchedule`, trained in one of two stages
(:mod:`shared.diffusion.flow` holds the maths):

* ``stage: flow`` — the rectified-flow objective (Liu et al. 2023, Eq. 1). The coupling is taken from the
  batch: ``batch["noise"]`` (reflow pairs from :class:`~shared.diffusion.flow.CouplingDataset`), else
  ``batch["source"]`` (domain transfer, an independent draw of the source toy), else fresh Gaussian noise
  (1-rectified flow). Conditions (labels, dropped with ``cond_drop_prob`` for classifier-free guidance) come
  through the conditioning seam.
* ``stage: distill`` — one-step distillation on coupled pairs (Sec. 2.3; InstaFlow Sec. 3.3).

``init_from`` starts a stage from the (EMA) weights of a previous stage's checkpoint, as reflow and
distillation do in the papers. Both papers' modules are thin subclasses that name the paper. The pipeline
stages that chain these runs (reflow pairs, stage training) are the harness's :mod:`shared.engine.stages`.
"""

from __future__ import annotations

import torch

from shared.diffusion.flow import TIME_SAMPLINGS, distillation_loss, flow_matching_loss
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.weights import load_state_dict_strict, read_checkpoint

STAGES = ("flow", "distill")


def load_stage_weights(module: DiffusionModule, path: str, prefer_ema: bool = True) -> None:
    """Copy the network weights of checkpoint ``path`` (its EMA copy if present) into ``module.net`` and
    EMA."""
    state = read_checkpoint(path)["state_dict"]
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
        kw = self.condition(batch, generator)
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
