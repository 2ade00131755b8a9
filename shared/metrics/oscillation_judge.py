"""The oscillating-scenes video judge: a small two-stream network whose features give ``FVD_judge`` on the
OscillatingScenes world (`shared.data.oscillating_scenes`, the world of Generative Image Dynamics).

Like the MovingDigits judge (`shared.metrics.video_judge`), it stands in for I3D where no pretrained video network
is available offline: ``FVD_judge`` is the Fréchet distance between its penultimate features of two video sets
(`shared.metrics.video_judge.fvd_judge` accepts it as ``judge=``). Its heads are trained on what the world knows
about each clip — which object types it shows (multi-label), the frequency bin that carries most of its motion
energy (the spectral volume's dominant band ``k >= 1``), and the size of its motion (the largest displacement, in
classes) — so its features have to read appearance, the *rhythm* of the motion and its amplitude. It is never
shown temporally corrupted clips: that it separates real clips from the same clips with their frames shuffled is
checked afterwards, on held-out scenes (`shared/metrics/weights/oscillating_scenes_judge.json`).

Input protocol: videos (B, 3, T, H, W) in [-1, 1], T >= 2, any T (the motion stream pools over ``segments``
ordered time segments); frames are resized to ``resolution`` (32, the world's size) if needed. Compare
FVD_judge only between sets of the same T.

Weights: ``shared/metrics/weights/oscillating_scenes_judge.safetensors`` (architecture in its metadata), re-trained
deterministically on CPU by ``python -m shared.metrics.train_oscillation_judge``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DEFAULT_OSCILLATION_JUDGE_PATH", "OscillationJudge", "load_oscillation_judge", "RETRAIN_COMMAND"]

DEFAULT_OSCILLATION_JUDGE_PATH = Path(__file__).resolve().parent / "weights" / "oscillating_scenes_judge.safetensors"
RETRAIN_COMMAND = "python -m shared.metrics.train_oscillation_judge"


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class OscillationJudge(nn.Module):
    """Appearance + motion streams -> linear(feature_dim) [the features] -> SiLU -> three heads.

    - appearance: a 2D CNN (r -> r/2 -> r/4) on ``appearance_frames`` evenly spaced frames, mean and max over
      space, averaged over those frames;
    - motion: frames resized to ``motion_resolution`` (antialiased: sub-pixel motion stays an intensity change),
      per-frame 2D convs (m -> m/2) on [frame, x_{t+1} - x_t] (colour kept: objects differ by colour), a 3D conv
      (time and space halved), space averaged, time pooled into ``segments`` ordered segments.
    Heads: ``types`` (multi-label logits over the world's object types), ``frequency`` (dominant band ``1..K-1``),
    ``amplitude`` (motion-size class).
    """

    _ARCH_KEYS = ("appearance_width", "motion_width", "feature_dim", "num_types", "num_bands", "num_amplitudes",
                  "resolution", "motion_resolution", "appearance_frames", "segments")

    def __init__(self, appearance_width: int = 32, motion_width: int = 16, feature_dim: int = 64,
                 num_types: int = 4, num_bands: int = 15, num_amplitudes: int = 4, resolution: int = 32,
                 motion_resolution: int = 16, appearance_frames: int = 4, segments: int = 4):
        super().__init__()
        wa, wm = int(appearance_width), int(motion_width)
        self.appearance_width, self.motion_width, self.feature_dim = wa, wm, int(feature_dim)
        self.num_types, self.num_bands, self.num_amplitudes = int(num_types), int(num_bands), int(num_amplitudes)
        self.resolution, self.motion_resolution = int(resolution), int(motion_resolution)
        self.appearance_frames, self.segments = int(appearance_frames), int(segments)
        self.appearance = nn.Sequential(
            nn.Conv2d(3, wa, 3, padding=1), _gn(wa), nn.SiLU(),
            nn.Conv2d(wa, 2 * wa, 3, stride=2, padding=1), _gn(2 * wa), nn.SiLU(),
            nn.Conv2d(2 * wa, 2 * wa, 3, stride=2, padding=1), _gn(2 * wa), nn.SiLU(),
        )  # fmt: skip
        self.motion_2d = nn.Sequential(
            nn.Conv2d(6, wm, 3, padding=1), _gn(wm), nn.SiLU(),
            nn.Conv2d(wm, 2 * wm, 3, stride=2, padding=1), _gn(2 * wm), nn.SiLU(),
        )  # fmt: skip
        self.motion_3d = nn.Sequential(nn.Conv3d(2 * wm, 4 * wm, 3, stride=2, padding=1), _gn(4 * wm), nn.SiLU())
        self.feature = nn.Linear(4 * wa + 4 * wm * self.segments, self.feature_dim)
        self.types_head = nn.Linear(self.feature_dim, self.num_types)
        self.frequency_head = nn.Linear(self.feature_dim, self.num_bands)
        self.amplitude_head = nn.Linear(self.feature_dim, self.num_amplitudes)

    def metadata(self) -> dict[str, str]:
        """Architecture as safetensors metadata (str -> str)."""
        return {"arch": "OscillationJudge", **{k: str(getattr(self, k)) for k in self._ARCH_KEYS}}

    def prepare(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"the oscillation judge expects (B, 3, T, H, W) videos in [-1, 1], got "
                             f"{tuple(videos.shape)}")
        x = videos.float()
        b, c, t, h, w = x.shape
        if t < 2:
            raise ValueError("the oscillation judge needs at least 2 frames")
        r = self.resolution
        if (h, w) != (r, r):
            f = x.transpose(1, 2).reshape(b * t, c, h, w)
            f = F.interpolate(f, size=(r, r), mode="bilinear", align_corners=False, antialias=h > r or w > r)
            x = f.reshape(b, t, c, r, r).transpose(1, 2)
        return x

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        x = self.prepare(videos)  # (B, 3, T, r, r)
        b, c, t, r, _ = x.shape
        idx = torch.linspace(0, t - 1, self.appearance_frames).round().long()
        fa = self.appearance(x[:, :, idx].transpose(1, 2).reshape(b * len(idx), c, r, r))
        fa = torch.cat([fa.mean(dim=(2, 3)), fa.amax(dim=(2, 3))], dim=1).reshape(b, len(idx), -1).mean(dim=1)
        m = self.motion_resolution
        xm = x.transpose(1, 2).reshape(b * t, c, r, r)
        if m != r:
            xm = F.interpolate(xm, size=(m, m), mode="bilinear", align_corners=False, antialias=m < r)
        xm = xm.reshape(b, t, c, m, m).transpose(1, 2)
        diff = torch.cat([xm[:, :, 1:] - xm[:, :, :-1], torch.zeros_like(xm[:, :, :1])], dim=2)
        fm = self.motion_2d(torch.cat([xm, diff], dim=1).transpose(1, 2).reshape(b * t, 2 * c, m, m))
        fm = self.motion_3d(fm.reshape(b, t, *fm.shape[1:]).transpose(1, 2))
        fm = F.adaptive_avg_pool3d(fm, (self.segments, 1, 1)).flatten(1)
        return self.feature(torch.cat([fa, fm], dim=1))

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(videos)
        a = F.silu(f)
        return {"features": f, "types": self.types_head(a), "frequency": self.frequency_head(a),
                "amplitude": self.amplitude_head(a)}


def load_oscillation_judge(path: str | Path | None = None, map_location: str | torch.device = "cpu"
                           ) -> OscillationJudge:
    """The committed judge (or the one at ``path``), eval mode, gradients off; one-line errors for a missing file
    or mismatched tensors (`shared.nn.weights`)."""
    from shared.nn.weights import load_state_dict_strict, read_safetensors

    path = Path(path) if path else DEFAULT_OSCILLATION_JUDGE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"oscillation judge weights not found at '{path}'; re-train them with "
                                f"`{RETRAIN_COMMAND}`")
    state, meta = read_safetensors(path, "oscillation judge weights")
    judge = OscillationJudge(**{k: int(meta[k]) for k in OscillationJudge._ARCH_KEYS if k in meta})
    load_state_dict_strict(judge, state, what=f"oscillation judge weights {path}")
    return judge.to(map_location).eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def default_oscillation_judge() -> OscillationJudge:
    return load_oscillation_judge()
