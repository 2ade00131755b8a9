"""Generative Image Dynamics (Li, Tucker, Snavely & Holynski, CVPR 2024): the motion model, the renderer and
the applications, on the project's method layer.

* :class:`GIDModule` — the motion prediction module (Sec. 4.2): a diffusion model of the spectral volume ``S``
  of a still ``I_0`` (declared condition ``still``, concatenated to the noisy latent by the network,
  `papers.generative_image_dynamics.nets.StillUNet`). Built with the latent wrapper
  (`shared.methods.latent_module.latent_diffusion`) around a `papers.generative_image_dynamics.codec
  .SpectralCodec`, so training encodes ``normalize(S)`` (Eq. 4, frequency-adaptive or global) with the per-band
  VAE (or none) and ``sample()`` returns denormalised spectral volumes ``(B, 4, K, h, w)``. Trained with the
  standard ``eps`` objective (Eq. 3, the LDM loss).
  Sampling adds the paper's *motion self-guidance* for seamless loops (Sec. 6, "seamless looping"): with
  ``sampler={"loop_guidance": u, "loop_frames": N}`` every denoising step uses

      eps_hat = eps_theta(z_n; n, c) + u sigma_n grad_{z_n} L_g,
      L_g = ||F_N - F_0||_1 + ||(F_N - F_{N-1}) - (F_1 - F_0)||_1,

  where ``F_t`` is the motion texture (inverse FFT, `shared.data.spectral.trajectories`) of the volume decoded
  from the step's clean estimate, ``F_0 = 0`` is the still and ``N`` the clip length: the motion the clip would
  continue to after its last frame must return to the still with the velocity it left it (the paper's "position
  and velocity of each pixel at the first and last frame as similar as possible"). The paper adds it next to
  classifier-free guidance, ``(1 + w) eps(c) - w eps(0)``: both compose (``guidance_scale`` as usual).
* :class:`RendererModule` — the image-based rendering module (Sec. 5), trained on ``(I_0, F_t, I_t)`` triplets
  of the world's clips with an L1 loss (the paper: VGG perceptual loss on real video frames).
* :func:`motion_texture`, :func:`render_video` — volume -> motion texture -> frames.
* :func:`modal_response` — interactive dynamics (Sec. 6): the spectral volume as an image-space modal basis
  (Davis et al. 2015) and the response to a poke.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from shared.data.spectral import motion_importance, trajectories
from shared.methods.base import RunModule, batch_size_of
from shared.methods.diffusion_module import DiffusionModule
from shared.methods.sampling import SamplerConfigError, resolve_sampler_config, run_sampler, split_sampler_config

__all__ = ["GIDModule", "RendererModule", "LOOP_KEYS", "loop_loss", "motion_texture", "render_video",
           "modal_response", "upsample_motion"]

LOOP_KEYS = ("loop_guidance", "loop_frames")


def upsample_motion(motion: torch.Tensor, size: int) -> torch.Tensor:
    """Motion maps ``(..., 2, N, h, w)`` in pixels of the still -> ``(..., 2, N, size, size)`` (bilinear; the
    values are already in the still's pixels, so they are not rescaled)."""
    h = motion.shape[-1]
    if h == size:
        return motion
    lead = motion.shape[:-2]
    out = F.interpolate(motion.reshape(-1, 1, h, h), size=(size, size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, size, size)


def motion_texture(volume: torch.Tensor, period: int, times, size: int | None = None) -> torch.Tensor:
    """Spectral volume in video layout ``(B, 4, K, h, w)`` -> motion texture ``(B, 2, N, S, S)`` at ``times`` (an
    int ``N`` = frames ``0..N-1``, or frame times), upsampled to ``size`` (Sec. 5: ``F = FFT^-1(S)``)."""
    motion = trajectories(volume.transpose(1, 2), period, times)
    return motion if size is None else upsample_motion(motion, size)


def loop_loss(volume: torch.Tensor, period: int, frames: int) -> torch.Tensor:
    """Per-sample ``L_g`` (module docstring) of volumes ``(B, 4, K, h, w)``: mean absolute position and velocity
    mismatch (pixels) between the end of a ``frames``-long clip (``F_N``, ``F_N - F_{N-1}``) and its start (the
    still, ``F_0 = 0``, and ``F_1 - F_0``)."""
    f = motion_texture(volume, period, [frames - 1, frames, 1])  # (B, 2, 3, h, w)
    pos = f[:, :, 1]
    vel_end, vel_start = f[:, :, 1] - f[:, :, 0], f[:, :, 2]
    return pos.abs().flatten(1).mean(1) + (vel_end - vel_start).abs().flatten(1).mean(1)


@torch.no_grad()
def render_video(renderer, still: torch.Tensor, volume: torch.Tensor | None, period: int, frames: int,
                 motion: torch.Tensor | None = None, batch_frames: int = 256) -> torch.Tensor:
    """Animate stills ``(B, 3, S, S)``: the motion texture of ``volume`` (or a given ``motion`` ``(B, 2, N, S, S)``)
    over ``frames`` frames, each frame rendered by ``renderer`` (Sec. 5); frame 0 is the still itself. Returns
    videos ``(B, 3, N, S, S)`` in [-1, 1]."""
    B, _, S, _ = still.shape
    if motion is None:
        motion = motion_texture(volume, period, frames, size=S)
    weight = motion_importance(motion)  # (B, 1, S, S): W(p) = mean_t ||F_t(p)||
    out = torch.empty(B, 3, frames, S, S)
    for b in range(B):
        feats = [f.expand(1, -1, -1, -1) for f in renderer.pyramid(still[b:b + 1])]
        for t0 in range(0, frames, batch_frames):
            t1 = min(frames, t0 + batch_frames)
            n = t1 - t0
            fl = motion[b, :, t0:t1].transpose(0, 1)  # (n, 2, S, S)
            fr = renderer(still[b:b + 1].expand(n, -1, -1, -1), fl, weight[b:b + 1].expand(n, -1, -1, -1),
                          feats=[f.expand(n, -1, -1, -1) for f in feats])
            out[b, :, t0:t1] = fr.transpose(0, 1).clamp(-1, 1)
    out[:, :, 0] = still.clamp(-1, 1)
    return out


def modal_response(volume: torch.Tensor, period: int, point: Sequence[int], force: Sequence[float],
                   times, damping: float = 0.05, mass: float = 1.0, bins: Sequence[int] | None = None
                   ) -> torch.Tensor:
    """Interactive dynamics (GID Sec. 6, after Davis et al. 2015, "Image-space modal bases"): the response of the
    scene to a poke, from one spectral volume ``(4, K, h, w)`` (video layout) taken as an image-space modal basis.

    Each bin ``k >= 1`` is a mode with shape ``phi_k(p) = S_k(p)`` (complex x and y) and angular frequency
    ``w_k = 2 pi k / period``; a modal coordinate is a damped oscillator ``q'' + 2 zeta w q' + w^2 q = f / m``.
    A poke — an impulse of direction and size ``force`` (dx, dy) at pixel ``point`` (row, col) — gives each mode
    the modal impulse ``f_k = <phi_k(point), force>`` (projection on the conjugate mode shape) and the response
    ``q_k(t) = f_k / (m w_dk) exp(-zeta w_k t) sin(w_dk t)``, ``w_dk = w_k sqrt(1 - zeta^2)`` (the impulse
    response); the motion is ``F_t(p) = sum_k Re(phi_k(p) q_k(t))`` (the paper's ``F_t(p) = sum_j S_fj(p)
    q_fj(t)``). Each mode shape is normalised to unit maximum modulus, so the response is linear in ``force`` and
    independent of the volume's overall scale; ``bins`` picks the modes (default all ``k >= 1``).

    Returns ``(2, N, h, w)`` displacements (pixels) at frame ``times`` (an int ``N`` or frame times).
    """
    if volume.dim() != 4 or volume.shape[0] != 4:
        raise ValueError(f"modal_response: volume must be (4, K, h, w), got {tuple(volume.shape)}")
    if not 0 <= damping < 1:
        raise ValueError(f"modal_response: damping must lie in [0, 1), got {damping}")
    v = volume.double()
    K = v.shape[1]
    ks = list(range(1, K)) if bins is None else [int(k) for k in bins]
    phi_x = torch.complex(v[0], v[1])[ks]  # (M, h, w)
    phi_y = torch.complex(v[2], v[3])[ks]
    peak = torch.sqrt(phi_x.abs() ** 2 + phi_y.abs() ** 2).flatten(1).amax(1).clamp_min(1e-12)
    phi_x, phi_y = phi_x / peak[:, None, None], phi_y / peak[:, None, None]
    r, c = int(point[0]), int(point[1])
    fx, fy = float(force[0]), float(force[1])
    f = phi_x[:, r, c].conj() * fx + phi_y[:, r, c].conj() * fy  # (M,) modal impulses
    t = torch.arange(times, dtype=torch.float64) if isinstance(times, int) else \
        torch.as_tensor(list(times), dtype=torch.float64)
    w = 2 * math.pi * torch.tensor(ks, dtype=torch.float64) / period
    wd = w * math.sqrt(1 - damping**2)
    decay = torch.exp(-damping * w[:, None] * t[None])
    q = f[:, None] / (mass * wd[:, None]) * decay * torch.sin(wd[:, None] * t[None])
    dx = torch.einsum("mn,mhw->nhw", q, phi_x).real
    dy = torch.einsum("mn,mhw->nhw", q, phi_y).real
    out = torch.stack([dx, dy])
    return out.to(volume.dtype)


class GIDModule(DiffusionModule):
    """The motion model (module docstring). ``period``: the analysis window ``T`` (frames) of the volumes."""

    def __init__(self, *args, period: int = 150, **kwargs):
        super().__init__(*args, **kwargs)
        self.period = int(period)

    # ------------------------------------------------------------------ the volume out of the diffusion space
    def decode_volume(self, z: torch.Tensor) -> torch.Tensor:
        """Raw spectral volume ``(B, 4, K, H, W)`` of a diffusion-space sample (differentiable)."""
        lat = getattr(self, "latent", None)
        if lat is None:
            return z
        return lat.autoencoder.decode(z / lat.scale + lat.shift)

    # ------------------------------------------------------------------ sampling with motion self-guidance
    def sampler_config(self, override: Mapping | None = None) -> dict:
        override, defaults = dict(override or {}), dict(self.sampler_cfg)
        loop = {k: defaults.pop(k) for k in LOOP_KEYS if k in defaults}
        loop.update({k: override.pop(k) for k in LOOP_KEYS if k in override})
        cfg = resolve_sampler_config(self.samplers(), defaults, override)
        if loop:
            u = loop.get("loop_guidance", 0.0)
            try:
                ok = math.isfinite(float(u)) and float(u) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise SamplerConfigError(f"sampler.loop_guidance must be a finite number >= 0, got {u!r}")
            n = loop.get("loop_frames", self.period)
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise SamplerConfigError(f"sampler.loop_frames must be an integer >= 2, got {n!r}")
            cfg.update({"loop_guidance": float(u), "loop_frames": int(n)})
        return cfg

    def loop_guided(self, denoise: Callable, weight: float, frames: int) -> Callable:
        """``denoise`` with the motion self-guidance term added to its ``eps`` (module docstring)."""
        schedule = self.schedule

        def guided(x_t: torch.Tensor, t):
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                x0, eps = denoise(x, t)
                loss = loop_loss(self.decode_volume(x0), self.period, frames).sum()
                grad = torch.autograd.grad(loss, x)[0]
            tt = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
            alpha, sigma = schedule.alpha_sigma(tt.expand(x_t.shape[0]) if tt.dim() == 0 else tt)
            shape = (-1,) + (1,) * (x_t.dim() - 1)
            a, s = alpha.reshape(shape).to(x_t.dtype), sigma.reshape(shape).to(x_t.dtype)
            eps = eps.detach() + weight * s * grad
            return (x_t - s * eps) / a, eps

        return guided

    def sample_batch(self, x_T: torch.Tensor, cond: Mapping, sampler: dict, generator: torch.Generator | None,
                     use_ema: bool = True) -> torch.Tensor:
        sampler = dict(sampler)
        loop = {k: sampler.pop(k) for k in LOOP_KEYS if k in sampler}
        if not loop:
            return super().sample_batch(x_T, cond, sampler, generator, use_ema)
        if "x_known" in cond or "known" in cond:
            raise ValueError("loop guidance and completing a partly known sample cannot be combined")
        name, steps, opts, extra = split_sampler_config(sampler)
        den = self.denoiser(use_ema, cond, extra.get("guidance_scale", 1.0), clip=True)
        den = self.loop_guided(den, loop["loop_guidance"], loop["loop_frames"])
        return run_sampler(self.samplers()[name], den, x_T, self.schedule, steps, generator, opts)


class RendererModule(RunModule):
    """Trains a `papers.generative_image_dynamics.nets.Renderer` on batches ``{still, x (the frame), flow,
    weight}`` with an L1 loss (Sec. 5; module docstring)."""

    def __init__(self, net: torch.nn.Module, optimizer=None, lr_scheduler=None, seed: int = 0):
        super().__init__(optimizer, lr_scheduler, seed)
        self.net = net

    def training_loss(self, batch: dict, generator: torch.Generator):
        out = self.net(batch["still"], batch["flow"], batch["weight"])
        return (out - batch["x"]).abs().mean()

    def validation_step(self, batch, batch_idx):
        loss = self.training_loss(batch, None)
        self.log("val/loss", loss, batch_size=batch_size_of(batch))
        return loss
