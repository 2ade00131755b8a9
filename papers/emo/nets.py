"""EMO's network (Tian, Wang, Zhang & Bo, ECCV 2024, Sec. 3.2) for each training stage (Sec. 3.3).

Shared pieces: the ReferenceNet and reference attention (``shared/nn/reference.py``), the face locator
(``shared/nn/guider.py``), the audio layers (``shared/nn/audio_attention.py``), the temporal layers (AnimateDiff's
motion module, ``shared/nn/motion_module.py``). EMO's own, here:

* **speed layers** — :class:`SpeedEncoder`: the head rotation speed ``w_f`` of each frame becomes
  ``s_d = tanh((w_f - c_d) / r_d * 3)`` over ``d`` speed buckets (centre ``c_d``, radius ``r_d``), the vectors of frames
  ``f - m .. f + m`` are concatenated and an MLP gives the speed features; :class:`SpeedAttention`: "within the
  temporal layers ... a cross-attention mechanism that operates between the speed features and the reshaped feature
  map across the temporal dimension f" — each spatial position's frame sequence attends to the clip's per-frame speed
  features (zero-initialised output);
* **motion frames** — the last ``n`` frames of the previous clip go through the ReferenceNet together with the
  reference ("concatenated and input into the ReferenceNet only once"); :class:`FeatureTap` records the
  ReferenceNet's feature maps where the backbone's temporal layers sit, and :class:`MotionFrameTemporal` "merges the
  temporal layer inputs with the pre-extracted motion features of matching resolution along the frames dimension"
  (the n motion-frame maps are prepended to the f frames, the temporal layer runs over n + f frames, the f frames are
  kept). "For the generation of the first video clip, we initialize the motion frames as zero maps": items whose
  motion frames are all zero get zero feature maps.

:class:`EMONet` is the :class:`~shared.nn.reference.ReferenceDenoiser` with these; ``forward(x, t, reference=,
guide=face_region, audio=, speed=, motion_frames=)``.

Backbone cross-attention: EMO drops the text prompt and feeds ReferenceNet features to the layers that were SD's
cross-attention ("reference-attention"). Here the reference enters the self-attention as in Animate Anyone (one
shared ReferenceNet mechanism) and the cross-attention keeps a zero context token (deviation, README).

``emo_net(denoiser, stage=...)`` builds each stage: ``base`` (the pretrained image model, unconditional), ``image``
(stage 1: backbone + ReferenceNet + face locator on single frames), ``video`` (stage 2: temporal layers and audio
layers with motion frames, the image part frozen), ``video_noaudio`` (the ablation: stage 2 without audio layers),
``speed`` (stage 3: speed layers added; only the temporal and speed layers train), ``generate`` (inference).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from shared.nn.attention import sdpa_heads
from shared.nn.audio_attention import AudioAttention, AudioEncoder, audio_state_dict, insert_audio_attention
from shared.nn.build import buildable
from shared.nn.layers import CtxBlock, zero_module
from shared.nn.motion_module import MotionModule
from shared.nn.reference import ReferenceDenoiser, ReferenceNet, copy_spatial
from shared.nn.unet import UNet
from shared.nn.video import freeze_spatial, inflate_unet, temporal_state_dict
from shared.nn.weights import load_state_dict_strict, read_state_dict

STAGES = ("base", "image", "video", "video_noaudio", "speed", "generate")
TAP = "tap:"


class SpeedEncoder(nn.Module):
    """Per-frame head speed (B, T) (or one per clip, (B,)) -> speed features (B, T, dim) (module docstring)."""

    def __init__(self, centers: Sequence[float], radii: Sequence[float], context: int = 2, dim: int = 32):
        super().__init__()
        if len(centers) != len(radii) or not len(centers) or min(radii) <= 0:
            raise ValueError(f"speed buckets need as many positive radii as centres, got {centers} / {radii}")
        self.register_buffer("centers", torch.tensor([float(c) for c in centers]))
        self.register_buffer("radii", torch.tensor([float(r) for r in radii]))
        self.context, self.dim = int(context), int(dim)
        width = (2 * self.context + 1) * len(centers)
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))

    def buckets(self, speed: torch.Tensor) -> torch.Tensor:
        """(..., ) speeds -> (..., d): ``tanh((w - c_d) / r_d * 3)``."""
        return torch.tanh((speed[..., None] - self.centers) / self.radii * 3)

    def forward(self, speed: torch.Tensor, frames: int) -> torch.Tensor:
        speed = speed.float()
        if speed.ndim == 1:
            speed = speed[:, None].expand(-1, frames)
        if speed.shape[1] != frames:
            raise ValueError(f"speed for {speed.shape[1]} frames, the clip has {frames}")
        s = self.buckets(speed)  # (B, T, d)
        m = self.context
        padded = torch.cat([s[:, :1].expand(-1, m, -1), s, s[:, -1:].expand(-1, m, -1)], dim=1)  # edge frames repeat
        windows = torch.stack([padded[:, i:i + frames] for i in range(2 * m + 1)], dim=2)  # (B, T, 2m+1, d)
        return self.mlp(windows.flatten(2))


class SpeedAttention(nn.Module):
    """Cross-attention of each position's frame sequence (N, T, C) to the per-frame speed features (B, T, dim)."""

    def __init__(self, channels: int, speed_dim: int, heads: int = 2):
        super().__init__()
        self.heads = int(heads)
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(speed_dim, channels, bias=False)
        self.to_v = nn.Linear(speed_dim, channels, bias=False)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, speed: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // frames
        tokens = rearrange(x, "(b t) c h w -> (b h w) t c", t=frames)
        kv = speed.repeat_interleave(h * w, dim=0)  # (B*h*w, T, dim)
        out = sdpa_heads(self.to_q(self.norm(tokens)), self.to_k(kv), self.to_v(kv), self.heads)
        out = rearrange(self.proj_out(out), "(b h w) t c -> (b t) c h w", b=b, h=h, w=w)
        return x + out


