"""Training objective of the LDM KL autoencoder (Rombach et al. 2022, Sec. 3.1 and App. G; the
``LPIPSWithDiscriminator`` loss of Esser et al. 2021, "Taming Transformers", Sec. 3.2, Eq. 4–7).

    L_AE = Σ_pixels |x - x̂| (+ w_p · LPIPS) / e^s + s     (s a learned log-variance, LDM's ``logvar``)
           + w_kl · KL(q(z|x) || N(0, I))
           + λ_adaptive · w_d · [step ≥ disc_start] · (-D(x̂))
    L_D  = [step ≥ disc_start] · hinge(D(x), D(x̂))

with pixel sums averaged over the batch (LDM's reduction; ``reduction="mean"`` averages over pixels instead)
and ``λ_adaptive = ‖∇_last L_rec‖ / (‖∇_last L_G‖ + 1e-4)`` at the decoder's last layer (Taming Eq. 7).

Pieces are plain functions (:func:`reconstruction_loss`, :func:`kl_loss`, :func:`hinge_d_loss`, ...) plus
:class:`AutoencoderLoss`, an ``nn.Module`` that owns the learned log-variance, the optional PatchGAN
:class:`PatchDiscriminator` (pix2pix, Isola et al. 2017) and the optional :class:`LPIPS` (Zhang et al.
2018), which loads only from local weight files. ``AutoencoderLoss`` returns *one* scalar that trains
autoencoder and discriminator together with a single optimiser: the generator term sees the
discriminator through detached parameters, and the discriminator term sees detached reconstructions, so
each part gets exactly the gradient of its own objective (no manual optimisation or second optimiser).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from shared.nn.autoencoder import DiagonalGaussian
from shared.nn.weights import load_state_dict_strict, read_state_dict

__all__ = [
    "reconstruction_loss",
    "kl_loss",
    "hinge_d_loss",
    "vanilla_d_loss",
    "generator_loss",
    "adaptive_weight",
    "PatchDiscriminator",
    "LPIPS",
    "AutoencoderLoss",
    "psnr",
]


def _reduce(per_pixel: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":  # LDM: sum over pixels, mean over the batch
        return per_pixel.reshape(per_pixel.shape[0], -1).sum(1).mean()
    if reduction == "mean":
        return per_pixel.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-pixel |x - x̂| (``l1``) or (x - x̂)² (``l2``), unreduced."""
    if kind == "l1":
        return (x - x_rec).abs()
    if kind == "l2":
        return (x - x_rec).pow(2)
    raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")


def kl_loss(posterior: DiagonalGaussian, reduction: str = "sum") -> torch.Tensor:
    """KL(q(z|x) || N(0, I)): summed over latent elements and averaged over the batch (``sum``, LDM) or
    averaged over latent elements too (``mean``)."""
    kl = posterior.kl()
    if reduction == "mean":
        return kl.mean() / posterior.mean[0].numel()
    return kl.mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Taming Eq. 7: balance the adversarial against the reconstruction gradient at ``last_layer``."""
    rec_g = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_g = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_g.norm() / (g_g.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def psnr(x: torch.Tensor, x_rec: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean PSNR (dB) over the batch for images in [-1, 1] (range 2)."""
    mse = (x - x_rec).pow(2).reshape(x.shape[0], -1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(data_range**2 / mse)).mean()


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (``NLayerDiscriminator``): 4×4 convs, stride 2 for ``n_layers`` layers, BatchNorm,
    LeakyReLU(0.2), a per-patch logit map. ``n_layers=3, ndf=64`` is LDM's; ``n_layers=1`` suits 8×8 input."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # pix2pix init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        if x.dim() == 5:
            x = x.transpose(1, 2).flatten(0, 1)  # frames as images
        return self.main(x)


