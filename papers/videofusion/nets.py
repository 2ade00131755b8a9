"""VideoFusion's two-network noise predictor (Luo et al., CVPR 2023, Sec. 3-4).

The noise of frame ``i`` is decomposed as ``eps^i = sqrt(lambda^i) b + sqrt(1 - lambda^i) r^i`` — a *base* noise ``b``
shared by every frame and a per-frame *residual* ``r^i`` (``shared.diffusion.noise_priors.BaseResidualNoise``; the key
frame ``ceil(N/2)`` has ``lambda = 1``, its noise *is* the base). Two generators predict the two parts:

* the **base generator** ``z_b`` — an *image* model (initialised from a pretrained one) — estimates ``b`` from the
  key frame alone: ``b̂ = z_b(x_t^key, t)`` (Eq. 8);
* the **residual generator** ``z_r`` — a video model — estimates the residuals from the frames with the base
  component removed, ``r̂^i = z_r(x_t^i - sqrt(1 - ᾱ_t) sqrt(lambda^i) b̂, t)^i`` (Eq. 9);
* the prediction of frame ``i``'s noise is ``ε̂^i = sqrt(lambda^i) b̂ + sqrt(1 - lambda^i) r̂^i``; training regresses it
  on ``eps^i`` drawn from the decomposed prior (the plain eps-loss of the method layer with ``noise_prior`` set),
  and sampling starts from that prior.

:class:`VideoFusionNet` is that predictor as one network ``f(x_t, t_net, **conditions) -> eps_hat`` for an eps-
parameterised :class:`shared.methods.diffusion_module.DiffusionModule` on a :class:`DiscreteVP` schedule (whose
network time is the step index, so ``sqrt(1 - ᾱ_t)`` is known from ``t_net``). Conditions (labels, text) reach both
generators.

**v-prediction (our adaptation, not in the paper).** An image stage trained with v-prediction on a continuous schedule
whose network time is ``1000 t`` (the Sprites stage, ``conf/image_stage/sprites16.yaml``) gives ``prediction="v"``:
the base generator's output ``v_b`` is the key frame's ``v``; the base noise it implies, ``b̂ = sigma x_t^key +
alpha v_b`` (exact, no division), is removed from the residual generator's input as in Eq. 9, and frame ``i``'s
prediction is combined in the same parameterisation, ``v̂^i = sqrt(lambda^i) v_b + sqrt(1 - lambda^i) v_r^i``. The key
frame is still the image model's prediction alone and the residual generator still sees base-removed frames; the
combination is linear in the network outputs (the residual generator absorbs the difference to the eps-space
combination, which would need a division by ``alpha``, unbounded at the noisy end of the schedule). That is
``combine="v"``, the committed ``sprites_claim``'s design; it is *not* exact: with both generators exact for their own
inputs the sum is not frame ``i``'s ``v`` (at high noise its clean-frame estimate is about ``0.71 (x0^key + x0^i)``,
two sprites at half brightness), so the fine-tune starts far from the image model.

``combine="eps_x0"`` (``sprites_claim_v2``) is exact and keeps the paper's eps-space combination without dividing by
``alpha``: the base-removed frames ``y^i = alpha x0^i + sigma sqrt(1 - lambda) r^i`` are a VP input of a *lower* noise
level, so they are rescaled to it (``log-SNR + log 1/(1 - lambda)``, time ``t_r``, ``y~ = (alpha_r / alpha) y``) before
the residual generator — which starts as the image model — sees them; its ``v_r`` gives ``r̂ = sigma_r y~ + alpha_r v_r``
and ``x̂0^i = alpha_r y~ - sigma_r v_r``; the base gives ``b̂`` and the key frame's ``x̂0``; then ``ε̂^i = sqrt(lambda^i)
b̂ + sqrt(1 - lambda^i) r̂^i`` (the paper's combination) and ``v̂^i = alpha ε̂^i - sigma x̂0^i``, which is frame ``i``'s
``v`` whenever both generators are exact (tests/test_videofusion.py). The rescaling and the re-timing are our
adaptation for a residual generator initialised from an image model (the paper feeds ``t``); they need a schedule
with an inverse log-SNR (``CosineVP.time_of_logsnr``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from shared.diffusion.noise_priors import BaseResidualNoise
from shared.diffusion.schedules import DiscreteVP, Schedule
from shared.nn.build import buildable
from shared.nn.video import inflated_image_unet

__all__ = ["VideoFusionNet", "videofusion_net"]


PREDICTIONS = ("eps", "v")
COMBINES = ("v", "eps_x0")


def _time_from_net_time(schedule: Schedule):
    """``t_net -> t`` of ``schedule`` (the network only receives ``net_time(t)``), or None when not invertible here."""
    if isinstance(schedule, DiscreteVP):
        return lambda t_net: t_net
    if type(schedule).net_time is Schedule.net_time:   # the default network time 1000 t (e.g. CosineVP)
        return lambda t_net: t_net / 1000.0
    return None


class VideoFusionNet(nn.Module):
    def __init__(self, base: nn.Module, residual: nn.Module, prior: BaseResidualNoise, schedule: Schedule,
                 prediction: str = "eps", combine: str = "v"):
        super().__init__()
        self._time = _time_from_net_time(schedule)
        if self._time is None:
            raise ValueError(f"VideoFusionNet needs a DiscreteVP schedule (network time = step) or one whose network "
                             f"time is 1000 t, got {type(schedule).__name__}")
        if not isinstance(prior, BaseResidualNoise):
            raise ValueError(f"VideoFusionNet needs a BaseResidualNoise prior, got {type(prior).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"VideoFusionNet prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
        if combine not in COMBINES:
            raise ValueError(f"VideoFusionNet combine must be one of {list(COMBINES)}, got {combine!r}")
        if combine == "eps_x0" and (prediction != "v" or not hasattr(schedule, "time_of_logsnr")):
            raise ValueError(f"VideoFusionNet combine='eps_x0' needs prediction='v' and a schedule with an inverse "
                             f"log-SNR (CosineVP), got prediction={prediction!r}, {type(schedule).__name__}")
        self.base, self.residual, self.prior, self.schedule = base, residual, prior, schedule
        self.prediction, self.combine = prediction, combine
        self.in_channels = getattr(base, "in_channels", None)
        self.num_classes = getattr(base, "num_classes", None)
        self.context_dim = getattr(base, "context_dim", None)

    @property
    def null_label(self):
        return getattr(self.base, "null_label", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"VideoFusionNet predicts the noise of videos (B, C, T, H, W), got {tuple(x.shape)}")
        frames = x.shape[2]
        key = self.prior.key_index(frames)
        if key is None:
            raise ValueError("VideoFusion needs a key frame (prior.key_frame) for its base generator")
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        b_out = self.base(x[:, :, key], t, **cond)[:, :, None]                 # (B, C, 1, H, W)
        lam = self.prior.lambdas(frames).to(x.device, x.dtype).view(1, 1, -1, 1, 1)
        alpha, sigma = self.schedule.alpha_sigma(self._time(t))
        alpha, sigma = (a.to(x.device, x.dtype).view(-1, 1, 1, 1, 1) for a in (alpha, sigma))
        # the base noise b_hat (Eq. 8): the output itself (eps), or the eps its v implies (eps = sigma x + alpha v)
        b_hat = b_out if self.prediction == "eps" else sigma * x[:, :, key:key + 1] + alpha * b_out
        y = x - sigma * lam.sqrt() * b_hat                                      # Eq. 9: base removed
        if self.combine == "eps_x0":
            return self._eps_x0(x, y, t, b_hat, b_out, key, lam, alpha, sigma, cond)
        r_out = self.residual(y, t, **cond)
        return lam.sqrt() * b_out + (1 - lam).sqrt() * r_out

    def _eps_x0(self, x, y, t, b_hat, v_b, key, lam, alpha, sigma, cond):
        """``combine="eps_x0"`` (module docstring): the residual generator at the base-removed frames' own noise level,
        the paper's eps combination, ``v̂ = alpha ε̂ - sigma x̂0``."""
        share = min(float(self.prior.lam), 1.0 - 1e-6)                        # lambda of every non-key frame
        logsnr_r = self.schedule.logsnr(self._time(t)).to(x.device, x.dtype) - torch.log1p(
            torch.tensor(-share, dtype=x.dtype, device=x.device))
        t_r = self.schedule.time_of_logsnr(logsnr_r)
        alpha_r, sigma_r = (a.to(x.device, x.dtype).view(-1, 1, 1, 1, 1) for a in self.schedule.alpha_sigma(t_r))
        y_r = (alpha_r / alpha) * y
        v_r = self.residual(y_r, self.schedule.net_time(t_r), **cond)
        r_hat = sigma_r * y_r + alpha_r * v_r
        x0_hat = alpha_r * y_r - sigma_r * v_r
        x0_key = alpha * x[:, :, key:key + 1] - sigma * v_b
        is_key = torch.zeros_like(lam, dtype=torch.bool)
        is_key[:, :, key] = True
        x0_hat = torch.where(is_key, x0_key, x0_hat)
        eps_hat = lam.sqrt() * b_hat + (1 - lam).sqrt() * r_hat
        return alpha * eps_hat - sigma * x0_hat


@buildable
def videofusion_net(image: nn.Module, prior: BaseResidualNoise, schedule: Schedule, weights: str | None = None,
                    temporal=None, insert: str = "resblock", train_base: bool = True,
                    prediction: str = "eps", combine: str = "v") -> VideoFusionNet:
    """Both generators from one image U-Net config ``image`` (its trained weights from ``weights``): the base is the
    image model itself, the residual generator a copy inflated with zero-initialised temporal attention
    (:func:`shared.nn.video.inflated_image_unet`). ``train_base=False`` freezes the base generator; ``prediction`` is
the module's (``"eps"`` or ``"v"``), ``combine`` how the two generators' outputs make frame ``i``'s (``"v"`` or
    ``"eps_x0"``, see the module docstring)."""
    if weights:
        from shared.nn.weights import load_state_dict_strict, read_state_dict

        load_state_dict_strict(image, read_state_dict(weights), what=f"image U-Net weights {weights}")
    residual = inflated_image_unet(copy.deepcopy(image), temporal, insert=insert, freeze=False)
    image.requires_grad_(bool(train_base))
    return VideoFusionNet(image, residual, prior, schedule, prediction, combine)