class FeatureTap(CtxBlock):
    """In the ReferenceNet: records its input under ``"tap:" + block`` in ``ctx["reference_write"]``; identity."""

    reference_tap = True

    def __init__(self, channels: int = 0):
        super().__init__()
        self.block = None

    def forward(self, x, emb=None, ctx=None):
        bank = (ctx or {}).get("reference_write")
        if bank is not None:
            bank[TAP + self.block] = x
        return x


class MotionFrameTemporal(CtxBlock):
    """A temporal layer (motion module) that sees the motion frames' features before the clip's frames, followed by
    the speed layer when the clip has speed features (module docstring)."""

    def __init__(self, channels: int, motion_module: dict, speed_dim: int | None = None, speed_heads: int = 2):
        super().__init__()
        self.temporal = MotionModule(channels, **motion_module)
        self.speed = None if speed_dim is None else SpeedAttention(channels, speed_dim, speed_heads)
        self.block = None

    def forward(self, x, emb=None, ctx=None):
        ctx = ctx or {}
        frames = int(ctx.get("num_frames", 1))
        feats = (ctx.get("motion_features") or {}).get(self.block)
        if feats is None:
            x = self.temporal(x, emb, {"num_frames": frames})
        else:
            b = x.shape[0] // frames
            n = feats.shape[0] // b
            both = torch.cat([rearrange(feats, "(b n) c h w -> b n c h w", b=b),
                              rearrange(x, "(b t) c h w -> b t c h w", b=b)], dim=1)
            out = self.temporal(rearrange(both, "b t c h w -> (b t) c h w"), emb, {"num_frames": n + frames})
            x = rearrange(rearrange(out, "(b t) c h w -> b t c h w", b=b)[:, n:], "b t c h w -> (b t) c h w")
        speed = ctx.get("speed_tokens")
        if self.speed is not None and speed is not None:
            x = self.speed(x, speed, frames)
        return x


