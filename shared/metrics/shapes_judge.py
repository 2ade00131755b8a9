"""Judges of the styled-shapes world (``shared.data.styled_shapes``): a style classifier and a depth estimator.

Gen-1 (Esser et al. 2023) and video ControlNets score generated videos with pretrained networks — MiDaS/DPT depth
(structure: does the output keep the input's depth?), CLIP (content: does it take the reference's appearance?) and
Inception/I3D features (quality). None of them is available offline at CPU scale, so two small networks trained on
the world stand in (DESIGN.md, "Judges"; report their numbers as ``*_judge``, never as FID or MiDaS error):

* :class:`StyleNet` — a 4-layer CNN on single frames: ``features`` (the penultimate layer, for the per-frame
  ``FD_judge``) and logits over the world's 6 named styles (palette + texture + background);
* :class:`DepthNet` — a two-level U-Net-lite (``tests/bench/styled_shapes_probe.py``: the receptive field covers a
  whole shape, whose apparent size gives its depth) regressing the per-pixel world depth of a frame.

:class:`ShapesJudge` holds both (``styled_shapes_judge.safetensors``). A second :class:`StyleNet`, trained with
another seed on other draws (``styled_shapes_content.safetensors``), is Gen-1's *content encoder* at CPU scale (the
CLIP image embedding of the paper): the network that conditions the model is not the one that judges it.

Input protocol: frames (N, 3, H, W) or videos (B, 3, T, H, W) in [-1, 1]; frames are resized to ``resolution``
(16, the claims' size; bilinear, antialiased when shrinking) and depth comes back at the input's size.

Weights: ``shared/metrics/weights/styled_shapes_{judge,content}.safetensors`` (architecture in the metadata) with a
JSON training record (held-out accuracies and depth errors) beside them; ``python -m shared.metrics.train_shapes_judge``
re-trains them deterministically on CPU.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.metrics.frechet import frechet_distance, gaussian_stats
from shared.nn.build import buildable

__all__ = ["StyleNet", "DepthNet", "ShapesJudge", "DEFAULT_SHAPES_JUDGE_PATH", "DEFAULT_CONTENT_ENCODER_PATH",
           "load_shapes_judge", "load_style_net", "load_depth_net", "frames_of", "style_logits", "style_accuracy",
           "style_features", "CameraNet", "load_camera_judge", "camera_accuracy", "DEFAULT_CAMERA_JUDGE_PATH",
           "estimate_depth", "depth_rmse", "depth_edges", "edge_f1", "fd_frames", "shapes_judge_sha256"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_SHAPES_JUDGE_PATH = WEIGHTS / "styled_shapes_judge.safetensors"
DEFAULT_CONTENT_ENCODER_PATH = WEIGHTS / "styled_shapes_content.safetensors"
DEFAULT_CAMERA_JUDGE_PATH = WEIGHTS / "styled_shapes_camera_judge.safetensors"
RETRAIN_COMMAND = "python -m shared.metrics.train_shapes_judge"


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) videos -> (B*T, C, H, W) frames; frames pass through."""
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)
    if x.dim() != 4:
        raise ValueError(f"expected frames (N, C, H, W) or videos (B, C, T, H, W), got shape {tuple(x.shape)}")
    return x


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=h > size or w > size)


class StyleNet(nn.Module):
    """Frames -> ``features`` (``feature_dim``) -> SiLU -> style logits. 3x3 convs 3 -> w -> 2w (stride 2) -> 2w
    (stride 2) -> 2w, GroupNorm + SiLU, mean and max over space."""

    _ARCH_KEYS = ("width", "feature_dim", "num_styles", "resolution")

    def __init__(self, width: int = 16, feature_dim: int = 64, num_styles: int = 6, resolution: int = 16):
        super().__init__()
        w = int(width)
        self.width, self.feature_dim, self.num_styles, self.resolution = w, int(feature_dim), int(num_styles), \
            int(resolution)

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, stride=s, padding=1), nn.GroupNorm(min(8, o), o), nn.SiLU()]

        self.body = nn.Sequential(*block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 2),
                                  *block(2 * w, 2 * w, 1))
        self.feature = nn.Linear(4 * w, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, self.num_styles)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.body(_resize(frames_of(frames).float(), self.resolution))
        return self.feature(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.features(frames)))


