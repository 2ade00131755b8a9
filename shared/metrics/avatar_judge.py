"""Avatar judges: small CNNs trained on the avatar worlds whose heads and features score generated avatars.

Where no pretrained face / pose network is available offline (DESIGN.md, "Judges"), one frame-level network per
world stands in for the instruments the papers use (Animate Anyone: PSNR/SSIM/LPIPS/FVD against ground truth;
EMO: F-SIM identity features, SyncNet lip sync, FVD), trained on that world's ground truth:

* **puppets** (``shared.data.puppets.Puppets``): ``identity`` logits (the appearance judge: which of the
  identities wears these clothes) and ``keypoints`` — the 14 OpenPose keypoints (x, y) normalised to [0, 1]
  (the pose judge);
* **talking faces** (``shared.data.talking_faces.TalkingFaces``): ``identity`` logits, ``mouth_open`` (the
  ground-truth mouth opening in [0, 1]: the lip-sync judge) and ``head_pose`` (yaw, pitch, roll in radians: the
  head-motion speed judge).

Architecture: conv(w0)-conv(w0)-pool-conv(w1)-conv(w1)-pool-conv(w2)-pool (each conv followed by GroupNorm(8) and
SiLU), flattened -> linear(feature_dim) [the
*features*] -> SiLU -> one linear head per target. Frames ``(N, 3, H, W)`` in [-1, 1] are resized to the judge's
``resolution`` (bilinear, antialias when shrinking). Features are centred and scaled by one number on the
training frames (as the digits judge's), so ``FD_judge`` is in a fixed unit.

Scores: :func:`identity_accuracy`, :func:`keypoint_error`, :func:`mouth_opening`, :func:`head_speed`,
``FD_judge`` (:func:`fd_avatar`: Fréchet distance of per-frame features) and ``FVD_judge`` (:func:`fvd_avatar`:
Fréchet distance of per-video features = the mean of the frame features and the mean absolute change of the frame
features between consecutive frames, so both appearance and its temporal behaviour count; report it as
``FVD_judge``, never as FVD).

Weights: ``shared/metrics/weights/{puppets,talking_faces}_judge.safetensors`` (architecture and head layout in
the metadata) with a JSON training record beside each (held-out accuracy and the separation checks);
``python -m shared.metrics.train_avatar_judge --world puppets|talking_faces`` re-trains them deterministically.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.metrics.frechet import frechet_distance, gaussian_stats

__all__ = ["AvatarJudge", "WEIGHTS", "RETRAIN_COMMAND", "judge_path", "load_avatar_judge", "avatar_judge_sha256",
           "judge_outputs", "frame_features", "video_features", "identity_accuracy", "keypoint_error",
           "mouth_opening", "head_speed", "fd_avatar", "fvd_avatar", "pearson", "ranks", "spearman"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
RETRAIN_COMMAND = "python -m shared.metrics.train_avatar_judge --world {world}"
WORLDS = ("puppets", "talking_faces")


def judge_path(world: str) -> Path:
    if world not in WORLDS:
        raise ValueError(f"no avatar judge for world {world!r}; choose one of {WORLDS}")
    return WEIGHTS / f"{world}_judge.safetensors"


class AvatarJudge(nn.Module):
    """Frame CNN with named heads (``heads``: name -> output size); see the module docstring."""

    def __init__(self, heads: dict[str, int], widths: tuple[int, int, int] = (32, 64, 96), feature_dim: int = 128,
                 resolution: int = 16):
        super().__init__()
        if resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
        if not heads:
            raise ValueError("an avatar judge needs at least one head")
        w0, w1, w2 = (int(w) for w in widths)
        self.widths, self.feature_dim, self.resolution = (w0, w1, w2), int(feature_dim), int(resolution)
        self.head_sizes = {str(k): int(v) for k, v in heads.items()}

        def conv(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU()]

        self.body = nn.Sequential(*conv(3, w0), *conv(w0, w0), nn.AvgPool2d(2), *conv(w0, w1), *conv(w1, w1),
                                  nn.AvgPool2d(2), *conv(w1, w2), nn.AvgPool2d(2), nn.Flatten())
        self.feature = nn.Linear(w2 * (resolution // 8) ** 2, feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, v) for k, v in self.head_sizes.items()})
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def metadata(self) -> dict[str, str]:
        return {"arch": "AvatarJudge", "widths": ",".join(map(str, self.widths)), "feature_dim": str(self.feature_dim),
                "resolution": str(self.resolution), "heads": json.dumps(self.head_sizes)}

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"an avatar judge expects frames (N, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
        x = frames.float()
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            shrink = max(x.shape[-2:]) > self.resolution
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def raw_features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.feature(self.body(self.prepare(frames)))

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"features": normalised features, <head>: outputs}`` of ``(N, 3, H, W)`` frames."""
        f = self.raw_features(frames)
        h = F.silu(f)
        out = {k: head(h) for k, head in self.heads.items()}
        out["features"] = (f - self.feature_mean) * self.feature_scale
        return out

    @torch.no_grad()
    def calibrate(self, frames: torch.Tensor) -> None:
        f = torch.cat([self.raw_features(frames[i:i + 512]) for i in range(0, len(frames), 512)])
        self.feature_mean.copy_(f.mean(0))
        self.feature_scale.copy_(f.var(0).mean().rsqrt())


