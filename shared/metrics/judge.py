"""The digits judge: a small CNN classifier on sklearn's 8x8 digits whose features stand in for
Inception-v3 where no pretrained network is available offline (DESIGN.md, "Judges").

Features are the 64-d penultimate layer (before its ReLU), centred and scaled by one number so
that on the digits train split they have zero mean and unit average per-dimension variance
(fixed buffers computed once after training; FD is translation invariant, so this only sets the
unit: FD_judge between the two real held-out halves is ~1.4). ``FD_judge`` is the Fréchet distance
(``shared.metrics.frechet``) between judge features of two image sets, reported as ``FD_judge``,
never as FID. The judge takes 1-channel images in ``[-1, 1]`` of any size and resizes them to its
training resolution (16x16) internally: bilinear, ``align_corners=False``, antialias when
shrinking, which for 8x8 inputs equals ``DigitsDataset(size=16)``'s upscaling.

Weights are committed in ``shared/metrics/weights/digits_judge.safetensors`` (architecture in its
metadata) with a JSON training record beside it; ``python -m shared.metrics.train_judge``
re-trains them deterministically on the ``seed=0`` digits train split.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.metrics.frechet import frechet_distance, gaussian_stats

__all__ = [
    "DEFAULT_JUDGE_PATH",
    "DigitsJudge",
    "load_judge",
    "judge_features",
    "judge_logits",
    "judge_accuracy",
    "fd_judge",
    "real_floor_spread",
]

DEFAULT_JUDGE_PATH = Path(__file__).resolve().parent / "weights" / "digits_judge.safetensors"
RETRAIN_COMMAND = "python -m shared.metrics.train_judge"


class DigitsJudge(nn.Module):
    """conv(w0)-conv(w0)-pool-conv(w1)-pool -> linear(feature_dim) -> ReLU -> linear(num_classes)."""

    def __init__(
        self,
        widths: tuple[int, int] = (32, 64),
        feature_dim: int = 64,
        num_classes: int = 10,
        resolution: int = 16,
    ):
        super().__init__()
        if resolution % 4:
            raise ValueError(f"resolution must be a multiple of 4, got {resolution}")
        w0, w1 = widths
        self.widths, self.feature_dim = (int(w0), int(w1)), int(feature_dim)
        self.num_classes, self.resolution = int(num_classes), int(resolution)
        self.body = nn.Sequential(
            nn.Conv2d(1, w0, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w0, w0, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w0, w1, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.feature = nn.Linear(w1 * (resolution // 4) ** 2, feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)
        # Feature normalisation (see module docstring), set by `calibrate`; logits ignore it.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def metadata(self) -> dict[str, str]:
        """Architecture as safetensors metadata (str -> str)."""
        return {
            "arch": "DigitsJudge",
            "widths": ",".join(map(str, self.widths)),
            "feature_dim": str(self.feature_dim),
            "num_classes": str(self.num_classes),
            "resolution": str(self.resolution),
        }

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check ``(N, 1, H, W)`` and resize to the judge's resolution."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"the digits judge expects (N, 1, H, W) images in [-1, 1], got {tuple(images.shape)}"
            )
        x = images.float()
        h, w = x.shape[-2:]
        if (h, w) != (self.resolution, self.resolution):
            shrink = h > self.resolution or w > self.resolution
            x = F.interpolate(
                x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=shrink
            )
        return x

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.feature(self.body(self.prepare(images)))
        return (f - self.feature_mean) * self.feature_scale, self.head(self.dropout(F.relu(f)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        f = self.feature(self.body(self.prepare(images)))
        return (f - self.feature_mean) * self.feature_scale

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Set the feature normalisation from reference ``images`` (the train split)."""
        f = self.feature(self.body(self.prepare(images)))
        self.feature_mean.copy_(f.mean(dim=0))
        self.feature_scale.copy_(f.var(dim=0).mean().rsqrt())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]


