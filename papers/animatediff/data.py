"""Subsets of the MovingDigits world for AnimateDiff's stages (paper-local: digit "domains" and motion subsets).

AnimateDiff trains its motion module on a general video corpus (WebVid) and plugs it into image models
personalised on a small domain (DreamBooth / LoRA fine-tunes), and MotionLoRA learns a new motion pattern from
a handful of reference clips (Sec. 4.3). At CPU scale the corpus, the domains and the new motion are subsets of
the MovingDigits world: :class:`MovingDigitsSubset` keeps the first ``n`` videos of a
:class:`~shared.data.video_worlds.MovingDigits` world whose digit lies in ``digits`` and whose (initial) motion
direction lies in ``directions`` (None = any), and can yield single frames for image-model training.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.data.video_worlds import MovingDigits, _frame_item


class MovingDigitsSubset(Dataset):
    """The first ``n`` videos of ``MovingDigits(**world_kwargs)`` with digit in ``digits`` and direction in
    ``directions``; ``frames_only`` yields one frame per item (drawn from ``(seed, index)``), as
    :class:`~shared.data.video_worlds.VideoFrames` does. Items are pure functions of the arguments."""

    per_frame_keys = MovingDigits.per_frame_keys

    def __init__(self, n: int, digits: Sequence[int] | None = None, directions: Sequence[int] | None = None,
                 frames_only: bool = False, frames: int = 8, size: int = 16, digit_size: int | None = None,
                 num_digits: int = 1, speeds: Sequence[int] = (1, 2), seed: int = 0, split: str = "train",
                 max_scan: int = 200_000):
        if num_digits != 1:
            raise ValueError("MovingDigitsSubset filters single-digit videos (num_digits=1)")
        self.world = MovingDigits(n=max_scan, frames=frames, size=size, digit_size=digit_size, num_digits=1,
                                  speeds=speeds, seed=seed, split=split)
        self.digits = None if digits is None else {int(d) for d in digits}
        self.directions = None if directions is None else {int(d) for d in directions}
        self.frames_only, self.seed, self.frames = bool(frames_only), int(seed), int(frames)
        self.indices: list[int] = []
        for i in range(max_scan):
            if len(self.indices) == n:
                break
            digit, direction = self._labels(i)
            keep_digit = self.digits is None or digit in self.digits
            if keep_digit and (self.directions is None or direction in self.directions):
                self.indices.append(i)
        if len(self.indices) < n:
            raise ValueError(f"only {len(self.indices)} of {n} videos match digits={digits} directions={directions}")

    def _labels(self, i: int) -> tuple[int, int]:
        # The world's first draws for video i (MovingDigits.video): digit image index, then direction.
        rng = self.world._rng(i)
        j = int(rng.integers(len(self.world._labels)))
        direction = int(rng.integers(8))
        return int(self.world._labels[j]), direction

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        item = self.world.video(self.indices[index])
        if self.frames_only:
            t = int(np.random.default_rng([self.seed, 7, int(index)]).integers(self.frames))
            return _frame_item(item, t, self.per_frame_keys)
        item.pop("frame_caption", None)
        return item


def stack_items(ds: Dataset, keys: Sequence[str] = ("x", "y", "direction")) -> dict[str, torch.Tensor]:
    """All items of a (small) dataset stacked per key."""
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in keys}
