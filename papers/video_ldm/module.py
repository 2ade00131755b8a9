"""Video LDM — Align your Latents: High-Resolution Video Synthesis with Latent Diffusion Models
(Blattmann, Rombach, Ling, Dockhorn, Kim, Fidler & Kreis, CVPR 2023).

* Image LDM pre-training (Sec. 3): a latent diffusion model (``shared.diffusion.latent``) whose U-Net sees
  single frames. :class:`VideoLDM` with ``frames_as_images=True`` trains it on the frames of video clips
  (every frame its own noise level and noise, i.e. an image model).
* Temporal alignment (Sec. 3.1, Eq. 2): :func:`video_net` inflates the trained image U-Net with
  alpha-blended temporal layers (``shared.nn.temporal_mix.video_ldm_temporal``: a temporal convolution and
  a temporal attention after every spatial stage) and freezes every 2D weight; :class:`VideoLDM` with
  ``frames_as_images=False`` then trains only the temporal layers on latent clips with the same denoising
  objective. The same temporal layers drop into an image LDM fine-tuned on another domain
  (:func:`swap_spatial_weights`, Sec. 4.1.2 / Fig. 6: "DreamBooth" personalisation).
* Temporal decoder fine-tuning (Sec. 3.1.1): :class:`TemporalDecoderModule` trains the temporal layers of
  a :class:`shared.nn.temporal_mix.TemporalDecoder` on video reconstructions with the encoder frozen (the
  paper adds a patch-wise 3D-conv discriminator; see README "Deviations").

Stages hand weights over as safetensors files (``image_weights``, ``weights_path``) so a chain of stages
works from a config alone. The numbers (sizes, steps, optimiser) live in ``experiments/video_ldm/*.yaml``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from shared.methods.base import RunModule
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.build import buildable
from shared.nn.temporal_mix import TemporalDecoder
from shared.nn.video import load_temporal_state_dict, temporal_state_dict, video_from_image
from shared.nn.weights import load_state_dict_strict, read_state_dict


class VideoLDM(DiffusionModule):
    """The diffusion module of both Video LDM stages (wrap it with ``latent_diffusion`` for latents).

    ``frames_as_images``: a video batch (B, C, T, H, W) is trained as B·T independent images (the image LDM
    stage); otherwise as B videos (the temporal stage; only ``requires_grad`` parameters train, so a
    frozen-2D net trains its temporal layers alone).
    """

    def __init__(self, *args, frames_as_images: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames_as_images = frames_as_images

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x = batch["x"]
        if self.frames_as_images and x.dim() == 5:
            frames = {"x": rearrange(x, "b c t h w -> (b t) c h w")}
            if "caption" in batch:  # every frame keeps its clip's caption
                frames["caption"] = [c for c in batch["caption"] for _ in range(x.shape[2])]
            batch = frames
        return super().training_loss(batch, generator)


def load_image_net(net: nn.Module, weights: str | Path | None) -> nn.Module:
    """Load an image U-Net's weights (a safetensors/torch state dict of the bare net) strictly."""
    if weights:
        load_state_dict_strict(net, read_state_dict(weights), what=f"image U-Net weights {weights}")
    return net


@buildable
def video_net(image: nn.Module, temporal: Callable[[int], nn.Module], image_weights: str | None = None,
              insert: str = "resblock", where: Sequence[str] = ("input", "middle", "output"),
              freeze: bool = True, temporal_weights: str | None = None) -> nn.Module:
    """The Video LDM U-Net: ``image`` (a :class:`shared.nn.unet.UNet`, its trained weights loaded from
    ``image_weights``) with ``temporal`` blocks after every spatial stage, 2D weights frozen (Sec. 3.1).
    ``temporal_weights`` loads a saved set of temporal layers (:func:`temporal_state_dict`)."""
    load_image_net(image, image_weights)
    net = video_from_image(image, temporal, insert=insert, where=where, freeze=freeze, copy=False)
    if temporal_weights:
        load_temporal_state_dict(net, read_state_dict(temporal_weights))
    return net


def swap_spatial_weights(video: nn.Module, image_state: dict[str, torch.Tensor]) -> nn.Module:
    """Put another image model's 2D weights (e.g. a domain fine-tune) under the temporal layers of an
    inflated ``video`` net, in place: every non-temporal key must be present, temporal keys are kept."""
    temporal = set(temporal_state_dict(video))
    own = {k for k in video.state_dict() if k not in temporal}
    missing, unexpected = sorted(own - set(image_state)), sorted(set(image_state) - own)
    if missing or unexpected:
        raise ValueError(f"image weights do not match the video net's 2D part: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    video.load_state_dict(image_state, strict=False)
    return video


@buildable
def temporal_decoder(autoencoder: nn.Module, make_temporal: Callable[[int], nn.Module] | None = None,
                     freeze: bool = True, weights_path: str | None = None) -> TemporalDecoder:
    """Hydra target: a :class:`TemporalDecoder` around ``autoencoder`` (optionally its saved weights)."""
    dec = TemporalDecoder(autoencoder, make_temporal, freeze)
    if weights_path:
        load_state_dict_strict(dec, read_state_dict(weights_path), what=f"temporal decoder {weights_path}")
    return dec


class TemporalDecoderModule(RunModule):
    """Fine-tunes a :class:`TemporalDecoder` on videos (Sec. 3.1.1) with an L1 reconstruction loss of the
    posterior-mode latents (encoder frozen); only ``requires_grad`` parameters train."""

    default_lr = 1e-3

    def __init__(self, net: TemporalDecoder, optimizer: Callable | None = None, seed: int = 0):
        super().__init__(optimizer, None, seed)
        self.net = net
        self.sample_shape = None

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.net.encode(x).mode()
        return (self.net.decode(z) - x).abs().mean()

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.reconstruction_loss(batch["x"])

    def validation_step(self, batch, batch_idx):
        loss = self.reconstruction_loss(batch["x"])
        self.log("val/rec", loss, batch_size=batch["x"].shape[0], sync_dist=True)
