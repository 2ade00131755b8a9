"""Progressive distillation (Salimans & Ho, ICLR 2022).

A student initialised from the teacher learns to do in one deterministic DDIM step what the teacher does in two
(Algorithm 2). For a student step ``t -> t''`` through the teacher's ``t -> t' -> t''``, the target is the data
prediction that makes *one* DDIM step land on the teacher's two-step result ``z''`` (Sec. 3, Eq. 8):

    x~ = (z'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

and the loss is ``w(lambda_t) ||x~ - x_hat_student(z_t)||^2`` with the "truncated SNR" weight ``max(SNR, 1)``
(Sec. 4; ``weighting: snr_trunc``) or ``SNR + 1`` (``snr_plus_one``). Rounds halve the number of steps;
the student of one round is the teacher of the next.

Parameterisation: the network is the EDM-preconditioned one (:mod:`shared.diffusion.edm`); with ``sigma_data = 1``
that wrapper *is* the paper's v-parameterisation in VE coordinates (network output = -v), with
``sigma_data = 0.5`` (the shared
teacher's) a rescaled v. Times: the student's ``N`` steps sit on the nested Karras grid
(:func:`shared.diffusion.edm.nested_grid`) instead of the paper's uniform grid in cosine time, so each halving
keeps every other teacher time exactly as in the paper.
"""
from __future__ import annotations

import torch

from shared.diffusion.edm import nested_grid
from shared.diffusion.schedules import Schedule, _bcast
from shared.methods.edm_module import EDMModule, TeacherMixin, init_from_checkpoint

WEIGHTINGS = ("snr_trunc", "snr_plus_one", "edm")


def pd_target(z_t: torch.Tensor, z_s: torch.Tensor, alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """Salimans & Ho Eq. 8 (any schedule): the ``x0`` whose single DDIM step from ``(z_t, t)`` reaches ``z_s``."""
    r = _bcast(sigma_s / sigma_t, z_t)
    return (z_s - r * z_t) / (_bcast(alpha_s, z_t) - r * _bcast(alpha_t, z_t))


def ddim_step(denoise, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One deterministic DDIM step ``t -> s`` with per-sample times (``s`` may reach the clean end)."""
    x0, eps = denoise(z, t)
    a_s, s_s = schedule.alpha_sigma(s)
    return _bcast(a_s, z) * x0 + _bcast(s_s, z) * eps


class ProgressiveDistillation(TeacherMixin, EDMModule):
    """One halving round: the teacher samples with ``teacher_steps`` steps, the student learns
    ``teacher_steps // 2``."""

    def __init__(self, net, schedule, teacher_ckpt: str | None = None, teacher_steps: int = 2,
                 weighting: str = "snr_trunc", init_from_teacher: bool = True, **kwargs):
        super().__init__(net, schedule, **kwargs)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if teacher_steps < 2 or teacher_steps % 2:
            raise ValueError(f"teacher_steps must be an even number >= 2, got {teacher_steps}")
        self.teacher_ckpt, self.teacher_steps, self.weighting = teacher_ckpt, int(teacher_steps), weighting
        if teacher_ckpt and init_from_teacher:
            init_from_checkpoint(self, teacher_ckpt)

    @property
    def student_steps(self) -> int:
        return self.teacher_steps // 2

    def teacher_grid(self) -> torch.Tensor:
        """The teacher's ``N`` sigmas followed by the clean end 0 (``N + 1`` values, descending)."""
        g = nested_grid(self.schedule, self.teacher_steps, device=self.device)
        return torch.cat([g, g.new_zeros(1)])

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.weighting == "edm":
            return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        snr = 1.0 / sigma**2          # alpha = 1 on the VE schedule (= alpha^2 / sigma^2 of the VP picture)
        return snr.clamp_min(1.0) if self.weighting == "snr_trunc" else snr + 1.0

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x0 = batch["x"]
        b = x0.shape[0]
        grid = self.teacher_grid()
        k = torch.randint(0, self.student_steps, (b,), generator=generator).to(x0.device)
        t, t_mid, t_end = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a_t, s_t = self.schedule.alpha_sigma(t)
        z = _bcast(a_t, x0) * x0 + _bcast(s_t, x0) * eps
        with torch.no_grad():
            den = self.teacher_denoiser()
            z_mid = ddim_step(den, z, t, t_mid, self.schedule)
            z_end = ddim_step(den, z_mid, t_mid, t_end, self.schedule)
            a_e, s_e = self.schedule.alpha_sigma(t_end)
            target = pd_target(z, z_end, a_t, s_t, a_e, s_e)
        pred = self.net.denoise_sigma(z, t)
        per = ((pred - target) ** 2).flatten(1).mean(1)
        return (self.loss_weight(t) * per).mean()

    @torch.no_grad()
    def sample_steps(self, n: int, steps: int | None = None, generator=None, x_T=None) -> torch.Tensor:
        """DDIM on the nested grid with ``steps`` (default: this round's student steps)."""
        steps = steps or self.student_steps
        return self.sample(n, x_T=x_T, generator=generator,
                           sampler={"name": "ddim", "steps": steps, "times": nested_grid(self.schedule, steps)})
