"""The MovingDigits video judge: a small two-stream classifier whose features give ``FVD_judge``.

Where no pretrained video network is available offline (DESIGN.md, "Judges"), this classifier,
trained on the MovingDigits world (`shared.data.video_worlds.MovingDigits`), stands in for I3D
(Unterthiner et al. 2018 use I3D's pre-logit features for FVD): ``FVD_judge`` is the Fréchet
distance (`shared.metrics.frechet`) between its penultimate features of two video sets — report it
as ``FVD_judge``, never as FVD. Its two heads predict the digit class and the initial motion
direction (`DIRECTIONS8`), giving `digit_accuracy` and `motion_accuracy` of conditional samples.

Input protocol: videos (B, C, T, H, W) in [-1, 1] with T >= 2; colour is averaged to one channel and
frames are resized to 16x16 (bilinear, antialias when shrinking); T is kept. The judge is trained on
both world sizes later claim checks can afford — 16 frames at 32x32 (``MovingDigits(frames=16,
size=32)``, 16-pixel digits, shrunk here) and 8 frames at 16x16 (``MovingDigits(frames=8, size=16)``,
native) — and its pooling works for any T. Compare FVD_judge only between video sets of the same
protocol (T and size).

Weights: ``shared/metrics/weights/moving_digits_judge.safetensors`` (architecture in its metadata)
with a JSON training record beside it; ``python -m shared.metrics.train_video_judge`` re-trains
them deterministically on CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.metrics.frechet import frechet_distance, gaussian_stats

__all__ = [
    "DEFAULT_VIDEO_JUDGE_PATH",
    "VideoJudge",
    "load_video_judge",
    "video_judge_features",
    "video_judge_logits",
    "digit_accuracy",
    "motion_accuracy",
    "fvd_judge",
]

DEFAULT_VIDEO_JUDGE_PATH = Path(__file__).resolve().parent / "weights" / "moving_digits_judge.safetensors"
RETRAIN_COMMAND = "python -m shared.metrics.train_video_judge"


def judge_sha256(path: str | Path | None = None) -> str:
    """SHA-256 of the judge's weights file (the committed one if ``path`` is empty): results record which judge
    scored them."""
    import hashlib

    return hashlib.sha256(Path(path or DEFAULT_VIDEO_JUDGE_PATH).read_bytes()).hexdigest()


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class VideoJudge(nn.Module):
    """Two streams over 16x16 frames, concatenated -> linear(feature_dim) [the features] -> SiLU ->
    digit (10) and direction (8) heads.

    - appearance: a 2D CNN (16 -> 8 -> 4) on ``appearance_frames`` evenly spaced frames, mean and max
      over space (the digit can be anywhere), averaged over those frames;
    - motion: per-frame 2D convs (16 -> 8) on [frame, temporal difference x_{t+1} - x_t] (the
      difference hands the first layer the motion at full resolution), a 3D conv (8 -> 4, time
      halved), space averaged and time pooled into ``segments`` *ordered* segments — the label is
      the initial direction, so "which way first" must survive a bounce.
    """

    def __init__(
        self,
        appearance_width: int = 32,
        motion_width: int = 16,
        feature_dim: int = 128,
        num_digits: int = 10,
        num_directions: int = 8,
        resolution: int = 16,
        appearance_frames: int = 4,
        segments: int = 4,
    ):
        super().__init__()
        wa, wm = int(appearance_width), int(motion_width)
        self.appearance_width, self.motion_width, self.feature_dim = wa, wm, int(feature_dim)
        self.num_digits, self.num_directions = int(num_digits), int(num_directions)
        self.resolution, self.appearance_frames, self.segments = (
            int(resolution),
            int(appearance_frames),
            int(segments),
        )
        self.appearance = nn.Sequential(
            nn.Conv2d(1, wa, 3, padding=1), _gn(wa), nn.SiLU(),
            nn.Conv2d(wa, 2 * wa, 3, stride=2, padding=1), _gn(2 * wa), nn.SiLU(),
            nn.Conv2d(2 * wa, 2 * wa, 3, stride=2, padding=1), _gn(2 * wa), nn.SiLU(),
        )  # fmt: skip
        self.motion_2d = nn.Sequential(
            nn.Conv2d(2, wm, 3, padding=1), _gn(wm), nn.SiLU(),
            nn.Conv2d(wm, 2 * wm, 3, stride=2, padding=1), _gn(2 * wm), nn.SiLU(),
        )  # fmt: skip
        self.motion_3d = nn.Sequential(
            nn.Conv3d(2 * wm, 4 * wm, 3, stride=2, padding=1), _gn(4 * wm), nn.SiLU()
        )
        self.feature = nn.Linear(4 * wa + 4 * wm * self.segments, self.feature_dim)
        self.digit_head = nn.Linear(self.feature_dim, self.num_digits)
        self.direction_head = nn.Linear(self.feature_dim, self.num_directions)

    _ARCH_KEYS = (
        "appearance_width",
        "motion_width",
        "feature_dim",
        "num_digits",
        "num_directions",
        "resolution",
        "appearance_frames",
        "segments",
    )

    def metadata(self) -> dict[str, str]:
        """Architecture as safetensors metadata (str -> str)."""
        return {"arch": "VideoJudge", **{k: str(getattr(self, k)) for k in self._ARCH_KEYS}}

    def prepare(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [-1, 1] -> (B, 1, T, res, res): mean over colour, frames resized."""
        if videos.ndim != 5:
            raise ValueError(
                f"the video judge expects (B, C, T, H, W) videos in [-1, 1], got {tuple(videos.shape)}"
            )
        x = videos.float().mean(dim=1, keepdim=True)
        b, _, t, h, w = x.shape
        if t < 2:
            raise ValueError("the video judge needs at least 2 frames")
        r = self.resolution
        if (h, w) != (r, r):
            f = x.transpose(1, 2).reshape(b * t, 1, h, w)
            f = F.interpolate(f, size=(r, r), mode="bilinear", align_corners=False, antialias=h > r or w > r)
            x = f.reshape(b, t, 1, r, r).transpose(1, 2)
        return x

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        x = self.prepare(videos)  # (B, 1, T, r, r)
        b, _, t, r, _ = x.shape
        idx = torch.linspace(0, t - 1, self.appearance_frames).round().long()
        fa = self.appearance(x[:, :, idx].transpose(1, 2).reshape(b * len(idx), 1, r, r))
        fa = torch.cat([fa.mean(dim=(2, 3)), fa.amax(dim=(2, 3))], dim=1).reshape(b, len(idx), -1).mean(dim=1)
        diff = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)
        fm = self.motion_2d(torch.cat([x, diff], dim=1).transpose(1, 2).reshape(b * t, 2, r, r))
        fm = self.motion_3d(fm.reshape(b, t, *fm.shape[1:]).transpose(1, 2))  # (B, C, t/2, r/4, r/4)
        fm = F.adaptive_avg_pool3d(fm, (self.segments, 1, 1)).flatten(1)  # ordered in time
        return self.feature(torch.cat([fa, fm], dim=1))

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(videos)
        a = F.silu(f)
        return {"features": f, "digit": self.digit_head(a), "direction": self.direction_head(a)}