def load_avatar_judge(world: str | None = None, path: str | Path | None = None) -> AvatarJudge:
    """The committed judge of ``world`` (or the file at ``path``), eval mode, gradients off."""
    from shared.nn.weights import load_state_dict_strict, read_safetensors

    if path is None and world is None:
        raise ValueError("load_avatar_judge needs a world or a path")
    path = Path(path) if path else judge_path(world)
    if not path.is_file():
        cmd = RETRAIN_COMMAND.format(world=world or "<world>")
        raise FileNotFoundError(f"avatar judge weights not found at '{path}'; re-train them with `{cmd}`")
    state, meta = read_safetensors(path, "avatar judge weights")
    if meta.get("arch") != "AvatarJudge":
        raise ValueError(f"{path} is not an AvatarJudge file (metadata arch={meta.get('arch')!r})")
    judge = AvatarJudge(heads=json.loads(meta["heads"]), widths=tuple(int(w) for w in meta["widths"].split(",")),
                        feature_dim=int(meta["feature_dim"]), resolution=int(meta["resolution"]))
    load_state_dict_strict(judge, state, what=f"avatar judge weights {path}")
    return judge.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _cached(world: str) -> AvatarJudge:
    return load_avatar_judge(world)


def avatar_judge_sha256(world: str | None = None, path: str | Path | None = None) -> str:
    return hashlib.sha256(Path(path or judge_path(world)).read_bytes()).hexdigest()


