"""DiT — Scalable Diffusion Models with Transformers (Peebles & Xie, ICCV 2023).

The network is :class:`shared.nn.transformer.DiT`; this module is the paper's *training objective and sampler*
around it (Sec. 3.1 and 4, "Training" / "Diffusion"):

* class-conditional eps-prediction on DDPM's linear schedule (T = 1000, betas 1e-4..0.02) with label dropout
  (``cond_drop_prob``, 0.1 in the paper) for classifier-free guidance;
* ``learn_sigma``: the network also outputs ``v`` and the covariance ``Sigma_theta`` is Improved DDPM's
  interpolation (Nichol & Dhariwal 2021, Eq. 15); the loss is the hybrid ``L_simple + lambda L_vlb`` (IDDPM
  Eq. 16) where ``L_vlb`` sees the predicted mean through a *stop-gradient*, so only ``v`` learns from it
  (IDDPM
  Sec. 3.1). ``vlb_weight`` multiplies the per-timestep KL term in bits per dimension — the official code's
  ``loss = mse + vb`` is ``vlb_weight = 1`` (= IDDPM's ``lambda = 0.001`` times ``T = 1000`` terms);
* sampling: ancestral steps with the learned variance (``sampler.name: ddpm``; the paper uses 250 steps)
  through
  :func:`shared.diffusion.samplers.ddpm_learned_variance_sample`, or any shared sampler on the eps channels;
  CFG (Sec. 3.1, "Classifier-free guidance") guides the eps channels and keeps the conditional ``v``;
* latent space: the shared wrapper ``shared.methods.latent_module.latent_diffusion(base=DiTModule)`` encodes
  batches with a frozen KL autoencoder (the Stable Diffusion VAE from a local file at paper scale, a small one
  trained on the digits in ``experiments/dit/digits_latent.yaml``) and decodes samples; without it DiT runs
  in pixel space (the digits scaling / ablation / guidance checks).
"""

from __future__ import annotations

import math

import torch

from shared.diffusion.guidance import guidance_weight, is_unit_guidance
from shared.diffusion.parameterization import make_denoiser
from shared.diffusion.samplers import ddpm_learned_variance_sample
from shared.diffusion.schedules import DiscreteVP, _bcast
from shared.methods.diffusion_module import DiffusionModule


# ------------------------------------------------------------------ Gaussian terms of the VLB (IDDPM / DDPM
# App.)
def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), element-wise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to ``bins`` levels under N(means, e^{2 log_scales}) (DDPM Eq. 13,
    the decoder term ``L_0``); the end bins extend to -inf / +inf."""
    half = 1.0 / (bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _std_normal_cdf(inv_std * (centered + half))
    cdf_min = _std_normal_cdf(inv_std * (centered - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class LearnedVarianceTerms:
    """Per-step tables (float64) of a :class:`DiscreteVP` chain for the learned-variance VLB."""

    def __init__(self, schedule: DiscreteVP):
        if not isinstance(schedule, DiscreteVP):
            raise ValueError("learn_sigma (IDDPM's hybrid loss) is defined on a DiscreteVP schedule")
        betas = schedule.betas
        acp = schedule.alphas_cumprod
        acp_prev = torch.cat([torch.ones(1, dtype=acp.dtype), acp[:-1]])
        self.betas = betas
        self.post_var = betas * (1 - acp_prev) / (1 - acp)
        # beta-tilde_0 = 0: IDDPM clips its log to the value at t = 1
        self.post_logvar_clipped = torch.log(torch.cat([self.post_var[1:2], self.post_var[1:]]))
        self.coef_x0 = betas * acp_prev.sqrt() / (1 - acp)
        self.coef_xt = (1 - acp_prev) * (1 - betas).sqrt() / (1 - acp)

    def gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _bcast(getattr(self, name).to(like.device)[t.long()].to(like.dtype), like)


def vlb_terms_bits(
    terms: LearnedVarianceTerms,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Per-sample ``L_{t-1}`` (KL of posterior to model, t > 0) or ``L_0`` (decoder NLL, t = 0), mean over
    dimensions, in bits (IDDPM Eq. 4-6 with Eq. 15's covariance)."""
    true_mean = terms.gather("coef_x0", t, x0) * x0 + terms.gather("coef_xt", t, x0) * x_t
    true_logvar = terms.gather("post_logvar_clipped", t, x0)
    model_mean = terms.gather("coef_x0", t, x0) * x0_hat + terms.gather("coef_xt", t, x0) * x_t
    frac = (v + 1) / 2
    model_logvar = frac * torch.log(terms.gather("betas", t, x0)) + (1 - frac) * true_logvar
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(
        1
    ) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


