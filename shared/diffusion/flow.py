"""Flow matching / rectified flow on the shared diffusion core (Liu, Gong & Liu, ICLR 2023; Liu et al.,
InstaFlow, ICLR 2024; Lipman et al. 2023; logit-normal times: Esser et al. 2024, SD3 Sec. 3.1).

Paper notation: ``X_0 ~ pi_0`` (noise or a source distribution), ``X_1 ~ pi_1`` (data), the linear path
``X_t = t X_1 + (1 - t) X_0`` and the objective (Eq. 1)

    min_v  int_0^1 E || (X_1 - X_0) - v(X_t, t) ||^2 dt.

Here everything is expressed through :class:`~shared.diffusion.schedules.FlowSchedule` (``alpha = 1 - t``,
``sigma = t``, schedule time ``t = 1 - t_rf``) and the ``flow`` parameterisation (network output
``u = x0 - eps`` = ``X_1 - X_0``), so the loss *is* :func:`shared.diffusion.losses.diffusion_loss` with
``prediction="flow"`` and the given coupling ``(x0 = X_1, eps = X_0)``; samplers (Euler = the paper's
N-step Euler, Heun, RK45) are the shared ones. This module adds:

* :func:`sample_flow_time` — training times, ``uniform`` or ``logit_normal``;
* :func:`flow_matching_loss` — the objective for any network, independent or given (reflow) coupling;
* :func:`velocity_target` — the closed-form regression target ``X_1 - X_0``;
* :func:`distillation_loss` — one-step distillation of a k-rectified flow (Sec. 2.3 / InstaFlow Sec. 3.3):
  ``|| T(X_0) - X_1 ||^2`` with the one-step map ``T(z) = z + v(z, t_rf = 0)``, i.e. one Euler step;
* :func:`generate_pairs` — reflow coupling: integrate the current flow's ODE from ``X_0`` to get ``X_1``
  (Algorithm 1 of the paper), for any denoiser (plain or classifier-free guided);
* :class:`CouplingDataset` — the ``(X_0, X_1[, y])`` pairs as dict items ``{"noise", "x", "y"}``, saved to
  and loaded from safetensors so a reflow stage is one ``shared.engine.train`` run on a file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from shared.diffusion.losses import diffusion_loss
from shared.diffusion.parameterization import from_x0_eps, to_x0_eps
from shared.diffusion.samplers import Denoiser, euler_sample, heun_sample, rk45_sample
from shared.diffusion.schedules import FlowSchedule, Schedule

TIME_SAMPLINGS = ("uniform", "logit_normal")


def sample_flow_time(
    n: int,
    kind: str = "uniform",
    generator: torch.Generator | None = None,
    device=None,
    loc: float = 0.0,
    scale: float = 1.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
) -> torch.Tensor:
    """``n`` training times in schedule time (``t = 1`` noise, ``t = 0`` data).

    ``uniform``: ``t ~ U(t_min, t_max)`` (the paper). ``logit_normal``: ``t = sigmoid(loc + scale z)``,
    ``z ~ N(0, 1)`` (SD3), rescaled to ``[t_min, t_max]``; it is symmetric in ``t <-> 1 - t`` for ``loc = 0``.
    """
    if kind == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    elif kind == "logit_normal":
        u = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, device=device))
    else:
        raise ValueError(f"unknown time sampling {kind!r}; choose one of {TIME_SAMPLINGS}")
    return t_min + (t_max - t_min) * u


def velocity_target(x_data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``X_1 - X_0`` (constant along each straight path), via the ``flow`` target."""
    one = torch.ones(x_data.shape[0], device=x_data.device)
    return from_x0_eps(x_data, noise, one, one, "flow")


def flow_matching_loss(
    net,
    x_data: torch.Tensor,
    schedule: Schedule | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    time_kwargs: dict | None = None,
    **net_kwargs,
) -> torch.Tensor:
    """Rectified-flow objective (Eq. 1). ``noise`` given = a fixed coupling (reflow pairs, or a source
    distribution for transfer); ``None`` = independent Gaussian coupling (1-rectified flow)."""
    schedule = schedule or FlowSchedule()
    if not isinstance(schedule, FlowSchedule):
        raise ValueError("flow matching uses the linear path: pass a FlowSchedule")
    if t is None:
        t = sample_flow_time(
            x_data.shape[0],
            time_sampling,
            generator,
            x_data.device,
            t_min=schedule.t_min,
            t_max=schedule.t_max,
            **(time_kwargs or {}),
        )
    if noise is None:
        noise = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
    return diffusion_loss(
        net, x_data, schedule, "flow", "simple", generator=generator, t=t, eps=noise, **net_kwargs
    )