def _name_blocks(unet: nn.Module) -> None:
    """Give each inserted temporal / tap module the name of its U-Net block (the key shared by both networks)."""
    mods = dict(unet.named_modules())
    for name in unet.temporal_names:
        mods[name].block = name.rsplit(".", 1)[0]


class EMONet(ReferenceDenoiser):
    """:class:`~shared.nn.reference.ReferenceDenoiser` + speed layers and motion frames (module docstring)."""

    guide_name = "a face locator (guide: the face region)"

    def __init__(self, denoiser: UNet, reference_net: ReferenceNet | None = None, guider: nn.Module | None = None,
                 audio_encoder: nn.Module | None = None, speed_encoder: SpeedEncoder | None = None):
        super().__init__(denoiser, reference_net=reference_net, guider=guider, audio_encoder=audio_encoder)
        self.speed_encoder = speed_encoder

    def extra_ctx(self, x, reference, context, speed=None, motion_frames=None) -> dict:
        kw: dict = {}
        b = x.shape[0]
        frames = x.shape[2] if x.ndim == 5 else 1
        if self.reference_net is not None:
            if reference is None:
                raise ValueError("EMO's network has a ReferenceNet: pass reference")
            taps = getattr(self.reference_net.unet, "temporal_names", None)
            use_motion = motion_frames is not None and bool(taps)
            images, ctx_ref = reference, context
            if use_motion:
                n = motion_frames.shape[2]
                images = torch.cat([reference, rearrange(motion_frames, "b c n h w -> (b n) c h w")])
                if context is not None:
                    ctx_ref = torch.cat([context, context.repeat_interleave(n, dim=0)])
            bank = self.reference_net(images, ctx_ref)
            kw["reference_read"] = {k: [z[:b] for z in v] for k, v in bank.items() if not k.startswith(TAP)}
            if use_motion:
                live = (motion_frames.flatten(1).abs().amax(dim=1) > 0).to(x.dtype)  # all-zero: the first clip
                keep = live.repeat_interleave(n)[:, None, None, None]
                kw["motion_features"] = {k[len(TAP):]: v[b:] * keep for k, v in bank.items() if k.startswith(TAP)}
        if self.speed_encoder is not None and speed is not None:
            kw["speed_tokens"] = self.speed_encoder(speed, frames)
        return kw

    def forward(self, x, t, reference=None, guide=None, audio=None, speed=None, motion_frames=None):
        b = x.shape[0]
        context = self.reference_context(None, b, x.device)
        kw = self.extra_ctx(x, reference, context, speed=speed, motion_frames=motion_frames)
        x = self.apply_guider(x, guide, kw)
        if self.audio_encoder is not None and audio is not None:
            kw["audio_tokens"] = self.audio_encoder(audio)
        return self.denoiser(x, t, context=context, **kw)


def _load(net: nn.Module, path: str, what: str) -> None:
    load_state_dict_strict(net, read_state_dict(path, what), what=f"{what} {path}")


def stage_state_dict(net: EMONet) -> dict[str, torch.Tensor]:
    """What a stage ships: the denoiser (``base``), the whole image network (``image``), or the layers it added."""
    stage = net.stage
    if stage == "base":
        return {k: v.detach().clone() for k, v in net.denoiser.state_dict().items()}
    if stage == "image":
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    if stage in ("video", "video_noaudio", "speed"):
        out = {f"denoiser.{k}": v for k, v in temporal_state_dict(net.denoiser).items()}
        if getattr(net.denoiser, "audio_names", None):
            out.update({f"denoiser.{k}": v for k, v in audio_state_dict(net.denoiser).items()})
            out.update({f"audio_encoder.{k}": v.detach().clone() for k, v in net.audio_encoder.state_dict().items()})
        if net.speed_encoder is not None:
            out.update({f"speed_encoder.{k}": v.detach().clone() for k, v in net.speed_encoder.state_dict().items()})
        return out
    raise ValueError(f"stage {stage!r} trains nothing to export")


