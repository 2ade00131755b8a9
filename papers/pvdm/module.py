"""PVDM's two training stages as LightningModules (Yu et al., CVPR 2023, Sec. 3).

1. :class:`VideoAutoencoderModule` trains the projected (triplane) autoencoder of
   :mod:`papers.pvdm.autoencoder` on whole videos: the shared LDM autoencoder objective
   (:class:`shared.nn.autoencoder_loss.AutoencoderLoss`: L1 reconstruction, KL weight — 0 effect for the
   deterministic ``tanh`` bottleneck —, optional LPIPS / PatchGAN) applied to (B, C, T, H, W) videos instead of
   frames. The paper trains with L1 + LPIPS (+ a GAN term late in training); the configs say which.
2. The diffusion stage is *the shared latent diffusion module* (``shared.methods.latent_module.latent_diffusion``)
   with the frozen triplane autoencoder as its :class:`~shared.diffusion.latent.LatentSpace` and a plain 2D
   U-Net (:class:`shared.nn.unet.UNet`) over the triplane canvas (B, c, H' + 2T, W') — no PVDM-specific code is
   needed there, which is the paper's point: video diffusion with an image architecture. Samples are decoded
   to videos by the autoencoder.
"""
from __future__ import annotations

import torch

from shared.methods.autoencoder_module import AutoencoderModule


class VideoAutoencoderModule(AutoencoderModule):
    """The shared autoencoder module, but batches stay videos: the triplane encoder needs whole clips."""

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"VideoAutoencoderModule trains on videos (B, C, T, H, W), got {tuple(x.shape)}")
        return x
