"""Text2Video-Zero (Khachatryan, Movsisyan, Tadevosyan, Henschel, Wang, Navasardyan & Shi, ICCV 2023): a trained
text-to-image diffusion model made a zero-shot video generator, without any training or video data.

Two changes to sampling (Sec. 3):

1. *Motion dynamics in the latent codes* (Sec. 3.2, Algorithm 1). Draw ``x_T^1`` for the first frame; run DDIM for
   ``Δt`` steps from ``T`` to ``T'`` (here: from the noisy end to the grid time of index ``t1``, then on to
   ``t0``); for frame ``k`` translate ``x_{t0}^1`` by ``δ^k = λ (k - 1) δ`` (a global translation by the motion
   field, ``W_k``); bring every translated code back to time ``t1`` with the DDPM *forward* process,
   ``x_{t1}^k = sqrt(ᾱ_{t1}/ᾱ_{t0}) W_k(x_{t0}^1) + sqrt(1 - ᾱ_{t1}/ᾱ_{t0}) ε^k``, and keep ``x_{t1}^1``. Every frame
   then starts from (nearly) the same code, shifted along the commanded direction. In the official code (diffusers
   ``TextToVideoZeroPipeline``) ``t1``/``t0`` are the grid indices 47/44 of 50 DDIM steps counted from the clean
   end, i.e. 2 and 5 from the noisy end, and the warp is ``grid_sample`` (nearest, reflection padding).
2. *Cross-frame attention* (Sec. 3.3, Eq. 4): every self-attention layer of the U-Net takes its keys and values
   from the first frame, ``Attn(W^Q x^k, W^K x^1, W^V x^1)`` — the shared attention switch
   ``frame_attention="first"`` (:mod:`shared.nn.attention`); the first frame is untouched.

All frames are then denoised together from ``t1`` to the clean end with DDIM. The background smoothing of Sec. 3.4
(salient-object masks) is not implemented (the worlds here have a plain background).

:func:`text2video_zero` runs it on any module with a ``denoiser`` (a :class:`shared.methods.diffusion_module.
DiffusionModule`, pixel space, or a latent one); :func:`per_frame_videos` is the baseline (independent noise per
frame, the image model frame by frame).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from shared.diffusion.samplers import ddim_sample
from shared.diffusion.schedules import _bcast

__all__ = ["direction_vector", "direction_velocity", "translate", "motion_field", "ddim_segment", "ddpm_forward",
           "text2video_zero", "per_frame_videos"]


def direction_vector(direction: int, num_directions: int = 8) -> tuple[float, float]:
    """Unit step ``(d_row, d_col)`` of a direction class counted counter-clockwise from "right" in
    ``360 / num_directions`` degree steps (rows grow downward; the diagonals of 8 directions are ``(±1, ±1)``, as
    :data:`shared.data.video_worlds.DIRECTIONS8`)."""
    angle = 2 * math.pi * int(direction) / int(num_directions)
    d_row, d_col = -math.sin(angle), math.cos(angle)
    if num_directions == 8:
        return float(round(d_row)), float(round(d_col))
    return d_row, d_col


def motion_field(velocity: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, 2) translation ``δ^k = k · velocity`` of frame ``k = 0 .. T-1`` for per-video ``velocity`` (B, 2) in
    pixels of the sampled space per frame, (rows, cols) (Algorithm 1: ``λ (k - 1) δ`` for 1-based ``k``)."""
    k = torch.arange(frames, dtype=torch.float32)
    return k.view(1, -1, 1) * velocity.float().view(-1, 1, 2)


def direction_velocity(directions: torch.Tensor, strength: float) -> torch.Tensor:
    """(B, 2) velocity ``strength · direction_vector(d)`` of direction classes ``directions`` (B,)."""
    return float(strength) * torch.tensor([direction_vector(int(d)) for d in directions], dtype=torch.float32)


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move the content of ``x`` (N, C, H, W) by ``shift`` (N, 2) = (rows, cols) pixels: ``out(p) = x(p - shift)``,
    nearest-neighbour sampling with reflection padding (the official warp)."""
    n, _, h, w = x.shape
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1) - shift[:, 0].view(-1, 1, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w) - shift[:, 1].view(-1, 1, 1)
    rows, cols = rows.expand(n, h, w), cols.expand(n, h, w)
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1)  # align_corners=False
    return F.grid_sample(x, grid.to(x.dtype), mode="nearest", padding_mode="reflection", align_corners=False)


@torch.no_grad()
def ddim_segment(denoise, x: torch.Tensor, schedule, times: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from ``times[0]`` to ``times[-1]`` (``len(times) - 1`` steps; ``times`` descending)."""
    for i in range(len(times) - 1):
        t = times[i].expand(x.shape[0])
        x0, eps = denoise(x, t)
        a_s, s_s = schedule.alpha_sigma(times[i + 1].expand(x.shape[0]))
        x = _bcast(a_s, x) * x0 + _bcast(s_s, x) * eps
    return x