def load_judge(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> DigitsJudge:
    """The committed judge (or the one at ``path``), in eval mode with gradients off.

    Raises ``FileNotFoundError`` if the file is missing and ``RuntimeError`` naming the keys if
    the tensors do not match the architecture in the file's metadata.
    """
    from shared.nn.weights import load_state_dict_strict, read_safetensors

    path = Path(path) if path is not None else DEFAULT_JUDGE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"digits judge weights not found at '{path}'; re-train them with `{RETRAIN_COMMAND}`"
        )
    state, meta = read_safetensors(path, "digits judge weights")
    judge = DigitsJudge(
        widths=tuple(int(w) for w in meta.get("widths", "32,64").split(",")),
        feature_dim=int(meta.get("feature_dim", 64)),
        num_classes=int(meta.get("num_classes", 10)),
        resolution=int(meta.get("resolution", 16)),
    )
    load_state_dict_strict(judge, state, what=f"digits judge weights {path}")
    return judge.to(map_location).eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def _default_judge() -> DigitsJudge:
    return load_judge()


def _judge_or_default(judge: DigitsJudge | None) -> DigitsJudge:
    return _default_judge() if judge is None else judge


@torch.no_grad()
def _batched(fn, images: torch.Tensor, judge: DigitsJudge, batch_size: int) -> torch.Tensor:
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    try:
        out = [
            fn(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)
        ]
    finally:
        judge.train(was_training)
    return torch.cat(out)


def judge_features(
    images: torch.Tensor, judge: DigitsJudge | None = None, batch_size: int = 256
) -> torch.Tensor:
    """``(N, feature_dim)`` judge features of ``(N, 1, H, W)`` images in ``[-1, 1]``."""
    judge = _judge_or_default(judge)
    return _batched(judge.features, images, judge, batch_size)


def judge_logits(
    images: torch.Tensor, judge: DigitsJudge | None = None, batch_size: int = 256
) -> torch.Tensor:
    """``(N, num_classes)`` judge logits of ``(N, 1, H, W)`` images in ``[-1, 1]``."""
    judge = _judge_or_default(judge)
    return _batched(judge, images, judge, batch_size)


def judge_accuracy(
    images: torch.Tensor, labels: torch.Tensor, judge: DigitsJudge | None = None, batch_size: int = 256
) -> float:
    """Fraction of ``images`` the judge classifies as ``labels`` (e.g. class-conditional samples)."""
    pred = judge_logits(images, judge, batch_size).argmax(dim=1)
    return float((pred == labels.cpu().long()).float().mean())


def fd_judge(
    generated: torch.Tensor,
    reference: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    judge: DigitsJudge | None = None,
    batch_size: int = 256,
) -> float:
    """``FD_judge``: Fréchet distance between judge features of ``generated`` and ``reference``
    images; ``reference`` may also be precomputed ``gaussian_stats`` of judge features."""
    mu_g, sigma_g = gaussian_stats(judge_features(generated, judge, batch_size))
    if isinstance(reference, tuple):
        mu_r, sigma_r = reference
    else:
        mu_r, sigma_r = gaussian_stats(judge_features(reference, judge, batch_size))
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r)


def real_floor_spread(size: int = 8, draws: int = 200, seed: int = 0, judge: DigitsJudge | None = None) -> dict:
    """How noisy the real-vs-real "floor" is: FD_judge between two disjoint random halves of the held-out digits
    (``real_a`` ∪ ``real_b``, each half the size of ``real_a``), over ``draws`` random splits.

    The committed floor (``fd_judge_real_floor``) is ONE such split, and a model's FD_judge against ``real_b``
    with as many samples is an estimate with the same finite-sample error; so a model at or slightly below the
    floor is "indistinguishable from real data at this sample size", not "better than real". Returns ``mean``,
    ``std``, ``q05``, ``q95`` over the draws, the fixed split's value ``fixed``, and ``n``."""
    from shared.data.digits import real_splits

    a, b = real_splits(size=size)
    feats = torch.cat([judge_features(a, judge), judge_features(b, judge)]).double()
    n, g = len(a), torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in range(int(draws)):
        p = torch.randperm(len(feats), generator=g)
        vals.append(frechet_distance(*gaussian_stats(feats[p[:n]]), *gaussian_stats(feats[p[n:2 * n]])))
    v = torch.tensor(vals, dtype=torch.float64)
    fixed = frechet_distance(*gaussian_stats(feats[:n]), *gaussian_stats(feats[n:]))
    return {"mean": float(v.mean()), "std": float(v.std()), "q05": float(v.quantile(0.05)),
            "q95": float(v.quantile(0.95)), "fixed": float(fixed), "n": int(n), "draws": int(draws)}