class LPIPS(nn.Module):
    """LPIPS with a VGG-16 trunk (Zhang et al. 2018), from local files only.

    ``vgg_path``: torchvision's ``vgg16`` state dict (``vgg16-397923af.pth``; keys ``features.N.*``).
    ``lin_path``: the LPIPS linear heads (the ``lpips`` package's ``weights/v0.1/vgg.pth``; keys
    ``lin{0..4}.model.1.weight``). Inputs in [-1, 1]; grey images are repeated to RGB.
    """

    CHANNELS = (64, 128, 256, 512, 512)
    SLICES = (4, 9, 16, 23, 30)  # ends of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features

    def __init__(self, vgg_path: str | None, lin_path: str | None):
        super().__init__()
        missing = [
            n for n, p in (("vgg_path", vgg_path), ("lin_path", lin_path)) if not p or not Path(p).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"LPIPS needs local weight files; {', '.join(missing)} not found "
                f"(vgg_path={vgg_path!r}, lin_path={lin_path!r}); nothing is downloaded"
            )
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[: self.SLICES[-1]]  # VGG-16 conv trunk, no classifier
        state = read_state_dict(vgg_path)
        feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        load_state_dict_strict(self.features, feats, what=f"LPIPS VGG weights {vgg_path}")
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS])
        lin = read_state_dict(lin_path)
        for i, conv in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise KeyError(f"LPIPS heads {lin_path}: missing key {key}")
            conv.weight.data.copy_(lin[key])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def _feats(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, out, start = (x - self.shift) / self.scale, [], 0
        for end in self.SLICES:
            for layer in self.features[start:end]:
                h = layer(h)
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            start = end
        return out

    def forward(self, x, y):
        """Per-item distance, shape (B, 1, 1, 1)."""
        if x.dim() == 5:
            x, y = (z.transpose(1, 2).flatten(0, 1) for z in (x, y))
        return sum(
            lin((a - b).pow(2)).mean((2, 3), keepdim=True)
            for lin, a, b in zip(self.lins, self._feats(x), self._feats(y))
        )


class AutoencoderLoss(nn.Module):
    """The full objective; ``forward(x, x_rec, posterior, step, last_layer)`` → ``(loss, logs)``.

    Args:
        rec: ``l1`` or ``l2`` per-pixel reconstruction.
        reduction: ``sum`` (LDM: per-item sums, batch mean) or ``mean`` (per-element means).
        kl_weight: weight of the KL term (LDM's KL-f8: 1e-6 with ``sum``).
        learn_logvar: LDM's learned scalar log-variance ``s`` dividing the reconstruction term.
        logvar_init: its initial value.
        perceptual_weight, lpips_vgg_path, lpips_lin_path: LPIPS term (off when the weight is 0).
        disc_weight, disc_start, disc_factor, disc_loss: adversarial term; discriminator built from
            ``disc`` (kwargs of :class:`PatchDiscriminator`) when ``disc_weight > 0``.
        adaptive: use Taming's adaptive weight (needs ``last_layer`` in forward).
    """

    def __init__(
        self,
        rec: str = "l1",
        reduction: str = "sum",
        kl_weight: float = 1e-6,
        learn_logvar: bool = True,
        logvar_init: float = 0.0,
        perceptual_weight: float = 0.0,
        lpips_vgg_path: str | None = None,
        lpips_lin_path: str | None = None,
        disc_weight: float = 0.0,
        disc_start: int = 0,
        disc_factor: float = 1.0,
        disc_loss: str = "hinge",
        disc: dict | None = None,
        adaptive: bool = True,
    ):
        super().__init__()
        self.rec, self.reduction, self.kl_weight = rec, reduction, kl_weight
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=learn_logvar)
        self.perceptual_weight = perceptual_weight
        self.lpips = LPIPS(lpips_vgg_path, lpips_lin_path) if perceptual_weight > 0 else None
        self.disc_weight, self.disc_start, self.disc_factor, self.adaptive = (
            disc_weight,
            disc_start,
            disc_factor,
            adaptive,
        )
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        self.d_loss_fn = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.discriminator = PatchDiscriminator(**(disc or {})) if disc_weight > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        x_rec: torch.Tensor,
        posterior: DiagonalGaussian,
        step: int = 0,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_pixel = reconstruction_loss(x, x_rec, self.rec)
        logs = {"rec": per_pixel.mean().detach()}
        if self.lpips is not None:
            p = self.lpips(x, x_rec)
            logs["lpips"] = p.mean().detach()
            per_pixel = per_pixel + self.perceptual_weight * p.reshape(-1, *[1] * (per_pixel.dim() - 1))
        nll = _reduce(per_pixel / torch.exp(self.logvar) + self.logvar, self.reduction)
        kl = kl_loss(posterior, self.reduction)
        loss = nll + self.kl_weight * kl
        logs.update(nll=nll.detach(), kl=kl.detach(), logvar=self.logvar.detach())
        if self.discriminator is not None and step >= self.disc_start:
            disc = self.discriminator
            frozen = {k: p.detach() for k, p in disc.named_parameters()}
            g_loss = generator_loss(
                functional_call(disc, frozen, (x_rec,))
            )  # gradients reach the decoder only
            if self.adaptive and last_layer is not None and self.training and torch.is_grad_enabled():
                d_w = adaptive_weight(nll, g_loss, last_layer) * self.disc_weight
            else:
                d_w = torch.tensor(self.disc_weight, device=x.device)
            d_loss = self.d_loss_fn(disc(x.detach()), disc(x_rec.detach()))  # gradients reach D only
            loss = loss + self.disc_factor * (d_w * g_loss + d_loss)
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), d_weight=d_w.detach())
        return loss, logs
