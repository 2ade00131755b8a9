"""The 8x8 handwritten digits bundled with scikit-learn, as an image dataset.

``sklearn.datasets.load_digits`` ships 1,797 grey 8x8 images (pixel values 0..16, 10 classes)
inside the package, so this world needs no download. Pixels map linearly to ``[-1, 1]``
(0 -> -1 background, 16 -> +1 ink) and are upscaled to ``size`` with bilinear interpolation
(``align_corners=False``, antialias off), one channel.

Splits come from one fixed permutation of all 1,797 images drawn from ``seed``:
the first 70% is ``"train"``, the next 15% ``"val"``, the last 15% ``"test"`` (1258/270/269
images). ``"real_a"`` and ``"real_b"`` are the two disjoint halves of the held-out images
(``val`` + ``test``, 269 and 270 images): Fréchet distances between them give the
"real vs real" floor a generative model's FD is read against (``real_splits``). ``"all"`` is
every image. The committed digits judge (``shared.metrics.judge``) is trained on the
``seed=0`` train split, so evaluate it on ``seed=0`` held-out splits only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SPLITS", "NUM_DIGITS", "load_digit_tensors", "split_indices", "DigitsDataset", "real_splits"]

SPLITS = ("train", "val", "test", "real_a", "real_b", "all")
NUM_DIGITS = 1797
_TRAIN_FRACTION, _VAL_FRACTION = 0.70, 0.15


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return images, labels


def load_digit_tensors(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(N, 1, size, size)`` float32 in ``[-1, 1]`` and ``(N,)`` labels."""
    images, labels = _load_raw()
    x = (images / 8.0 - 1.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.contiguous(), labels.clone()


def split_indices(split: str, seed: int = 0) -> torch.Tensor:
    """Indices (into ``load_digit_tensors``) of ``split``, fixed by ``seed``; see module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; choose one of {', '.join(SPLITS)}")
    perm = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(int(seed)))
    if split == "all":
        return torch.arange(NUM_DIGITS)
    n_train = round(_TRAIN_FRACTION * NUM_DIGITS)
    n_val = round(_VAL_FRACTION * NUM_DIGITS)
    held_out = perm[n_train:]
    half = held_out.numel() // 2
    return {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
        "real_a": held_out[:half],
        "real_b": held_out[half:],
    }[split]


class DigitsDataset(Dataset):
    """sklearn digits, items ``{"x": (1, size, size) float32 in [-1, 1], "y": long}``.

    Args:
        split: one of ``SPLITS``.
        size: output side length (8 = native; 16, 32 upscale bilinearly).
        seed: seed of the split permutation (keep 0 to stay disjoint from the judge's training set).
        classes: keep only these digit classes (labels keep their digit value), e.g. ``[3]``.
    """

    def __init__(
        self, split: str = "train", size: int = 8, seed: int = 0, classes: Sequence[int] | None = None
    ):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"data.size must be a positive integer, got {size!r}")
        x, y = load_digit_tensors(size)
        idx = split_indices(split, seed)
        if classes is not None:
            keep = torch.isin(y[idx], torch.as_tensor(list(classes), dtype=torch.long))
            idx = idx[keep]
            if idx.numel() == 0:
                raise ValueError(f"digits split {split!r} has no images of classes {list(classes)}")
        self.split, self.size, self.seed = split, size, seed
        self.classes = None if classes is None else [int(c) for c in classes]
        self.indices = idx
        self.images = x[idx].contiguous()  # (N, 1, size, size)
        self.labels = y[idx].contiguous()  # (N,)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.images[i], "y": self.labels[i]}


def real_splits(size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``real_a`` and ``real_b`` (disjoint halves of the held-out digits), for the
    real-vs-real Fréchet distance floor."""
    return DigitsDataset("real_a", size, seed).images, DigitsDataset("real_b", size, seed).images
