"""Consistency models (Song, Dhariwal, Chen & Sutskever, ICML 2023).

A consistency function ``f(x_t, t)`` maps every point of a probability-flow ODE trajectory to its origin, so one
evaluation at ``T`` generates (Sec. 3). It is parameterised with the boundary condition built in,
``f(x, t) = c_skip(t) x + c_out(t) F(x, t)`` with ``c_skip(eps) = 1, c_out(eps) = 0`` (App. C;
``EDMPrecond(boundary_eps=eps)``), and trained by matching its outputs at adjacent times of the Karras
discretisation ``eps = t_1 < ... < t_N = T`` against a target network ``theta^-`` (EMA with rate ``mu``):

* **CD** (Algorithm 2): ``x_{t_{n+1}} = x + t_{n+1} z``; ``x^_{t_n}`` = one Heun step of the *teacher's* PF-ODE;
  loss ``d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^_{t_n}, t_n))``; fixed ``N`` and ``mu``; initialised from
  the teacher.
* **CT** (Algorithm 3): no teacher — ``x^_{t_n} = x + t_n z`` with the *same* ``z``; ``N(k)`` grows and ``mu(k)``
  follows it (:mod:`shared.diffusion.consistency`).
* **Improved CT** (``curriculum: ict``; Song & Dhariwal 2023, Sec. 3): the same objective with the target network
  equal to the current one (no EMA, ``mu = 0``, Sec. 3.2), the exponential curriculum ``N(k)`` from ``s0`` to ``s1``
  (Sec. 3.4), adjacent pairs drawn from the lognormal noise schedule (``index_sampling: lognormal``, Sec. 3.5) and
  weighted by ``1 / (sigma_{i+1} - sigma_i)`` (``weighting: inverse_gap``, Sec. 3.1), with the pseudo-Huber distance.

``d`` is named by the config: ``l2`` (squared), ``pseudo_huber`` (improved CT), ``judge`` (squared distance of
the digits judge's features — the metric's own network, so only for ablations) or ``lpips`` (weights from a
local path; clear error when missing). Sampling is multistep consistency sampling (Algorithm 1), the
``consistency`` sampler of the shared sampling loop.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from shared.diffusion.consistency import (
    ct_num_scales,
    ct_target_ema,
    heun_between,
    ict_num_scales,
    ict_weight,
    lognormal_pair_probs,
    multistep_consistency_sample,
    pseudo_huber,
)
from shared.diffusion.edm import karras_boundaries
from shared.methods.edm_module import EDMModule, TeacherMixin, init_from_checkpoint

DISTANCES = ("l2", "pseudo_huber", "judge", "lpips")


class LPIPSDistance(torch.nn.Module):
    """LPIPS (Zhang et al. 2018) from local files only: the ``lpips`` package's linear heads at ``weights_path`` and
    its VGG backbone at ``backbone_path`` (a torchvision ``vgg16`` state dict). Nothing is downloaded."""

    def __init__(self, weights_path: str | None, backbone_path: str | None = None):
        super().__init__()
        missing = [p for p in (weights_path, backbone_path) if not p or not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"LPIPS needs local weights (claim/module.lpips_weights=<lin heads .pth>, "
                                    f"lpips_backbone=<vgg16 .pth>); not found: {missing}. Use distance=l2, "
                                    "pseudo_huber or judge offline.")
        try:
            import lpips  # noqa: F401
            import torchvision
        except ImportError as e:  # pragma: no cover
            raise ImportError("distance=lpips needs the 'lpips' package (pip install lpips)") from e
        vgg = torchvision.models.vgg16()
        vgg.load_state_dict(torch.load(backbone_path, map_location="cpu", weights_only=True))
        self.model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, model_path=weights_path, verbose=False)
        feats = vgg.features.state_dict()
        for name, part in self.model.net.named_children():   # lpips splits vgg16.features into slices, same keys
            if name.startswith("slice"):
                part.load_state_dict({k: feats[k] for k in part.state_dict()})
        self.model.eval().requires_grad_(False)

    def forward(self, x, y):
        up = lambda a: torch.nn.functional.interpolate(a.repeat(1, 3 // a.shape[1], 1, 1), size=224,  # noqa: E731
                                                       mode="bilinear")
        return self.model(up(x), up(y)).flatten()


class ConsistencyModel(TeacherMixin, EDMModule):
    def __init__(self, net, schedule, mode: str = "cd", teacher_ckpt: str | None = None,
                 init_from_teacher: bool = True, num_scales: int = 18, target_ema: float = 0.95,
                 s0: int = 2, s1: int = 150, mu0: float = 0.9, total_steps: int = 1000, solver: str = "heun",
                 distance: str = "l2", huber_c: float | None = None, lpips_weights: str | None = None,
                 lpips_backbone: str | None = None, sample_times: list | None = None, curriculum: str = "ct",
                 index_sampling: str = "uniform", weighting: str = "uniform", p_mean: float = -1.1,
                 p_std: float = 2.0, **kwargs):
        kwargs["boundary_eps"] = float(schedule.t_min)
        super().__init__(net, schedule, **kwargs)
        if mode not in ("cd", "ct"):
            raise ValueError(f"mode must be 'cd' or 'ct', got {mode!r}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
        if solver not in ("heun", "euler"):
            raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
        if mode == "cd" and not teacher_ckpt:
            raise ValueError("consistency distillation (mode=cd) needs teacher_ckpt")
        for name, value, valid in (("curriculum", curriculum, ("ct", "ict")),
                                   ("index_sampling", index_sampling, ("uniform", "lognormal")),
                                   ("weighting", weighting, ("uniform", "inverse_gap"))):
            if value not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        if curriculum == "ict" and mode != "ct":
            raise ValueError("curriculum='ict' (improved consistency training) needs mode='ct'")
        self.curriculum, self.index_sampling, self.weighting = curriculum, index_sampling, weighting
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.mode, self.teacher_ckpt, self.solver = mode, teacher_ckpt, solver
        self.num_scales, self.target_ema = int(num_scales), float(target_ema)
        self.s0, self.s1, self.mu0, self.total_steps = int(s0), int(s1), float(mu0), int(total_steps)
        self.distance, self.huber_c = distance, huber_c
        self.sample_times = [float(t) for t in (sample_times or [schedule.t_max])]
        # sampling is multistep consistency sampling at ``sample_times`` unless a caller names another sampler (the
        # ``sampler`` of the module config is the teacher recipe's, not the consistency model's)
        self.sampler_cfg = {"name": "consistency", "times": self.sample_times}
        if teacher_ckpt and init_from_teacher:
            init_from_checkpoint(self, teacher_ckpt)
        self.target = copy.deepcopy(self.net).requires_grad_(False)   # theta^- (saved with checkpoints)
        self._dist = LPIPSDistance(lpips_weights, lpips_backbone) if distance == "lpips" else None

    # ------------------------------------------------------------------ schedules
    def current_scales(self) -> int:
        if self.mode == "cd":
            return self.num_scales
        if self.curriculum == "ict":
            return ict_num_scales(int(self.global_step), self.total_steps, self.s0, self.s1)
        return ct_num_scales(int(self.global_step), self.total_steps, self.s0, self.s1)

    def current_mu(self) -> float:
        if self.mode == "cd":
            return self.target_ema
        if self.curriculum == "ict":
            return 0.0   # improved CT: the target is the current network (no EMA)
        return ct_target_ema(self.current_scales(), self.s0, self.mu0)

    # ------------------------------------------------------------------ loss
    def dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.distance == "l2":
            return ((a - b) ** 2).flatten(1).mean(1)
        if self.distance == "pseudo_huber":
            return pseudo_huber(a, b, self.huber_c)
        if self.distance == "judge":
            from shared.metrics.judge import load_judge
            judge = self.__dict__.get("_judge")
            if judge is None:
                judge = load_judge().to(self.device).eval().requires_grad_(False)
                object.__setattr__(self, "_judge", judge)
            return ((judge.features(a) - judge.features(b)) ** 2).mean(1)
        return self._dist(a, b)

    def objective(self, x: torch.Tensor, generator: torch.Generator, **kw) -> torch.Tensor:
        b = x.shape[0]
        bounds = karras_boundaries(self.schedule, self.current_scales()).to(x.device)
        if self.index_sampling == "lognormal":
            probs = lognormal_pair_probs(bounds, self.p_mean, self.p_std)
            n = torch.multinomial(probs.cpu().float(), b, replacement=True, generator=generator).to(x.device)
        else:
            n = torch.randint(0, len(bounds) - 1, (b,), generator=generator).to(x.device)
        t_cur, t_next = bounds[n], bounds[n + 1]
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_next = x + t_next[:, None, None, None] * z
        with torch.no_grad():
            if self.mode == "cd":
                teacher = self.teacher
                d_fn = teacher.denoise_sigma
                if self.solver == "heun":
                    x_cur = heun_between(lambda a, s: d_fn(a, s, **kw), x_next, t_next, t_cur)
                else:
                    x_cur = x_next + (t_cur - t_next)[:, None, None, None] * (x_next - d_fn(x_next, t_next, **kw)) \
                        / t_next[:, None, None, None]
            else:
                x_cur = x + t_cur[:, None, None, None] * z
            target = self.target.denoise_sigma(x_cur, t_cur, **kw)
        pred = self.net.denoise_sigma(x_next, t_next, **kw)
        d = self.dist(pred, target)
        if self.weighting == "inverse_gap":
            return (ict_weight(t_cur, t_next).to(d.dtype) * d).mean()
        return d.mean()   # lambda(t_n) = 1 as in the paper

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        mu = self.current_mu()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.parameters()), [p.detach() for p in self.net.parameters()],
                                 1.0 - mu)

    # ------------------------------------------------------------------ sampling
    def samplers(self) -> dict:
        return {**super().samplers(), "consistency": consistency_sampler}


def consistency_sampler(denoise, x_T: torch.Tensor, schedule, steps: int | None = None, times=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Algorithm 1) at ``times`` (``[T]`` is one-step generation); ``x_T`` is the
    module's noise at ``sigma_max``, rescaled to ``times[0]``."""
    if times is None:
        raise ValueError("the consistency sampler needs times (sampler.times)")
    times = [float(t) for t in torch.as_tensor(times).flatten()]
    return multistep_consistency_sample(denoise, x_T * (times[0] / schedule.t_max), times, schedule.t_min, generator)