def ddpm_forward(x: torch.Tensor, schedule, t_from: torch.Tensor, t_to: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw of ``q(x_{t_to} | x_{t_from})`` (``t_to`` noisier): ``sqrt(ᾱ_to/ᾱ_from) x + sqrt(1 - ᾱ_to/ᾱ_from) ε``."""
    a_f, _ = schedule.alpha_sigma(t_from.reshape(1))
    a_t, _ = schedule.alpha_sigma(t_to.reshape(1))
    ratio = float((a_t / a_f) ** 2)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return math.sqrt(ratio) * x + math.sqrt(max(1.0 - ratio, 0.0)) * eps


def _repeat_cond(cond: Mapping, frames: int) -> dict:
    """Per-video conditions repeated for frame-wise (image) sampling: (B, ...) -> (B*T, ...)."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.repeat_interleave(frames, dim=0)
        else:
            out[k] = [x for x in v for _ in range(frames)]
    return out


@torch.no_grad()
def per_frame_videos(module, cond: Mapping, frames: int, steps: int, generator: torch.Generator,
                     guidance_scale=1.0, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The baseline: every frame an independent image sample (own noise) of the same prompt; (B, C, T, H, W)."""
    n = len(next(iter(cond.values())))
    shape = tuple(shape or module.sample_shape)
    x_T = torch.randn((n * frames, *shape), generator=generator, device=module.device)
    den = module.denoiser(cond=_repeat_cond(cond, frames), guidance_scale=guidance_scale)
    x = ddim_sample(den, x_T, module.schedule, steps=steps)
    return x.view(n, frames, *x.shape[1:]).transpose(1, 2)


@torch.no_grad()
def text2video_zero(module, cond: Mapping, velocity: torch.Tensor, frames: int, steps: int, t1: int, t0: int,
                    generator: torch.Generator, guidance_scale=1.0, motion: bool = True, cross_frame: bool = True,
                    shape: Sequence[int] | None = None) -> torch.Tensor:
    """Text2Video-Zero samples (B, C, T, ...) of the module's space for the conditions ``cond`` (one per video),
    translated by ``velocity`` (B, 2) = (rows, cols) pixels per frame (module docstring). ``t1 < t0`` are indices into
    the DDIM grid of ``steps`` times counted from the noisy end. ``motion=False``: every frame starts from
    ``x_{t1}^1`` (no motion dynamics: a still video); ``cross_frame=False``: plain self-attention (the ablations of
    Sec. 4)."""
    if not 0 <= int(t1) < int(t0) < int(steps):
        raise ValueError(f"need 0 <= t1 < t0 < steps (grid indices from the noisy end), got t1={t1}, t0={t0}, "
                         f"steps={steps}")
    schedule = module.schedule
    n = len(velocity)
    shape = tuple(shape or module.sample_shape)
    times = schedule.sampling_times(int(steps), device=module.device)
    x_T = torch.randn((n, *shape), generator=generator, device=module.device)
    image_den = module.denoiser(cond=dict(cond), guidance_scale=guidance_scale)
    x_t1 = ddim_segment(image_den, x_T, schedule, times[: t1 + 1])              # frame 1: T -> t1
    rest = frames - 1
    if motion:
        x_t0 = ddim_segment(image_den, x_t1, schedule, times[t1: t0 + 1])       # frame 1: t1 -> t0
        field = motion_field(velocity, frames)[:, 1:]                          # (B, T-1, 2) for frames 2..T
        warped = translate(x_t0.repeat_interleave(rest, dim=0), field.reshape(-1, 2).to(x_t0.device))
        others = ddpm_forward(warped, schedule, times[t0], times[t1], generator)   # back to t1
        others = others.view(n, rest, *shape).transpose(1, 2)
    else:
        others = x_t1[:, :, None].expand(-1, -1, rest, *shape[1:])
    video = torch.cat([x_t1[:, :, None], others], dim=2)                       # (B, C, T, H, W) at t1
    kw = {"frame_attention": "first"} if cross_frame else {}
    video_den = module.denoiser(cond=dict(cond), guidance_scale=guidance_scale, **kw)
    return ddim_sample(video_den, video, schedule, times=times[t1:])
