"""The LDM KL-regularised autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", Sec. 3.1 and App. G) — the architecture of Stable Diffusion's VAE.

An :class:`Encoder` (conv_in → levels of ResNet blocks with stride-2 downsampling → mid block
ResNet–attention–ResNet → GroupNorm–SiLU–conv_out) maps an image to ``2 * latent_channels`` maps: the
mean and log-variance of a diagonal Gaussian posterior q(z|x) (:class:`DiagonalGaussian`, reparameterised
sample, mode, KL to N(0, I)). A 1×1 ``quant_conv`` / ``post_quant_conv`` sits on either side of the
latent, and a mirrored :class:`Decoder` (one more ResNet block per level, nearest ×2 upsampling) maps z
back to pixels. Downsampling pads right/bottom by one and convolves 3×3 stride 2 without padding, as
the original code does, so the weights port exactly.

Parameter names follow diffusers' ``AutoencoderKL`` state-dict layout, so a diffusers
``diffusion_pytorch_model.safetensors`` loads strictly (:func:`load_autoencoder_weights`,
:func:`load_sd_vae`). Checkpoints in the original CompVis/LDM layout (``encoder.down.0.block.0``,
``mid.attn_1.q`` as 1×1 convs, ``nin_shortcut``, optional ``first_stage_model.`` prefix) are renamed by
:func:`ldm_to_diffusers_keys` (a documented map; tested against diffusers' own converter).

The latent is scaled by ``scaling_factor`` (SD-1.x: 0.18215, ≈ 1/std of its latents) before diffusion;
that happens in ``shared.diffusion.latent``, not here. Images and videos: ``encode``/``decode`` accept
``(B, C, H, W)`` or ``(B, C, T, H, W)`` (frames folded into batch), and ``chunk_size`` encodes/decodes in
slices of that many images (VAE slicing; outputs unchanged, peak memory bounded).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shared.nn.weights import CheckpointError, load_state_dict_strict, read_state_dict

__all__ = [
    "AutoencoderKL",
    "DiagonalGaussian",
    "Encoder",
    "Decoder",
    "load_autoencoder_weights",
    "load_sd_vae",
    "ldm_to_diffusers_keys",
    "read_state_dict",
]

EPS = 1e-6  # GroupNorm epsilon of the LDM autoencoder


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"norm_num_groups={groups} does not divide {channels} channels")
    return nn.GroupNorm(groups, channels, eps=EPS)


class ResnetBlock(nn.Module):
    """GN–SiLU–conv3×3, GN–SiLU–dropout–conv3×3, plus a 1×1 ``conv_shortcut`` when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H×W positions (mid block), residual; SDPA computes it."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])  # key: to_out.0

    def forward(self, x):
        b, c, h, w = x.shape
        t = rearrange(self.group_norm(x), "b c h w -> b (h w) c")
        q, k, v = (lin(t)[:, None] for lin in (self.to_q, self.to_k, self.to_v))  # one head
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[1](self.to_out[0](out))
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.attentions = nn.ModuleList([AttnBlock(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, dropout) for _ in range(2)])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom by 1) then 3×3 stride-2 conv without padding (LDM / SD VAE)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``resnets`` then an optional ``downsamplers.0`` / ``upsamplers.0``."""

    def __init__(self, in_ch, out_ch, num_resnets, groups, dropout, down: bool | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups, dropout) for i in range(num_resnets)]
        )
        if down is True:
            self.downsamplers = nn.ModuleList([Downsample(out_ch)])
        elif down is False:
            self.upsamplers = nn.ModuleList([Upsample(out_ch)])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", ()):
            x = s(x)
        for s in getattr(self, "upsamplers", ()):
            x = s(x)
        return x


class Encoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        mid_attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        chs = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            last = i == len(chs) - 1
            self.down_blocks.append(
                _Level(prev, ch, layers_per_block, norm_num_groups, dropout, None if last else True)
            )
            prev = ch
        self.mid_block = MidBlock(chs[-1], norm_num_groups, mid_attention, dropout)
        self.conv_norm_out = _norm(chs[-1], norm_num_groups)
        self.conv_out = nn.Conv2d(chs[-1], out_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        mid_attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], norm_num_groups, mid_attention, dropout)
        self.up_blocks = nn.ModuleList()
        prev = rev[0]
        for i, ch in enumerate(rev):
            last = i == len(rev) - 1
            self.up_blocks.append(
                _Level(prev, ch, layers_per_block + 1, norm_num_groups, dropout, None if last else False)
            )
            prev = ch
        self.conv_norm_out = _norm(rev[-1], norm_num_groups)
        self.conv_out = nn.Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    @property
    def last_layer(self) -> nn.Parameter:
        """The output conv weight: LDM's adaptive adversarial weight compares gradient norms here."""
        return self.conv_out.weight


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); ``logvar`` clamped to [-30, 20] as in LDM.

    Works for any latent shape (B, C, ...); :meth:`kl` and :meth:`nll` sum over all but the batch dim.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, deterministic: bool = False):
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.zeros_like(mean) if deterministic else torch.exp(0.5 * self.logvar)
        self.var = torch.zeros_like(mean) if deterministic else torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor, deterministic: bool = False) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar, deterministic)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def _dims(self):
        return list(range(1, self.mean.dim()))

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(q || other) per item (other = N(0, I) by default)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        if other is None:
            return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(self._dims())
        return 0.5 * (
            (self.mean - other.mean).pow(2) / other.var
            + self.var / other.var
            - 1.0
            - self.logvar
            + other.logvar
        ).sum(self._dims())

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        return 0.5 * (
            torch.log(torch.tensor(2 * torch.pi)) + self.logvar + (sample - self.mean).pow(2) / self.var
        ).sum(self._dims())

    def map(self, fn) -> DiagonalGaussian:
        """Apply a reshaping ``fn`` to mean and log-variance (e.g. unfold frames)."""
        return DiagonalGaussian(fn(self.mean), fn(self.logvar), self.deterministic)


