"""Alpha-blended temporal layers: a trained image network becomes a video network (Video LDM).

Blattmann et al., "Align your Latents" (CVPR 2023), Sec. 3.1 and Fig. 4: after each spatial layer
``l^i_θ`` of the (frozen) image LDM a temporal layer ``l^i_φ`` is inserted — temporal attention or a 3D
(here: temporal 1D over frames, space folded into batch) convolution — and its output is merged with the
spatial output through a learned scalar per layer:

    z' = α^i_φ · z + (1 − α^i_φ) · z'',   z'' = l^i_φ(z),   α^i_φ ∈ [0, 1]            (paper Sec. 3.1)

Merge modes (:data:`MERGE_MODES`, names as in the public ``AlphaBlender`` of Stability's
``generative-models``, the follow-up code base of the Video LDM authors):

* ``"fixed"``   — ``α`` is a constant buffer (no sigmoid): ``α = 1`` switches the temporal path off.
* ``"learned"`` — ``α = sigmoid(m)``, ``m`` a learned scalar per layer (``alpha_init`` sets ``m``).
* ``"learned_with_images"`` — as ``"learned"``, but ``α = 1`` for frames flagged as independent images
  (``ctx["frame_is_video"] == False``), so image batches skip the temporal path exactly.

Because :class:`~shared.nn.video.TemporalAttention` / :class:`~shared.nn.video.TemporalConv` are residual
with zero-initialised outputs, ``z'' = z`` at initialisation and the blended network equals the image
network frame by frame for any ``α``; for ``α = 1`` it does so for *any* temporal weights.

Pieces: :class:`AlphaBlend` (one merged temporal layer), :func:`video_ldm_temporal` (the block factory
for :func:`shared.nn.video.inflate_unet`: a temporal conv and a temporal attention, each alpha-blended),
:func:`set_alpha` / :func:`merge_alphas` (inspection and the α = 1 switch) and :class:`TemporalDecoder`
(Sec. 3.1.1: the autoencoder's decoder with alpha-blended temporal convolutions after its mid block and
each up level; the encoder and the 2D decoder keep their weights and names).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from torch import nn

from shared.nn.build import buildable
from shared.nn.layers import CtxBlock
from shared.nn.video import TemporalAttention, TemporalConv, TemporalStack, frame_flags

MERGE_MODES = ("fixed", "learned", "learned_with_images")


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class AlphaBlend(CtxBlock):
    """``α · x + (1 − α) · temporal(x)`` for input ``x`` (B*T, C, H, W) (``ctx["num_frames"] = T``).

    Args:
        temporal: the temporal layer ``l_φ`` (a :class:`CtxBlock` or a plain module of ``x``).
        merge: one of :data:`MERGE_MODES`.
        alpha: the initial merge factor α in [0, 1] (``"fixed"``: the constant). The learned modes store
            ``logit(α)`` so that ``sigmoid`` gives back ``α`` (0.5 ↔ a zero logit, the usual init).
    """

    def __init__(self, temporal: nn.Module, merge: str = "learned_with_images", alpha: float = 0.5):
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.temporal, self.merge = temporal, merge
        if merge == "fixed":
            self.register_buffer("mix_factor", torch.tensor(float(alpha)))
        else:
            self.mix_factor = nn.Parameter(torch.tensor(_logit(alpha)))

    def alpha(self) -> torch.Tensor:
        """The merge factor for video frames (a 0-d tensor)."""
        return self.mix_factor if self.merge == "fixed" else torch.sigmoid(self.mix_factor)

    def frame_alpha(self, ctx: dict | None, batch_frames: int, device) -> torch.Tensor:
        """α per frame, shaped (B*T, 1, 1, 1) (or 0-d when it is the same for every frame)."""
        a = self.alpha()
        if self.merge != "learned_with_images":
            return a
        frames = int((ctx or {}).get("num_frames", 1))
        flags = frame_flags(ctx, batch_frames // frames, frames, device)
        if flags is None:
            return a
        flags = rearrange(flags, "b t -> (b t) 1 1 1")
        return torch.where(flags, a, torch.ones((), dtype=a.dtype, device=device))

    def forward(self, x, emb=None, ctx=None):
        if self.merge == "fixed" and float(self.mix_factor) == 1.0:
            return x  # exactly the spatial output (no 0 · temporal term that could carry a NaN)
        z = self.temporal(x, emb, ctx) if isinstance(self.temporal, CtxBlock) else self.temporal(x)
        a = self.frame_alpha(ctx, x.shape[0], x.device).to(x.dtype)
        return a * x + (1 - a) * z


@buildable
def video_ldm_temporal(channels: int, layers: Sequence[str] = ("conv", "attention"),
                       merge: str = "learned_with_images", alpha: float = 0.5, num_heads: int = 1,
                       head_channels: int = -1, norm_groups: int = 32, conv_kernel: int = 3,
                       max_distance: int = 32) -> CtxBlock:
    """Video LDM's temporal block after one spatial stage: each of ``layers`` (``"conv"``: a temporal
    convolution, ``"attention"``: temporal self-attention with relative frame-offset bias) wrapped in its
    own :class:`AlphaBlend` (one merge factor per temporal layer)."""
    blocks = []
    for kind in layers:
        if kind == "conv":
            inner = TemporalConv(channels, conv_kernel, norm_groups)
        elif kind == "attention":
            inner = TemporalAttention(channels, num_heads, head_channels, norm_groups, max_distance)
        else:
            raise ValueError(f"temporal layer kind must be 'conv' or 'attention', got {kind!r}")
        blocks.append(AlphaBlend(inner, merge, alpha))
    if not blocks:
        raise ValueError("video_ldm_temporal needs at least one layer")
    return blocks[0] if len(blocks) == 1 else TemporalStack(*blocks)


def alpha_blends(model: nn.Module) -> list[tuple[str, AlphaBlend]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AlphaBlend)]


def merge_alphas(model: nn.Module) -> dict[str, float]:
    """``{layer name: α}`` of every :class:`AlphaBlend` in ``model`` (for logging and the README)."""
    return {n: float(m.alpha().detach()) for n, m in alpha_blends(model)}


@torch.no_grad()
def set_alpha(model: nn.Module, alpha: float) -> nn.Module:
    """Set every merge factor of ``model`` to ``alpha`` (learned modes: their logit); returns ``model``.
    ``set_alpha(net, 1.0)`` on a ``"fixed"`` net turns the video network back into the image network."""
    for _, m in alpha_blends(model):
        m.mix_factor.fill_(float(alpha) if m.merge == "fixed" else _logit(alpha))
    return model


class TemporalDecoder(nn.Module):
    """An :class:`~shared.nn.autoencoder.AutoencoderKL` whose decoder gains temporal layers (Sec. 3.1.1).

    ``make_temporal(channels)`` blocks (default: one alpha-blended :class:`TemporalConv`) run after the
    decoder's mid block and after each up level, through forward hooks, so every autoencoder parameter
    keeps its name (``autoencoder.*``) and the temporal ones live under ``temporal.*``. ``decode`` of a
    video latent ``(B, c, T, h, w)`` mixes information across its T frames; a 4-D (image) latent decodes
    exactly as the image decoder does. With ``freeze`` the autoencoder's own weights are frozen (only the
    temporal layers train). Zero-initialised temporal outputs make it equal the per-frame decoder at init.
    """

    def __init__(self, autoencoder: nn.Module, make_temporal: Callable[[int], nn.Module] | None = None,
                 freeze: bool = True):
        super().__init__()
        self.autoencoder = autoencoder
        dec = autoencoder.decoder
        if make_temporal is None:
            groups = dec.conv_norm_out.num_groups

            def make_temporal(ch):
                return video_ldm_temporal(ch, layers=("conv",), merge="learned", norm_groups=groups)
        rev = list(reversed(autoencoder.block_out_channels))
        sites = [(dec.mid_block, rev[0])] + [(blk, ch) for blk, ch in zip(dec.up_blocks, rev)]
        self.temporal = nn.ModuleList([make_temporal(ch) for _, ch in sites])
        self._frames: int | None = None
        for (site, _), blk in zip(sites, self.temporal):
            site.register_forward_hook(self._hook(blk))
        if freeze:
            self.autoencoder.requires_grad_(False)
            self.temporal.requires_grad_(True)
        # the AutoencoderKL interface LatentSpace relies on
        self.in_channels, self.latent_channels = autoencoder.in_channels, autoencoder.latent_channels
        self.downsample_factor = autoencoder.downsample_factor
        self.scaling_factor = getattr(autoencoder, "scaling_factor", None)
        self.shift_factor = getattr(autoencoder, "shift_factor", None)

    def _hook(self, blk):
        def hook(module, inputs, output):
            if self._frames is None or self._frames < 2:
                return output
            return blk(output, None, {"num_frames": self._frames})
        return hook

    def encode(self, x: torch.Tensor, chunk_size: int | None = None):
        return self.autoencoder.encode(x, chunk_size)

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Latents (B, c, T, h, w) → videos with temporal mixing; (B, c, h, w) → images (per frame)."""
        if z.dim() != 5:
            return self.autoencoder.decode(z, chunk_size)
        self._frames = int(z.shape[2])
        try:
            # no chunking across a clip: the temporal layers need all T frames of each video together
            return self.autoencoder.decode(z, None)
        finally:
            self._frames = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mode reconstruction of videos (B, C, T, H, W)."""
        return self.decode(self.encode(x).mode())
