"""The diffusion family's LightningModule, on :class:`~shared.methods.base.RunModule`.

It owns the network, the schedule (``shared.diffusion.schedules``), the parameterisation, an EMA copy, the
declared conditions (:mod:`shared.methods.conditions`) and the one sampling loop of the project:

* training — :meth:`training_loss` = the conditions' keyword arguments (each dropped with its own probability)
  + :meth:`objective` (default: :func:`shared.diffusion.losses.diffusion_loss` with the configured weighting);
  ``region_loss`` (``{key, weight, half_size}``) up-weights the squared error in a box around a per-frame point of
  the batch (:meth:`pixel_weight`; weight 0 or none: the plain loss);
  A paper changes its objective by overriding :meth:`objective`, never how conditions reach the network;
* sampling — :meth:`sample` ``(n, cond={key: values}, sampler={name, steps, ..., guidance_scale})`` validates the
  sampler config, draws ``x_T``, and runs batches through :meth:`sample_batch`, whose default builds the guided
  denoiser (:meth:`denoiser` → :meth:`guided_network`) and calls the named sampler of
  :mod:`shared.diffusion.samplers`. Given ``cond={"x_known": x, "known": mask}`` it completes the unknown part
  of each sample (VDM Sec. 3.1: ``sampler.extension`` = ``replacement`` or ``reconstruction`` guidance with
  weight ``sampler.w_r``), for any module — video extension, frame conditioning, inpainting. Papers override
  only the per-batch part (DiT's learned-variance sampler) or add a sampler (consistency sampling), or the
  per-step network (DiT guides only its eps channels).

Noise: ``noise_prior`` (None: i.i.d. ``N(0, I)``, as always) is a :class:`shared.diffusion.noise_priors.NoisePrior`
— correlated noise over the frames of a video (PYoCo, VideoFusion). The sampling loop's :meth:`noise` (``x_T``)
and the default objective's ``eps`` (:meth:`training_noise`) are drawn from it; nothing else changes.

Without an explicit ``conditions`` list the module declares what its parts imply, as before the seam existed:
class labels ``y`` when the network has ``num_classes`` (dropped with ``cond_drop_prob``) and captions when a
``text_encoder`` is given (cross-attention ``context``, dropped to ``""`` with ``cond_drop_prob``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from shared.diffusion.conditioning import reconstruction_guided_denoiser, replacement_denoiser
from shared.diffusion.guidance import cfg_kwargs_net, is_unit_guidance
from shared.diffusion.losses import diffusion_loss, point_region_weight
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import SAMPLERS
from shared.diffusion.schedules import Schedule
from shared.methods.base import NonFiniteLossError, RunModule  # noqa: F401  (NonFiniteLossError re-exported)
from shared.methods.conditions import Condition, Conditions, LabelCondition, TextCondition, cond_len, take
from shared.methods.sampling import resolve_sampler_config, run_sampler, split_sampler_config
from shared.nn.ema import EMA

__all__ = ["DiffusionModule", "NonFiniteLossError"]


class DiffusionModule(RunModule):
    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps", loss_weighting: str = "simple",
                 optimizer: Callable | None = None, lr_scheduler: Callable | None = None,
                 ema_decay: float | None = 0.9999, ema_warmup: bool = False, cond_drop_prob: float = 0.0,
                 sampler: dict | None = None, clip_x0: float | None = 1.0, seed: int = 0,
                 sample_shape: tuple | list | None = None, text_encoder: nn.Module | None = None,
                 conditions: Mapping[str, Condition] | list | None = None, noise_prior: nn.Module | None = None,
                 region_loss: Mapping | None = None):
        super().__init__(optimizer, lr_scheduler, seed)
        self.region_loss = self._check_region_loss(region_loss)
        if ema_decay is not None and not (0.0 <= float(ema_decay) < 1.0):
            raise ValueError(f"module.ema_decay must be in [0, 1) (or null for no EMA), got {ema_decay!r}")
        if not (0.0 <= float(cond_drop_prob) <= 1.0):
            raise ValueError(f"module.cond_drop_prob must be in [0, 1], got {cond_drop_prob!r}")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.loss_weighting = loss_weighting
        self.ema = EMA(net, ema_decay, ema_warmup) if ema_decay else None
        self.cond_drop_prob, self.clip_x0 = float(cond_drop_prob), clip_x0
        self.sampler_cfg = dict(sampler or {"name": "ddim", "steps": 50, "eta": 0.0})
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        if noise_prior is not None and not callable(getattr(noise_prior, "sample", None)):
            raise ValueError(f"module.noise_prior must have sample(shape, generator, device, dtype), got "
                             f"{type(noise_prior).__name__}")
        self.noise_prior = noise_prior
        self.conditions = Conditions(self.default_conditions(net, text_encoder, conditions))
        self.conditions.bind(net)
        for c in self.conditions.values():
            if isinstance(c, TextCondition):
                width, want = getattr(c.encoder, "context_dim", None), getattr(net, "context_dim", None)
                if want is None:
                    raise ValueError("a text encoder is configured but the network has no cross-attention "
                                     "(context_dim)")
                if width != want:
                    raise ValueError(f"the text encoder gives {width}-dim tokens, the network's context_dim "
                                     f"is {want}")

    def default_conditions(self, net, text_encoder, conditions) -> list[Condition]:
        declared = list(conditions.values() if isinstance(conditions, Mapping) else (conditions or []))
        keys = {c.key for c in declared}
        fed = {getattr(c, "kwarg", None) for c in declared}
        if getattr(net, "num_classes", None) and "y" not in keys and "y" not in fed:  # labels under another key
            declared.insert(0, LabelCondition("y", drop_prob=self.cond_drop_prob))
        if text_encoder is not None and "caption" not in keys:
            declared.append(TextCondition(text_encoder, drop_prob=self.cond_drop_prob))
        return declared

    # ------------------------------------------------------------------ conditioning seam
    def condition(self, batch: Mapping, generator: torch.Generator | None = None, drop: bool = True) -> dict:
        """The network's keyword arguments of ``batch``; with ``drop`` each condition is dropped to its null value
        with its own probability (training)."""
        return self.conditions.network_kwargs(self.prepare_cond(batch, generator), generator, drop, self.device)

    def prepare_cond(self, cond: Mapping, generator: torch.Generator | None = None) -> Mapping:
        """Hook before encoding conditions (the latent wrapper encodes image-like ones with its autoencoder)."""
        return cond

    # ------------------------------------------------------------------ training
    @staticmethod
    def _check_region_loss(region_loss: Mapping | None) -> dict | None:
        if region_loss is None:
            return None
        spec = dict(region_loss)
        unknown = set(spec) - {"key", "weight", "half_size"}
        if unknown or "key" not in spec:
            raise ValueError(f"module.region_loss takes key, weight, half_size; got {sorted(spec)}")
        spec = {"key": str(spec["key"]), "weight": float(spec.get("weight", 0.0)),
                "half_size": float(spec.get("half_size", 0.1))}
        if spec["weight"] < 0 or spec["half_size"] <= 0:
            raise ValueError(f"module.region_loss needs weight >= 0 and half_size > 0, got {spec}")
        return spec

    def pixel_weight(self, batch: Mapping, x0: torch.Tensor) -> torch.Tensor | None:
        """Per-pixel loss weights of ``module.region_loss`` (``{key, weight, half_size}``: ``1 + weight`` in a box of
        half-width ``half_size`` around the normalised point ``batch[key]`` of each frame, e.g. a mouth centre; 1
        elsewhere), or None without one (:func:`shared.diffusion.losses.point_region_weight`)."""
        if self.region_loss is None or self.region_loss["weight"] == 0:
            return None
        r = self.region_loss
        if r["key"] not in batch:
            raise KeyError(f"module.region_loss reads batch[{r['key']!r}], which the data do not give")
        return point_region_weight(batch[r["key"]].to(x0.device), x0.shape, r["half_size"], r["weight"])

    def training_loss(self, batch: dict, generator: torch.Generator):
        kw = self.condition(batch, generator)
        w = self.pixel_weight(batch, batch["x"])
        if w is not None:   # only then: papers' own objectives need not know the keyword
            kw["pixel_weight"] = w
        return self.objective(batch["x"], generator, **kw)

    def training_noise(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """The training ``eps`` for ``x0`` from the noise prior; None (the loss draws i.i.d. noise) without one."""
        if self.noise_prior is None:
            return None
        return self.noise_prior.sample(x0.shape, generator, x0.device, x0.dtype)

    def objective(self, x0: torch.Tensor, generator: torch.Generator, **net_kwargs):
        """The paper's training objective given clean data and the network's condition keywords."""
        return diffusion_loss(self.net, x0, self.schedule, self.prediction, self.loss_weighting,
                              generator=generator, eps=self.training_noise(x0, generator), **net_kwargs)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.net)

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.training_loss(batch, g)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0], sync_dist=True)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["schedule"] = self.schedule.describe()
        checkpoint["prediction"] = self.prediction

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from shared.methods.registry import upgrade_checkpoint

        upgrade_checkpoint(checkpoint)
        saved = checkpoint.get("schedule")
        if saved is not None and saved != self.schedule.describe():
            raise ValueError(f"checkpoint schedule {saved} differs from the configured {self.schedule.describe()}")
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ sampling
    def sampling_net(self, use_ema: bool = True) -> nn.Module:
        return self.ema.model if (use_ema and self.ema is not None) else self.net

    def samplers(self) -> dict[str, Callable]:
        """Sampler names this module runs -> the function whose signature defines their options."""
        return dict(SAMPLERS)

    def sampler_config(self, override: Mapping | None = None) -> dict:
        return resolve_sampler_config(self.samplers(), self.sampler_cfg, override)

    def guided_network(self, cond_kw: dict, uncond_kw: dict, guidance_scale, use_ema: bool = True) -> Callable:
        """``f(x, t_net, **kw)``: the network with the condition keywords, guided at ``guidance_scale``."""
        net = self.sampling_net(use_ema)
        if not cond_kw:
            return net
        if is_unit_guidance(guidance_scale):
            return lambda x, t, **kw: net(x, t, **cond_kw, **kw)
        return cfg_kwargs_net(net, cond_kw, uncond_kw, guidance_scale)

    def denoiser(self, use_ema: bool = True, cond: Mapping | None = None, guidance_scale=1.0, clip: bool = True,
                 **net_kwargs) -> Callable:
        """``denoise(x_t, t) -> (x0_hat, eps_hat)`` of the (EMA) network under the raw conditions ``cond``
        (batch-like: ``{"y": labels, "caption": [...], ...}``), guided at ``guidance_scale``."""
        guided = not is_unit_guidance(guidance_scale)
        cond_kw, uncond_kw = self.conditions.guidance_pair(self.prepare_cond(cond or {}), self.device, guided)
        if guided and not (set(cond_kw) & self.conditions.guided_kwargs()):
            raise ValueError(f"guidance_scale={guidance_scale} needs a guided condition in cond=...; this module "
                             f"declares {list(self.conditions.keys()) or 'none'}")
        fn = self.guided_network(cond_kw, uncond_kw, guidance_scale, use_ema)
        return make_denoiser(fn, self.schedule, self.prediction, clip_x0=self.clip_x0 if clip else None,
                             **net_kwargs)

    def noise(self, n: int, generator: torch.Generator | None = None, shape=None) -> torch.Tensor:
        shape = tuple(shape or self.sample_shape or ())
        if not shape:
            raise ValueError("module.sample_shape is not set: pass x_T or configure sample_shape")
        if self.noise_prior is not None:
            return self.noise_prior.sample((n, *shape), generator, self.device)
        return torch.randn((n, *shape), generator=generator, device=self.device)

    def sample_batch(self, x_T: torch.Tensor, cond: Mapping, sampler: dict, generator: torch.Generator | None,
                     use_ema: bool = True) -> torch.Tensor:
        """One batch of the sampling loop: the guided denoiser run by the named sampler."""
        name, steps, cfg, loop = split_sampler_config(sampler)
        scale, method, w_r = loop.get("guidance_scale", 1.0), loop.get("extension", "reconstruction"), \
            float(loop.get("w_r", 1.0))
        cond = dict(cond)
        x_known, known = cond.pop("x_known", None), cond.pop("known", None)
        if (x_known is None) != (known is None):
            raise ValueError("completing a sample needs both cond['x_known'] and cond['known'] (a bool mask)")
        den = self.denoiser(use_ema, cond, scale, clip=known is None)
        if known is None:
            return run_sampler(self.samplers()[name], den, x_T, self.schedule, steps, generator, cfg)
        known = known.to(x_T.device).bool().expand_as(x_T)
        x_known = x_known.to(x_T.device, x_T.dtype)
        if method == "replacement":
            den = replacement_denoiser(den, x_known, known, self.schedule, generator, self.clip_x0)
        else:
            den = reconstruction_guided_denoiser(den, x_known, known, self.schedule, w_r, True, generator,
                                                 self.clip_x0)
        out = run_sampler(self.samplers()[name], den, x_T, self.schedule, steps, generator, cfg)
        return torch.where(known, x_known, out)

    @torch.no_grad()
    def sample(self, n: int | None = None, x_T: torch.Tensor | None = None, cond: Mapping | None = None,
               sampler: Mapping | None = None, generator: torch.Generator | None = None, use_ema: bool = True,
               batch_size: int = 500) -> torch.Tensor:
        """Draw samples: ``cond`` holds one value per sample for each condition (``{"y": labels}``,
        ``{"caption": [...]}``, ...); ``sampler`` overrides the configured sampler (name, steps, its options,
        ``guidance_scale``)."""
        cfg = self.sampler_config(sampler)
        cond = dict(cond or {})
        self.conditions.check_keys(cond)
        sizes = {k: cond_len(v) for k, v in cond.items()}
        if x_T is None:
            if n is None:
                if not sizes:
                    raise ValueError("sample() needs n, x_T or conditions to know how many samples to draw")
                n = next(iter(sizes.values()))
            x_T = self.noise(int(n), generator)
        bad = {k: s for k, s in sizes.items() if s != x_T.shape[0]}
        if bad:
            raise ValueError(f"conditions {bad} do not match the {x_T.shape[0]} samples")
        outs = []
        for i in range(0, x_T.shape[0], batch_size):
            j = i + batch_size
            outs.append(self.sample_batch(x_T[i:j], {k: take(v, i, j) for k, v in cond.items()}, cfg, generator,
                                          use_ema))
        return torch.cat(outs)
