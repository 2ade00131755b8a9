"""DDPM — Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, NeurIPS 2020).

The forward process ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` (Eq. 4) with T = 1000
linear betas; the network predicts the noise ``eps`` and is trained with

* ``L_simple = E ||eps - eps_theta(x_t, t)||^2`` (Eq. 14, ``loss_weighting: simple``), or
* the true variational bound's weighting of the same error (Eq. 12, ``loss_weighting: vlb``;
  see :mod:`shared.diffusion.losses` for how it is normalised),

and sampled with T ancestral steps (Algorithm 2, ``shared.diffusion.samplers.ddpm_sample``) with
``sigma_t^2 = beta_t`` or the posterior ``beta-tilde_t``. Everything is the shared core; this module
only names the paper's choices, which live in ``experiments/ddpm/*.yaml``.
"""
from __future__ import annotations

from shared.methods.diffusion_module import DiffusionModule


class DDPM(DiffusionModule):
    """DDPM's objective and sampler: the base diffusion module with eps-prediction on a DiscreteVP schedule."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prediction", "eps")
        super().__init__(*args, **kwargs)
        if self.prediction != "eps":
            raise ValueError("DDPM predicts eps (Ho et al. Eq. 11); use the base DiffusionModule for other targets")
