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
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from shared.diffusion.noise_priors import BaseResidualNoise
from shared.diffusion.schedules import DiscreteVP
from shared.nn.build import buildable
from shared.nn.video import inflated_image_unet

__all__ = ["VideoFusionNet", "videofusion_net"]


class VideoFusionNet(nn.Module):
    def __init__(self, base: nn.Module, residual: nn.Module, prior: BaseResidualNoise, schedule: DiscreteVP):
        super().__init__()
        if not isinstance(schedule, DiscreteVP):
            raise ValueError(f"VideoFusionNet needs a DiscreteVP schedule (network time = step), got "
                             f"{type(schedule).__name__}")
        if not isinstance(prior, BaseResidualNoise):
            raise ValueError(f"VideoFusionNet needs a BaseResidualNoise prior, got {type(prior).__name__}")
        self.base, self.residual, self.prior, self.schedule = base, residual, prior, schedule
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
        b_hat = self.base(x[:, :, key], t, **cond)[:, :, None]                 # (B, C, 1, H, W)
        lam = self.prior.lambdas(frames).to(x.device, x.dtype).view(1, 1, -1, 1, 1)
        _, sigma = self.schedule.alpha_sigma(t)
        sigma = sigma.to(x.dtype).view(-1, 1, 1, 1, 1)
        r_hat = self.residual(x - sigma * lam.sqrt() * b_hat, t, **cond)
        return lam.sqrt() * b_hat + (1 - lam).sqrt() * r_hat


@buildable
def videofusion_net(image: nn.Module, prior: BaseResidualNoise, schedule: DiscreteVP, weights: str | None = None,
                    temporal=None, insert: str = "resblock", train_base: bool = True) -> VideoFusionNet:
    """Both generators from one image U-Net config ``image`` (its trained weights from ``weights``): the base is the
    image model itself, the residual generator a copy inflated with zero-initialised temporal attention
    (:func:`shared.nn.video.inflated_image_unet`). ``train_base=False`` freezes the base generator."""
    if weights:
        from shared.nn.weights import load_state_dict_strict, read_state_dict

        load_state_dict_strict(image, read_state_dict(weights), what=f"image U-Net weights {weights}")
    residual = inflated_image_unet(copy.deepcopy(image), temporal, insert=insert, freeze=False)
    image.requires_grad_(bool(train_base))
    return VideoFusionNet(image, residual, prior, schedule)