def _frames(videos: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, 3, T, H, W) -> ((B*T, 3, H, W), B, T); images (B, 3, H, W) pass with T = 1."""
    if videos.ndim == 4:
        return videos, videos.shape[0], 1
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos (B, 3, T, H, W) or frames (B, 3, H, W), got {tuple(videos.shape)}")
    b, c, t, h, w = videos.shape
    return videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), b, t


@torch.no_grad()
def judge_outputs(videos: torch.Tensor, judge: AvatarJudge, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Every head and the features per frame, shaped ``(B, T, ...)`` (``T = 1`` for images)."""
    frames, b, t = _frames(videos)
    was = judge.training
    judge.eval()
    try:
        outs = [judge(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    finally:
        judge.train(was)
    return {k: torch.cat([o[k] for o in outs]).reshape(b, t, -1).float() for k in outs[0]}


def frame_features(videos: torch.Tensor, judge: AvatarJudge) -> torch.Tensor:
    """(B*T, feature_dim) per-frame judge features (``FD_judge``)."""
    f = judge_outputs(videos, judge)["features"]
    return f.reshape(-1, f.shape[-1])


def video_features(videos: torch.Tensor, judge: AvatarJudge) -> torch.Tensor:
    """(B, 2 feature_dim): mean frame feature and mean |change| of frame features between frames (``FVD_judge``)."""
    f = judge_outputs(videos, judge)["features"]
    if f.shape[1] < 2:
        raise ValueError("video features need at least 2 frames")
    return torch.cat([f.mean(1), (f[:, 1:] - f[:, :-1]).abs().mean(1)], dim=1)


def identity_accuracy(videos: torch.Tensor, identity: torch.Tensor, judge: AvatarJudge,
                      reduction: str = "mean", candidates=None) -> float | torch.Tensor:
    """Share of frames the judge assigns to ``identity`` (one label per video). ``candidates`` (identity indices):
    the judge chooses among these alone (its argmax over their logits; chance ``1 / len(candidates)``), e.g. "which
    of the held-out identities is it" — every ``identity`` must be one of them."""
    logits = judge_outputs(videos, judge)["identity"]
    identity = identity.long().reshape(-1, 1)
    if candidates is None:
        pred = logits.argmax(-1)
    else:
        cand = torch.as_tensor(list(candidates), dtype=torch.long).reshape(-1)
        n = logits.shape[-1]
        if cand.numel() == 0 or bool(((cand < 0) | (cand >= n)).any()):
            raise ValueError(f"candidates must be identity indices in [0, {n}), got {cand.tolist()}")
        missing = sorted(set(identity.flatten().tolist()) - set(cand.tolist()))
        if missing:
            raise ValueError(f"candidates {cand.tolist()} miss identities {missing}")
        pred = cand[logits[..., cand].argmax(-1)]
    hit = (pred == identity).float()  # (B, T)
    return hit.mean(1) if reduction == "none" else float(hit.mean())


def keypoint_error(videos: torch.Tensor, keypoints: torch.Tensor, judge: AvatarJudge,
                   reduction: str = "mean") -> float | torch.Tensor:
    """Mean Euclidean distance (in units of the canvas side) between the judge's keypoints and ``keypoints``
    ``(B, T, K, 2)`` normalised to [0, 1]."""
    pred = judge_outputs(videos, judge)["keypoints"]
    b, t = pred.shape[:2]
    kp = keypoints.reshape(b, t, -1, 2).float()
    err = (pred.reshape(b, t, -1, 2) - kp).norm(dim=-1).mean(dim=(1, 2))
    return err if reduction == "none" else float(err.mean())


def mouth_opening(videos: torch.Tensor, judge: AvatarJudge) -> torch.Tensor:
    """(B, T) judged mouth opening."""
    return judge_outputs(videos, judge)["mouth_open"][..., 0]


def head_speed(videos: torch.Tensor, judge: AvatarJudge) -> torch.Tensor:
    """(B,) judged head speed: mean Euclidean norm of the change of (yaw, pitch, roll) between frames, rad/frame."""
    pose = judge_outputs(videos, judge)["head_pose"]
    if pose.shape[1] < 2:
        raise ValueError("head speed needs at least 2 frames")
    return (pose[:, 1:] - pose[:, :-1]).norm(dim=-1).mean(1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis (NaN-free: a constant series gives 0)."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(den > 1e-12, (a * b).sum(-1) / den.clamp_min(1e-12), torch.zeros_like(den)).float()


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis, ties sharing their average rank (0-based)."""
    x = x.double()
    less = (x[..., None, :] < x[..., :, None]).sum(-1).double()
    equal = (x[..., None, :] == x[..., :, None]).sum(-1).double()
    return less + (equal - 1) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D series (ties averaged; 0 when either is constant)."""
    return float(pearson(ranks(a.flatten()), ranks(b.flatten())))


def fd_avatar(generated: torch.Tensor, reference: torch.Tensor | tuple, judge: AvatarJudge) -> float:
    """``FD_judge``: Fréchet distance of per-frame judge features (``reference``: videos or ``gaussian_stats``)."""
    mu, sigma = gaussian_stats(frame_features(generated, judge))
    ref = reference if isinstance(reference, tuple) else gaussian_stats(frame_features(reference, judge))
    return frechet_distance(mu, sigma, *ref)


def fvd_avatar(generated: torch.Tensor, reference: torch.Tensor | tuple, judge: AvatarJudge) -> float:
    """``FVD_judge``: Fréchet distance of per-video judge features (see :func:`video_features`)."""
    mu, sigma = gaussian_stats(video_features(generated, judge))
    ref = reference if isinstance(reference, tuple) else gaussian_stats(video_features(reference, judge))
    return frechet_distance(mu, sigma, *ref)