def _chunks(x: torch.Tensor, chunk_size: int | None):
    return [x] if not chunk_size or chunk_size >= x.shape[0] else list(x.split(chunk_size))


class AutoencoderKL(nn.Module):
    """LDM / Stable Diffusion KL autoencoder. Defaults are the SD-1.x VAE (``conf/model/autoencoder_sd.yaml``
    spells them out); ``conf/model/autoencoder_tiny.yaml`` is the CPU-scale one.

    ``downsample_factor = 2 ** (len(block_out_channels) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        mid_attention: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        dropout: float = 0.0,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        weights_path: str | None = None,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels, self.latent_channels = in_channels, out_channels, latent_channels
        self.block_out_channels = tuple(block_out_channels)
        self.downsample_factor = 2 ** (len(self.block_out_channels) - 1)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor
        self.encoder = Encoder(
            in_channels,
            2 * latent_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            mid_attention,
            dropout,
        )
        self.decoder = Decoder(
            latent_channels,
            out_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            mid_attention,
            dropout,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        if weights_path:
            load_autoencoder_weights(self, weights_path)

    # ---------------------------------------------------------------- encode / decode
    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return h if self.quant_conv is None else self.quant_conv(h)

    def _decode_images(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """(B, C, H, W) or (B, C, T, H, W) pixels → posterior over (B, c, [T,] h, w) latents."""
        if x.dim() == 5:
            b = x.shape[0]
            post = self.encode(rearrange(x, "b c t h w -> (b t) c h w"), chunk_size)
            return post.map(lambda z: rearrange(z, "(b t) c h w -> b c t h w", b=b))
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (B, {self.in_channels}, H, W) or (B, C, T, H, W), got {tuple(x.shape)}"
            )
        moments = torch.cat([self._encode_images(c) for c in _chunks(x, chunk_size)])
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """(B, c, [T,] h, w) latents (unscaled) → pixels."""
        if z.dim() == 5:
            b = z.shape[0]
            x = self.decode(rearrange(z, "b c t h w -> (b t) c h w"), chunk_size)
            return rearrange(x, "(b t) c h w -> b c t h w", b=b)
        return torch.cat([self._decode_images(c) for c in _chunks(z, chunk_size)])

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ):
        """Reconstruct ``x``; returns ``(reconstruction, posterior)``."""
        post = self.encode(x)
        z = post.sample(generator) if sample_posterior else post.mode()
        return self.decode(z), post

    @property
    def last_layer(self) -> nn.Parameter:
        return self.decoder.last_layer


# -------------------------------------------------------------------- weights I/O
# The original CompVis/LDM (and SD .ckpt ``first_stage_model.``) layout → diffusers' names. Per encoder
# level i: ``down.i.block.j`` → ``down_blocks.i.resnets.j``,
# ``down.i.downsample`` → ``down_blocks.i.downsamplers.0``;
# decoder levels are stored in *resolution* order in LDM (``up.0`` is the full-resolution one) and in
# *execution* order in diffusers, so ``up.i`` → ``up_blocks.(L-1-i)``;
# ``mid.block_1/2`` → ``mid_block.resnets.0/1``,
# ``mid.attn_1.{norm,q,k,v,proj_out}`` → ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` (1×1
# conv weights become linear weights); ``nin_shortcut`` → ``conv_shortcut``; ``norm_out`` → ``conv_norm_out``.
_LDM_PREFIXES = ("first_stage_model.", "vae.")
_LDM_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def is_ldm_layout(state: dict) -> bool:
    return any(re.match(r"(first_stage_model\.)?(encoder|decoder)\.(down|up|mid)\.", k) for k in state)


def ldm_to_diffusers_keys(
    state: dict[str, torch.Tensor], num_levels: int | None = None
) -> dict[str, torch.Tensor]:
    """Rename an original LDM/CompVis autoencoder state dict into diffusers' layout (see the map above).

    Keys outside the autoencoder (the LDM training loss's ``loss.*`` discriminator/LPIPS, a full SD
    checkpoint's UNet and text encoder) are dropped; the ``first_stage_model.`` prefix is removed.
    """
    if any(k.startswith("first_stage_model.") for k in state):
        state = {
            k[len("first_stage_model.") :]: v for k, v in state.items() if k.startswith("first_stage_model.")
        }
    state = {
        k: v
        for k, v in state.items()
        if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")
    }
    if num_levels is None:
        ups = [int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
        num_levels = max(ups) + 1 if ups else 0
    out = {}
    for key, v in state.items():
        new = key
        if m := re.match(r"(encoder)\.down\.(\d+)\.block\.(\d+)\.(.*)", key):
            new = f"encoder.down_blocks.{m[2]}.resnets.{m[3]}.{m[4]}"
        elif m := re.match(r"encoder\.down\.(\d+)\.downsample\.(.*)", key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.upsample\.(.*)", key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.block_([12])\.(.*)", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key):
            new = f"{m[1]}.mid_block.attentions.0.{_LDM_ATTN[m[2]]}.{m[3]}"
            if m[2] != "norm" and m[3] == "weight" and v.dim() > 2:
                v = v.reshape(v.shape[0], v.shape[1])
        elif m := re.match(r"(encoder|decoder)\.norm_out\.(.*)", key):
            new = f"{m[1]}.conv_norm_out.{m[2]}"
        new = new.replace("nin_shortcut", "conv_shortcut")
        out[new] = v
    return out


def load_autoencoder_weights(model: AutoencoderKL, path: str | Path, strict: bool = True) -> AutoencoderKL:
    """Load diffusers-layout weights (or LDM-layout ones, renamed; or the ``net.*`` part of an
    ``AutoencoderModule`` Lightning checkpoint) strictly; one-line error naming bad keys."""
    state = read_state_dict(path)
    if any(k.startswith("net.encoder.") for k in state):  # a checkpoint of shared.methods.autoencoder_module
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    if is_ldm_layout(state):
        state = ldm_to_diffusers_keys(state, len(model.block_out_channels))
    load_state_dict_strict(model, state, strict=strict, what=f"autoencoder weights {path}")
    return model


_DIFFUSERS_CONFIG_KEYS = {
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "block_out_channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "latent_channels": "latent_channels",
    "norm_num_groups": "norm_num_groups",
    "mid_block_add_attention": "mid_attention",
    "use_quant_conv": "use_quant_conv",
    "use_post_quant_conv": "use_post_quant_conv",
    "scaling_factor": "scaling_factor",
    "shift_factor": "shift_factor",
}


def config_from_diffusers(cfg: dict) -> dict:
    """Our constructor arguments from a diffusers ``AutoencoderKL`` ``config.json`` (plain-block KL VAEs)."""
    for key, ok in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        bad = [t for t in cfg.get(key, []) if t != ok]
        if bad:
            raise ValueError(f"config {key} has {bad}: only {ok} blocks are supported")
    if cfg.get("act_fn", "silu") != "silu":
        raise ValueError(f"config act_fn={cfg['act_fn']!r}: only silu is supported")
    return {ours: cfg[theirs] for theirs, ours in _DIFFUSERS_CONFIG_KEYS.items() if theirs in cfg}


_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors")


def load_sd_vae(path: str | Path, strict: bool = True, **config) -> AutoencoderKL:
    """Build the VAE and load its weights from a local path.

    ``path`` is a diffusers VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``;
    e.g. ``<sd-1.5>/vae``) or a single weights file (diffusers or LDM layout; a full SD ``.ckpt`` /
    ``.safetensors`` works too: its ``first_stage_model.*`` part is used). The architecture comes from the
    ``config.json`` when there is one, else from the SD-1.x defaults; ``config`` overrides either.
    """
    path = Path(path)
    cfg: dict = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            cfg = config_from_diffusers(json.loads((path / "config.json").read_text()))
        files = [path / n for n in _WEIGHT_NAMES if (path / n).is_file()]
        if not files:
            raise CheckpointError(f"no VAE weights in {path} (looked for {', '.join(_WEIGHT_NAMES)})")
        path = files[0]
    elif (path.parent / "config.json").is_file():
        cfg = config_from_diffusers(json.loads((path.parent / "config.json").read_text()))
    model = AutoencoderKL(**{**cfg, **config})
    return load_autoencoder_weights(model, path, strict)