def load_video_judge(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> VideoJudge:
    """The committed video judge (or the one at ``path``), in eval mode with gradients off.

    Raises ``FileNotFoundError`` for a missing file and ``RuntimeError`` naming the missing,
    unexpected and mis-shaped keys if the tensors do not match the architecture in the metadata.
    """
    from shared.nn.weights import load_state_dict_strict, read_safetensors

    path = Path(path) if path is not None else DEFAULT_VIDEO_JUDGE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"video judge weights not found at '{path}'; re-train them with `{RETRAIN_COMMAND}`"
        )
    state, meta = read_safetensors(path, "video judge weights")
    judge = VideoJudge(**{k: int(meta[k]) for k in VideoJudge._ARCH_KEYS if k in meta})
    load_state_dict_strict(judge, state, what=f"video judge weights {path}")
    return judge.to(map_location).eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def _default_judge() -> VideoJudge:
    return load_video_judge()


@torch.no_grad()
def _run(videos: torch.Tensor, judge: VideoJudge | None, batch_size: int, key: str) -> torch.Tensor:
    judge = _default_judge() if judge is None else judge
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    try:
        out = [
            judge(videos[i : i + batch_size].to(device))[key].float().cpu()
            for i in range(0, len(videos), batch_size)
        ]
    finally:
        judge.train(was_training)
    return torch.cat(out)


def video_judge_features(
    videos: torch.Tensor, judge: VideoJudge | None = None, batch_size: int = 64
) -> torch.Tensor:
    """(N, feature_dim) penultimate judge features of videos (N, C, T, H, W) in [-1, 1]."""
    return _run(videos, judge, batch_size, "features")


def video_judge_logits(
    videos: torch.Tensor, head: str = "digit", judge: VideoJudge | None = None, batch_size: int = 64
) -> torch.Tensor:
    """(N, classes) logits of the ``"digit"`` or ``"direction"`` head."""
    if head not in ("digit", "direction"):
        raise ValueError(f"head must be 'digit' or 'direction', got {head!r}")
    return _run(videos, judge, batch_size, head)


def digit_accuracy(
    videos: torch.Tensor, digits: torch.Tensor, judge: VideoJudge | None = None, batch_size: int = 64
) -> float:
    """Fraction of videos whose digit the judge classifies as ``digits`` (N,)."""
    pred = video_judge_logits(videos, "digit", judge, batch_size).argmax(dim=1)
    return float((pred == torch.as_tensor(digits).cpu().long()).float().mean())


def motion_accuracy(
    videos: torch.Tensor, directions: torch.Tensor, judge: VideoJudge | None = None, batch_size: int = 64
) -> float:
    """Fraction of videos whose initial motion direction (`DIRECTIONS8` index) the judge gets right."""
    pred = video_judge_logits(videos, "direction", judge, batch_size).argmax(dim=1)
    return float((pred == torch.as_tensor(directions).cpu().long()).float().mean())


def fvd_judge(
    generated: torch.Tensor,
    reference: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    judge: VideoJudge | None = None,
    batch_size: int = 64,
) -> float:
    """``FVD_judge``: Fréchet distance between judge features of ``generated`` and ``reference``
    videos; ``reference`` may also be precomputed ``gaussian_stats`` of judge features."""
    mu_g, sigma_g = gaussian_stats(video_judge_features(generated, judge, batch_size))
    if isinstance(reference, tuple):
        mu_r, sigma_r = reference
    else:
        mu_r, sigma_r = gaussian_stats(video_judge_features(reference, judge, batch_size))
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
