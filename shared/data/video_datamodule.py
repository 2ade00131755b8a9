"""LightningDataModule for video datasets, with optional joint image-video batches.

Joint training follows Video Diffusion Models (Ho et al. 2022, Sec. 3.2 / 4.3): each training video
gets ``extra_images`` independent frames, drawn from *other* videos of the dataset, appended along
time. The batch then holds

    x               (B, C, T + extra_images, H, W)
    frame_is_video  (B, T + extra_images) bool — True for the T frames of the clip, False for the
                    appended independent images

and a video model masks its temporal attention (each image frame attends only to itself) and
applies its temporal layers to the video frames only, so the images train the spatial layers as an
image model. Per-frame ground truth of the worlds (``mask``, ``depth``, ``positions``) keeps covering
the first T frames only; ``extra_y`` (B, extra_images) holds the labels of the image frames where
the dataset has ``y``. With ``extra_images=0`` (default) batches are the plain video batches and carry
no ``frame_is_video`` key.

The module is `shared.data.datamodule.ImageDataModule`: the training order is its
`StepBatchSampler` — batch ``s`` is a pure function of ``(seed, s)``, starting at the trainer's
``global_step`` — so a run resumed from any checkpoint sees exactly the batches (and clip starts)
an uninterrupted run would. Datasets with a ``set_epoch`` method (the readers' per-pass random clip
start, the joint frames' draws) receive the pass number with every index (`EpochIndexed`), not from
the training loop's epoch counter (which a resumed run may count differently); ``drop_last`` for
train; unshuffled evaluation. For an uninterrupted run the order is the one the per-epoch
``(seed, epoch)`` permutation gave before: same permutation, same batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shared.data.datamodule import EpochIndexed, EpochSeededSampler, ImageDataModule, StepBatchSampler

__all__ = ["DatasetEpochSampler", "JointImageVideo", "VideoDataModule"]


class DatasetEpochSampler(EpochSeededSampler):
    """`EpochSeededSampler` that also hands the epoch to datasets with a ``set_epoch`` method."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        super().__init__(len(dataset), seed)
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        # Outside Lightning the parent advances the epoch after each full pass; keep the dataset in step.
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(self.epoch)
        yield from super().__iter__()


class JointImageVideo(Dataset):
    """Appends ``extra_images`` frames of other videos to each video along T (see the module docstring).

    A frame comes from ``dataset.random_frame(j, rng)`` when the dataset has it (one decoded frame
    instead of a clip), else from ``dataset[j]["x"]`` at a random time. The other videos ``j != i``
    and the times are drawn from ``(seed, epoch, i)``.
    """

    def __init__(self, dataset: Dataset, extra_images: int, seed: int = 0):
        if extra_images < 1:
            raise ValueError(f"extra_images must be >= 1, got {extra_images}")
        if len(dataset) < 2:
            raise ValueError("joint image-video batches need at least 2 videos")
        self.dataset, self.extra_images, self.seed, self.epoch = dataset, int(extra_images), int(seed), 0
        self.per_frame_keys = tuple(getattr(dataset, "per_frame_keys", ()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _frame(
        self, j: int, rng: np.random.Generator, want_y: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Datasets with labels give the whole item so the image frame keeps its label (extra_y).
        if not want_y and callable(getattr(self.dataset, "random_frame", None)):
            return self.dataset.random_frame(j, rng), None
        item = self.dataset[j]
        t = int(rng.integers(item["x"].shape[1]))
        return item["x"][:, t], item.get("y")

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 7])
        n = len(self.dataset)
        frames, labels = [], []
        for _ in range(self.extra_images):
            j = int(rng.integers(n - 1))
            j += j >= index  # any video but this one
            f, y = self._frame(j, rng, want_y="y" in item)
            frames.append(f)
            labels.append(y)
        T = item["x"].shape[1]
        item["x"] = torch.cat([item["x"], torch.stack(frames, dim=1)], dim=1)
        item["frame_is_video"] = torch.arange(T + self.extra_images) < T
        if "y" in item and all(y is not None for y in labels):
            item["extra_y"] = torch.stack([torch.as_tensor(y) for y in labels])
        return item


class VideoDataModule(ImageDataModule):
    """`ImageDataModule` for video datasets, plus joint image-video batches (module docstring).

    Args:
        train, val, test: datasets or their ``_target_`` configs (Hydra builds nested ones).
        batch_size, val_batch_size, num_workers, seed, drop_last, pin_memory: as `ImageDataModule`
            (seeded ``(seed, epoch)`` train order, ``drop_last`` for train only).
        extra_images: independent frames of other videos appended to each train video along T.
        root, frames, stride, size: values the dataset configs interpolate (``${..root}`` ...), so
            one override reaches every split; kept here for the record only.

    When the train set has ``set_epoch`` (the readers' per-pass clip start, `JointImageVideo`), the
    pass number travels with each index (`EpochIndexed`), so persistent workers see the right one.
    """

    def __init__(
        self,
        train: Any,
        val: Any = None,
        test: Any = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        extra_images: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
        root: str | None = None,
        frames: int | None = None,
        stride: int | None = None,
        size: int | None = None,
    ):
        super().__init__(
            train,
            val,
            test,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            seed=seed,
            drop_last=drop_last,
            pin_memory=pin_memory,
            root=root,
            size=size,
        )
        self.frames, self.stride, self.extra_images = frames, stride, int(extra_images)
        if self.extra_images:
            self.train_set = JointImageVideo(self.train_set, self.extra_images, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        epoch_aware = callable(getattr(self.train_set, "set_epoch", None))
        sampler = StepBatchSampler(
            len(self.train_set),
            self.batch_size,
            self.seed,
            self.drop_last,
            step_fn=self._batches_done,
            rank_fn=self._rank_world,
            with_epoch=epoch_aware,
        )
        return DataLoader(
            EpochIndexed(self.train_set) if epoch_aware else self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
