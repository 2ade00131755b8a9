"""Knowledge distillation of a diffusion sampler (Luhman & Luhman 2021, "Denoising Student").

The deterministic DDIM sampler of a trained diffusion model is a map ``x_T -> x_0``. The student ``F_student``
(the teacher's architecture, initialised from the teacher, Sec. 3) learns that map in one evaluation from a
dataset of teacher pairs ``{(x_T, DDIM_teacher(x_T))}`` drawn once before training (Sec. 3, Algorithm 1); the
distillation loss reduces to the mean-squared error ``E ||F_student(x_T) - DDIM_teacher(x_T)||^2`` (Eq. 6-7).

Here the teacher is the EDM-preconditioned model of :mod:`shared.methods.edm_module` and the student is the same
preconditioned network evaluated at ``sigma_max`` (``x_T = sigma_max z``), so one-step sampling is the ordinary
``ddim`` sampler with ``steps = 1``.
"""
from __future__ import annotations

import torch

from shared.diffusion.edm import nested_grid
from shared.diffusion.samplers import ddim_sample
from shared.methods.edm_module import EDMModule, TeacherMixin, init_from_checkpoint


class KnowledgeDistillation(TeacherMixin, EDMModule):
    def __init__(self, net, schedule, teacher_ckpt: str | None = None, num_pairs: int = 4096,
                 teacher_steps: int = 32, pair_seed: int = 0, pair_batch: int = 512,
                 init_from_teacher: bool = True, distill_loss: str = "mse", **kwargs):
        super().__init__(net, schedule, **kwargs)
        if distill_loss not in ("mse", "l1"):
            raise ValueError(f"distill_loss must be 'mse' or 'l1', got {distill_loss!r}")
        self.teacher_ckpt, self.num_pairs, self.teacher_steps = teacher_ckpt, int(num_pairs), int(teacher_steps)
        self.pair_seed, self.pair_batch, self.distill_loss = int(pair_seed), int(pair_batch), distill_loss
        if teacher_ckpt and init_from_teacher:
            init_from_checkpoint(self, teacher_ckpt)
        self.pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def make_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_pairs`` noise/sample pairs of the teacher's deterministic DDIM (``teacher_steps`` steps)."""
        g = torch.Generator().manual_seed(self.pair_seed)
        z = torch.randn((self.num_pairs, *self.sample_shape), generator=g) * self.schedule.t_max
        den = self.teacher_denoiser()
        times = nested_grid(self.schedule, self.teacher_steps)
        xs = [ddim_sample(den, z[i:i + self.pair_batch].to(self.device), self.schedule, times=times).cpu()
              for i in range(0, self.num_pairs, self.pair_batch)]
        return z, torch.cat(xs)

    def on_fit_start(self):
        if self.pairs is None:
            self.pairs = self.make_pairs()

    def student_x0(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.denoise_sigma(z, torch.full((z.shape[0],), self.schedule.t_max, device=z.device))

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if self.pairs is None:
            self.pairs = self.make_pairs()
        b = batch["x"].shape[0]
        idx = torch.randint(0, self.num_pairs, (b,), generator=generator)
        z, x = self.pairs[0][idx].to(self.device), self.pairs[1][idx].to(self.device)
        err = self.student_x0(z) - x
        return (err**2).mean() if self.distill_loss == "mse" else err.abs().mean()