def one_step(net, noise: torch.Tensor, schedule: Schedule | None = None, **net_kwargs) -> torch.Tensor:
    """The one-step map ``T(z) = z + v(z, t_rf = 0)`` (= one Euler step = ``x0_hat`` at ``t = t_max``)."""
    schedule = schedule or FlowSchedule()
    t = torch.full((noise.shape[0],), float(schedule.t_max), device=noise.device)
    a, s = schedule.alpha_sigma(t)
    out = net(noise, schedule.net_time(t), **net_kwargs)
    return to_x0_eps(out, noise, a, s, "flow")[0]


def distillation_loss(
    net, noise: torch.Tensor, x_target: torch.Tensor, schedule: Schedule | None = None, **net_kwargs
) -> torch.Tensor:
    """One-step distillation (Sec. 2.3): mean squared error of ``T(X_0)`` to the teacher's ``X_1``.

    The paper (CIFAR) and InstaFlow use LPIPS here; the squared error is the metric-free version.
    """
    return ((one_step(net, noise, schedule, **net_kwargs) - x_target) ** 2).flatten(1).mean(1).mean()


def float32_network(denoise: Denoiser) -> Denoiser:
    """Run a float32 network inside a float64 ODE solver: ``rk45_sample`` integrates in float64 and hands the
    state to the denoiser as is, which a float32 network rejects; cast in, cast back out."""

    def wrapped(x, t):
        x0, eps = denoise(x.float(), torch.as_tensor(t).float())
        return x0.to(x.dtype), eps.to(x.dtype)

    return wrapped


@torch.no_grad()
def solve_ode(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    solver: str = "rk45",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """Integrate the flow's ODE from ``x_T`` (noise end) to data; returns ``(x, nfe)``."""
    if solver == "rk45":
        return rk45_sample(float32_network(denoise), x_T, schedule, rtol=rtol, atol=atol)
    if solver == "euler":
        return euler_sample(denoise, x_T, schedule, steps), int(steps)
    if solver == "heun":
        return heun_sample(denoise, x_T, schedule, steps), 2 * int(steps) - 1
    raise ValueError(f"unknown ODE solver {solver!r}; choose rk45, euler or heun")


@torch.no_grad()
def generate_pairs(
    make_denoise,
    noise: torch.Tensor,
    schedule: Schedule,
    y: torch.Tensor | None = None,
    solver: str = "rk45",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Reflow coupling (Algorithm 1): ``X_1 = ODE_v(X_0)`` for each ``X_0`` in ``noise``.

    ``make_denoise(y_batch)`` returns the denoiser to integrate (e.g. ``module.denoiser(y=...,
    guidance_scale=w)``
    for InstaFlow's guided teacher; ``y_batch`` is ``None`` when ``y`` is). Returns ``(noise, x1, nfe per
    batch)``.
    """
    outs, nfes = [], []
    for i in range(0, noise.shape[0], batch_size):
        yb = None if y is None else y[i : i + batch_size]
        x, nfe = solve_ode(make_denoise(yb), noise[i : i + batch_size], schedule, solver, steps, rtol, atol)
        outs.append(x)
        nfes.append(int(nfe))
    return noise, torch.cat(outs), nfes


class CouplingDataset(Dataset):
    """Coupled pairs ``(X_0, X_1[, y])`` as items ``{"noise", "x"[, "y"]}`` (reflow / distillation data).

    Build from tensors, or from ``path`` (a safetensors file written by :meth:`save`).
    """

    def __init__(
        self,
        path: str | None = None,
        noise: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ):
        if path is not None:
            from safetensors.torch import load_file

            t = load_file(str(path))
            noise, x, y = t["noise"], t["x"], t.get("y")
        if noise is None or x is None or noise.shape != x.shape:
            raise ValueError("a coupling needs noise and x of the same shape (or a path to a saved coupling)")
        self.noise, self.x, self.y = (
            noise.contiguous(),
            x.contiguous(),
            None if y is None else y.long().contiguous(),
        )

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"noise": self.noise, "x": self.x, **({"y": self.y} if self.y is not None else {})}
        save_file(tensors, str(path))
        return path

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict:
        item = {"x": self.x[i], "noise": self.noise[i]}
        if self.y is not None:
            item["y"] = self.y[i]
        return item