class DepthNet(nn.Module):
    """Frames -> per-pixel depth (N, H, W) in world units (the background plane is at 1): a two-level U-Net-lite
    predicting standardised depth (``depth_mean`` / ``depth_std`` buffers, the training set's)."""

    _ARCH_KEYS = ("width", "resolution")

    def __init__(self, width: int = 32, resolution: int = 16):
        super().__init__()
        c = int(width)
        self.width, self.resolution = c, int(resolution)
        act = nn.SiLU()
        self.inp = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), act, nn.Conv2d(c, c, 3, padding=1), act)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), act, nn.Conv2d(2 * c, 2 * c, 3, 2, 1), act)
        self.mid = nn.Sequential(*[m for d in (1, 2, 4) for m in (nn.Conv2d(2 * c, 2 * c, 3, padding=d, dilation=d),
                                                                  act)])
        self.up = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
                                nn.Conv2d(2 * c, c, 3, padding=1), act)
        self.out = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), act, nn.Conv2d(c, 1, 1))
        self.register_buffer("depth_mean", torch.tensor(0.8))
        self.register_buffer("depth_std", torch.tensor(0.2))

    def standardised(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H', W') standardised depth at the judge's resolution (the training target's units)."""
        x = _resize(frames_of(frames).float(), self.resolution)
        h = self.inp(x)
        return self.out(torch.cat([h, self.up(self.mid(self.down(h)))], 1))[:, 0]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames_of(frames)
        d = self.standardised(frames) * self.depth_std + self.depth_mean
        h, w = frames.shape[-2:]
        if d.shape[-2:] != (h, w):
            d = F.interpolate(d[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return d


class CameraNet(nn.Module):
    """Videos (B, 3, T, H, W) -> logits of the camera's pan direction (``DIRECTIONS4``) and zoom (in, out): 3D convs
    over [frame, temporal difference] (6 channels), GroupNorm + SiLU, a spatial and a spatio-temporal halving, mean
    over space and time. The camera-control judge (``StyledShapes(camera=True)``)."""

    _ARCH_KEYS = ("width", "resolution")

    def __init__(self, width: int = 16, resolution: int = 16):
        super().__init__()
        w = int(width)
        self.width, self.resolution = w, int(resolution)

        def block(i, o, s):
            return [nn.Conv3d(i, o, 3, stride=s, padding=1), nn.GroupNorm(min(8, o), o), nn.SiLU()]

        self.body = nn.Sequential(*block(6, w, 1), *block(w, 2 * w, (1, 2, 2)), *block(2 * w, 2 * w, (2, 2, 2)),
                                  *block(2 * w, 2 * w, 1))
        self.pan_head, self.zoom_head = nn.Linear(2 * w, 4), nn.Linear(2 * w, 2)

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        if videos.dim() != 5 or videos.shape[2] < 2:
            raise ValueError(f"the camera judge takes videos (B, 3, T >= 2, H, W), got {tuple(videos.shape)}")
        b, c, t, h, w = videos.shape
        x = _resize(frames_of(videos.float()), self.resolution).reshape(b, t, c, self.resolution, self.resolution)
        x = x.transpose(1, 2)
        diff = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)
        f = self.body(torch.cat([x, diff], dim=1)).mean(dim=(2, 3, 4))
        return {"pan": self.pan_head(f), "zoom": self.zoom_head(f)}


def camera_net_metadata(net: CameraNet) -> dict[str, str]:
    return {"arch": "CameraNet", **{k: str(getattr(net, k)) for k in CameraNet._ARCH_KEYS}}


@buildable
def load_camera_judge(path: str | Path | None = None, map_location="cpu") -> CameraNet:
    """The committed camera judge (or the one at ``path``), frozen; strict loading."""
    from shared.nn.weights import load_state_dict_strict

    path = Path(path) if path else DEFAULT_CAMERA_JUDGE_PATH
    state, meta = _read(path, "camera judge")
    net = CameraNet(**{k: int(meta[k]) for k in CameraNet._ARCH_KEYS if k in meta})
    load_state_dict_strict(net, state, what=f"camera judge weights {path}")
    return net.to(map_location).eval().requires_grad_(False)


@torch.no_grad()
def camera_accuracy(videos: torch.Tensor, pan: torch.Tensor, zoom: torch.Tensor, judge: CameraNet,
                    batch_size: int = 64) -> dict[str, float]:
    """Shares of videos whose camera pan direction and zoom the camera judge gets right."""
    outs = [judge(videos[i:i + batch_size].float()) for i in range(0, len(videos), batch_size)]
    p = torch.cat([o["pan"] for o in outs]).argmax(1)
    z = torch.cat([o["zoom"] for o in outs]).argmax(1)
    return {"pan_acc": float((p == torch.as_tensor(pan).long()).float().mean()),
            "zoom_acc": float((z == torch.as_tensor(zoom).long()).float().mean())}


class ShapesJudge(nn.Module):
    """The evaluation judge: ``style`` (:class:`StyleNet`) and ``depth`` (:class:`DepthNet`)."""

    def __init__(self, style: dict | None = None, depth: dict | None = None):
        super().__init__()
        self.style = StyleNet(**(style or {}))
        self.depth = DepthNet(**(depth or {}))

    def metadata(self) -> dict[str, str]:
        meta = {"arch": "ShapesJudge"}
        meta.update({f"style.{k}": str(getattr(self.style, k)) for k in StyleNet._ARCH_KEYS})
        meta.update({f"depth.{k}": str(getattr(self.depth, k)) for k in DepthNet._ARCH_KEYS})
        return meta

    @classmethod
    def from_metadata(cls, meta: dict) -> ShapesJudge:
        style = {k: int(meta[f"style.{k}"]) for k in StyleNet._ARCH_KEYS if f"style.{k}" in meta}
        depth = {k: int(meta[f"depth.{k}"]) for k in DepthNet._ARCH_KEYS if f"depth.{k}" in meta}
        return cls(style, depth)


def style_net_metadata(net: StyleNet) -> dict[str, str]:
    return {"arch": "StyleNet", **{k: str(getattr(net, k)) for k in StyleNet._ARCH_KEYS}}


def _read(path: Path, what: str):
    from shared.nn.weights import read_safetensors

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} weights not found at '{path}'; re-train them with `{RETRAIN_COMMAND}`")
    return read_safetensors(path, f"{what} weights")


def load_shapes_judge(path: str | Path | None = None, map_location="cpu") -> ShapesJudge:
    """The committed styled-shapes judge (or the one at ``path``), eval mode, gradients off; strict loading."""
    from shared.nn.weights import load_state_dict_strict

    path = Path(path) if path else DEFAULT_SHAPES_JUDGE_PATH
    state, meta = _read(path, "styled-shapes judge")
    judge = ShapesJudge.from_metadata(meta)
    load_state_dict_strict(judge, state, what=f"styled-shapes judge weights {path}")
    return judge.to(map_location).eval().requires_grad_(False)


@buildable
def load_depth_net(path: str | Path | None = None, map_location="cpu") -> DepthNet:
    """The committed judge's :class:`DepthNet` alone (Gen-1's depth estimator at CPU scale), frozen."""
    return load_shapes_judge(path, map_location).depth


@buildable
def load_style_net(path: str | Path | None = None, map_location="cpu") -> StyleNet:
    """A bare :class:`StyleNet` (default: the committed content encoder), eval mode, gradients off."""
    from shared.nn.weights import load_state_dict_strict

    path = Path(path) if path else DEFAULT_CONTENT_ENCODER_PATH
    state, meta = _read(path, "style net")
    net = StyleNet(**{k: int(meta[k]) for k in StyleNet._ARCH_KEYS if k in meta})
    load_state_dict_strict(net, state, what=f"style net weights {path}")
    return net.to(map_location).eval().requires_grad_(False)


def shapes_judge_sha256(path: str | Path | None = None) -> str:
    return hashlib.sha256(Path(path or DEFAULT_SHAPES_JUDGE_PATH).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _default() -> ShapesJudge:
    return load_shapes_judge()


def _judge(judge: ShapesJudge | None) -> ShapesJudge:
    return _default() if judge is None else judge


@torch.no_grad()
def _batched(fn, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([fn(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])


def style_logits(x: torch.Tensor, judge: ShapesJudge | None = None) -> torch.Tensor:
    """(N*T, num_styles) logits of every frame of videos (or frames)."""
    return _batched(_judge(judge).style, frames_of(x).float())


def style_features(x: torch.Tensor, judge: ShapesJudge | None = None) -> torch.Tensor:
    """(N*T, feature_dim) penultimate style features of every frame (the per-frame ``FD_judge``'s features)."""
    return _batched(_judge(judge).style.features, frames_of(x).float())


def style_accuracy(videos: torch.Tensor, styles: torch.Tensor, judge: ShapesJudge | None = None) -> float:
    """Fraction of frames whose style the judge classifies as ``styles`` (one style index per video)."""
    styles = torch.as_tensor(styles).long().cpu()
    t = videos.shape[2] if videos.dim() == 5 else 1
    pred = style_logits(videos, judge).argmax(dim=1)
    return float((pred == styles.repeat_interleave(t)).float().mean())


def estimate_depth(videos: torch.Tensor, judge: ShapesJudge | None = None) -> torch.Tensor:
    """The judge's depth of every frame: (B, T, H, W) for videos, (N, H, W) for frames."""
    d = _batched(_judge(judge).depth, frames_of(videos).float())
    if videos.dim() == 5:
        b, _, t, h, w = videos.shape
        return d.reshape(b, t, h, w)
    return d


def depth_rmse(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> float | torch.Tensor:
    """Root-mean-square difference of two depth sets (B, ...) over all pixels: per item with ``reduction="none"``,
    else the mean of the per-item values."""
    if a.shape != b.shape:
        raise ValueError(f"depth maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    per = (a.float() - b.float()).pow(2).flatten(1).mean(1).sqrt()
    return per if reduction == "none" else float(per.mean())


def depth_edges(depth: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Depth discontinuities as the world marks its ``edges``: a pixel whose 4-neighbour's depth differs by more
    than ``threshold`` (both sides of the jump). (..., H, W) -> bool (..., H, W)."""
    e = torch.zeros(depth.shape, dtype=torch.bool, device=depth.device)
    h = (depth[..., :, 1:] - depth[..., :, :-1]).abs() > threshold
    v = (depth[..., 1:, :] - depth[..., :-1, :]).abs() > threshold
    e[..., :, 1:] |= h
    e[..., :, :-1] |= h
    e[..., 1:, :] |= v
    e[..., :-1, :] |= v
    return e


def edge_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of two edge maps over all pixels (pooled)."""
    p, t = pred.bool(), target.bool()
    tp = float((p & t).sum())
    prec = tp / max(float(p.sum()), 1.0)
    rec = tp / max(float(t.sum()), 1.0)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def fd_frames(generated: torch.Tensor, reference: torch.Tensor | tuple, judge: ShapesJudge | None = None) -> float:
    """Per-frame ``FD_judge``: Fréchet distance of the style features of every frame of ``generated`` to those of
    ``reference`` (videos/frames, or precomputed ``gaussian_stats``)."""
    mu, sigma = gaussian_stats(style_features(generated, judge))
    ref = reference if isinstance(reference, tuple) else gaussian_stats(style_features(reference, judge))
    return frechet_distance(mu, sigma, *ref)