# ------------------------------------------------------------------ the module
class DiTModule(DiffusionModule):
    """DiT's objective and sampler on the shared diffusion module (see the module docstring).

    Extra args:
        vlb_weight: weight of the per-step VLB term when the net has ``learn_sigma`` (official code: 1).
        learned_variance_sampling: sample ``ddpm`` with the learned variance (else the fixed ``variance``
        option).

    Latent DiT = this module inside the shared latent wrapper (``shared.methods.latent_module.latent_diffusion``
    with ``base: papers.dit.module.DiTModule``): batches are encoded before :meth:`training_loss`, samples
    decoded after :meth:`sample`. On its own the module works on whatever tensors it is given (pixels).
    """

    def __init__(
        self,
        *args,
        vlb_weight: float = 1.0,
        learned_variance_sampling: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("prediction", "eps")
        super().__init__(*args, **kwargs)
        self.learn_sigma = bool(getattr(self.net, "learn_sigma", False))
        if self.learn_sigma and self.prediction != "eps":
            raise ValueError("learn_sigma splits the output into (eps, v): use prediction=eps")
        self.vlb_weight, self.learned_variance_sampling = vlb_weight, learned_variance_sampling
        self.vlb = LearnedVarianceTerms(self.schedule) if self.learn_sigma else None

    # ------------------------------------------------------------------ training
    def objective(self, x0: torch.Tensor, generator: torch.Generator, **kw):
        if not self.learn_sigma:
            return super().objective(x0, generator, **kw)
        t = self.schedule.sample_t(x0.shape[0], generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x_t = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
        eps_hat, v = self.net(x_t, self.schedule.net_time(t), **kw).chunk(2, dim=1)
        mse = ((eps_hat - eps) ** 2).flatten(1).mean(1)  # L_simple (DDPM Eq. 14)
        # stop-gradient on the mean: L_vlb only trains Sigma (IDDPM Sec. 3.1)
        x0_hat = (x_t - _bcast(sigma, x0) * eps_hat.detach()) / _bcast(alpha, x0)
        vb = vlb_terms_bits(self.vlb, x0, x_t, t, x0_hat, v)
        self.note(mse=mse.mean(), vb=vb.mean())
        return (mse + self.vlb_weight * vb).mean()

    # ------------------------------------------------------------------ sampling
    def guided_network(self, cond_kw: dict, uncond_kw: dict, guidance_scale, use_ema: bool = True):
        """``f(x, t_net) -> output`` with CFG on the eps channels; with ``learn_sigma`` the conditional ``v`` is
        kept (the official ``forward_with_cfg`` guides only the first 3 of 4 latent channels — a quirk we do not
        copy)."""
        if not self.learn_sigma or not cond_kw or is_unit_guidance(guidance_scale):
            return super().guided_network(cond_kw, uncond_kw, guidance_scale, use_ema)
        net = self.sampling_net(use_ema)

        def f(x: torch.Tensor, t_net: torch.Tensor, **kw) -> torch.Tensor:
            both = {k: torch.cat([cond_kw[k], uncond_kw[k]]) for k in cond_kw}
            out = net(torch.cat([x, x]), torch.cat([t_net, t_net]), **both, **kw)
            (eps_c, v_c), (eps_u, _) = (o.chunk(2, dim=1) for o in out.chunk(2))
            return torch.cat([eps_u + guidance_weight(guidance_scale, x) * (eps_c - eps_u), v_c], dim=1)

        return f

    def denoiser(self, use_ema: bool = True, cond=None, guidance_scale=1.0, clip: bool = True, **net_kwargs):
        """``denoise(x_t, t) -> (x0, eps)`` on the eps channels (what every shared sampler takes)."""
        if not self.learn_sigma:
            return super().denoiser(use_ema, cond, guidance_scale, clip, **net_kwargs)
        f = self._guided(use_ema, cond, guidance_scale)
        return make_denoiser(lambda x, t, **kw: f(x, t, **kw).chunk(2, dim=1)[0], self.schedule, self.prediction,
                             clip_x0=self.clip_x0 if clip else None, **net_kwargs)

    def _guided(self, use_ema, cond, guidance_scale):
        guided = not is_unit_guidance(guidance_scale)
        cond_kw, uncond_kw = self.conditions.guidance_pair(self.prepare_cond(cond or {}), self.device, guided)
        return self.guided_network(cond_kw, uncond_kw, guidance_scale, use_ema)

    def denoiser_v(self, use_ema: bool = True, cond=None, guidance_scale=1.0):
        """``denoise_v(x_t, t) -> (x0, eps, v)`` for :func:`ddpm_learned_variance_sample`."""
        f = self._guided(use_ema, cond, guidance_scale)

        def denoise_v(x_t, t):
            t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
            alpha, sigma = self.schedule.alpha_sigma(t)
            eps, v = f(x_t, self.schedule.net_time(t)).chunk(2, dim=1)
            x0 = (x_t - _bcast(sigma, x_t) * eps) / _bcast(alpha, x_t)
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
                eps = (x_t - _bcast(alpha, x_t) * x0) / _bcast(sigma, x_t)
            return x0, eps, v

        return denoise_v

    def sample_batch(self, x_T, cond, sampler, generator, use_ema=True):
        if not (self.learn_sigma and self.learned_variance_sampling and sampler["name"] == "ddpm"):
            return super().sample_batch(x_T, cond, sampler, generator, use_ema)
        den = self.denoiser_v(use_ema, cond, sampler.get("guidance_scale", 1.0))
        return ddpm_learned_variance_sample(den, x_T, self.schedule, sampler["steps"], generator=generator)