@buildable
def emo_net(denoiser: UNet, stage: str = "image", guider: nn.Module | None = None,
            audio_encoder: dict | None = None, audio_heads: int = 2, speed: dict | None = None,
            motion_module: dict | None = None, where: Sequence[str] = ("input", "middle", "output"),
            reference_time: float = 0.0, base_weights: str | None = None, image_weights: str | None = None,
            video_weights: str | None = None, speed_weights: str | None = None, audio: bool = True,
            joint_speed: bool = False) -> EMONet:
    """Build the network of ``stage`` (module docstring). ``audio_encoder``: :class:`AudioEncoder` arguments;
    ``speed``: :class:`SpeedEncoder` arguments; ``*_weights``: the exports of the earlier stages. ``joint_speed``:
    the speed layers join stage 2 (``video`` / ``video_noaudio``) and train with it instead of in a third stage (the
    CPU-scale budget; EMO trains them separately so the speed signal cannot stand in for the audio — in the world
    the two are drawn independently)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "base":
        net = EMONet(denoiser)
        net.stage = stage
        return net
    if base_weights:
        _load(denoiser, base_weights, "base image model")
    ref = ReferenceNet(copy_spatial(denoiser), time=reference_time)
    if stage == "image":
        net = EMONet(denoiser, reference_net=ref, guider=guider)
        net.stage = stage
        return net
    with_audio = audio and stage != "video_noaudio"
    with_speed = speed is not None and (stage in ("speed", "generate") or joint_speed)
    enc = None
    if with_audio:
        enc = AudioEncoder(**(audio_encoder or {}))
        insert_audio_attention(denoiser, lambda c: AudioAttention(c, enc.dim, heads=audio_heads))
    speed_enc = SpeedEncoder(**speed) if with_speed else None
    mm = dict(motion_module or {})
    mm.pop("_target_", None)

    def make(c):
        return MotionFrameTemporal(c, mm, speed_enc.dim if speed_enc is not None else None)

    inflate_unet(denoiser, make, insert="resblock", where=where, position="end")
    inflate_unet(ref.unet, FeatureTap, insert="resblock", where=where, position="end")
    _name_blocks(denoiser)
    _name_blocks(ref.unet)
    net = EMONet(denoiser, reference_net=ref, guider=guider, audio_encoder=enc, speed_encoder=speed_enc)
    if image_weights:
        own = net.state_dict()
        state = read_state_dict(image_weights, "stage-1 (image) weights")
        added = tuple(f"denoiser.{n}." for n in denoiser.temporal_names + getattr(denoiser, "audio_names", [])) + (
            "audio_encoder.", "speed_encoder.")
        unexpected = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
        missing = sorted(k for k in own if k not in state and not k.startswith(added))
        if unexpected or missing:
            raise ValueError(f"stage-1 weights {image_weights} do not fit: unexpected/mis-shaped {unexpected[:3]}, "
                             f"missing {missing[:3]}")
        net.load_state_dict(state, strict=False)
    for path, what in ((video_weights, "stage-2 (video) weights"), (speed_weights, "stage-3 (speed) weights")):
        if path:
            state = read_state_dict(path, what)
            own = net.state_dict()
            bad = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
            if bad:
                raise ValueError(f"{what} {path}: keys {bad[:3]} do not fit this network")
            net.load_state_dict(state, strict=False)
    net.requires_grad_(False)
    if stage in ("video", "video_noaudio", "speed"):
        freeze_spatial(denoiser)  # temporal layers (with the speed layers inside) trainable
        if stage in ("video", "video_noaudio") and not joint_speed:
            for m in denoiser.modules():
                if isinstance(m, MotionFrameTemporal) and m.speed is not None:
                    m.speed.requires_grad_(False)
        if joint_speed and speed_enc is not None and stage in ("video", "video_noaudio"):
            speed_enc.requires_grad_(True)
        if stage == "video" and enc is not None:
            enc.requires_grad_(True)
            for m in denoiser.modules():
                if isinstance(m, AudioAttention):
                    m.requires_grad_(True)
        if stage == "speed":
            speed_enc.requires_grad_(True)
    net.stage = stage
    return net
