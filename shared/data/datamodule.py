"""LightningDataModules over already-built datasets.

``ImageDataModule`` takes its datasets as objects (Hydra builds them from nested ``_target_``
nodes, see ``conf/data/*.yaml``) and serves train/val/test dataloaders of dict batches
(``{"x": ..., "y": ...}``). The training order is ``StepBatchSampler``: batch ``s`` is a pure
function of ``(seed, s)``, and each pass starts at the batch the trainer has reached
(``global_step``), so two runs with the same seed see the same batches and a run resumed from
any checkpoint, mid-epoch included, sees the batches an uninterrupted run would. Outside a
trainer the sampler counts the batches it has handed out itself, so a plain loop reshuffles each
pass. ``EpochSeededSampler`` (a ``(seed, epoch)`` permutation driven by ``set_epoch``) is the
per-item variant the video datamodule builds on. ``ToyDataModule`` is the same module over the
2D toy distributions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from shared.data.toys import ToyDataset

__all__ = ["EpochIndexed", "EpochSeededSampler", "StepBatchSampler", "ImageDataModule", "ToyDataModule"]


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(n)`` drawn from ``(seed, epoch)``.

    Lightning sets the epoch before each training epoch; outside Lightning the epoch advances by
    one each time the sampler is iterated to the end, so a plain loop also reshuffles.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.n, generator=g).tolist()
        self.epoch += 1


class StepBatchSampler(Sampler[list[int]]):
    """Training batches as a pure function of ``(seed, batch number)``, split across ranks.

    Batch ``s`` is slice ``j = s mod E`` of the permutation drawn from ``(seed, s div E)`` (``E``
    batches per pass over the data). Each time it is iterated it starts at the batch the trainer
    has reached (``step_fn``; when that returns None, at the batch after the last one this sampler
    yielded), so a run resumed from any checkpoint — mid-pass or at a pass boundary — sees exactly
    the batches an uninterrupted run would, whatever the loop thinks the epoch is. Under DDP each
    global batch of ``batch_size * world`` indices is cut into per-rank slices (use it with
    ``use_distributed_sampler=False``).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True, step_fn=None, rank_fn=None,
        with_epoch: bool = False,
    ):
        self.n, self.batch_size, self.seed, self.drop_last = (
            int(n),
            int(batch_size),
            int(seed),
            bool(drop_last),
        )
        self.with_epoch = bool(with_epoch)  # yield (pass, index) pairs for an EpochIndexed dataset
        self.step_fn = step_fn or (lambda: None)
        self.rank_fn = rank_fn or (lambda: (0, 1))
        self.next_batch = 0  # global number of the batch after the last one yielded

    def _per_pass(self, world: int) -> int:
        b = self.batch_size * world
        return self.n // b if self.drop_last else -(-self.n // b)

    def __len__(self) -> int:
        return max(1, self._per_pass(self.rank_fn()[1]))

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self.rank_fn()
        per_pass, b = self._per_pass(world), self.batch_size * world
        if per_pass < 1:
            raise ValueError(f"{self.n} items cannot fill one batch of {b} with drop_last=True")
        start = self.step_fn()
        epoch, j0 = divmod(self.next_batch if start is None else int(start), per_pass)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        for j in range(j0, per_pass):
            self.next_batch = epoch * per_pass + j + 1
            idx = perm[j * b : (j + 1) * b]
            mine = idx[rank * self.batch_size : (rank + 1) * self.batch_size].tolist()
            yield [(epoch, i) for i in mine] if self.with_epoch else mine


class EpochIndexed(Dataset):
    """A dataset addressed by ``(pass, index)`` pairs (a :class:`StepBatchSampler` with ``with_epoch=True``): it
    sets the wrapped dataset's epoch (``set_epoch``: the readers' per-pass random clip start, the joint frames'
    draws) before reading the item. The pass travels with the index, so it is right in every DataLoader worker and
    after a resume, whatever epoch number the training loop believes in."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, key = key
            if getattr(self.dataset, "epoch", None) != int(epoch):
                self.dataset.set_epoch(int(epoch))
        return self.dataset[key]


def _build(dataset: Any) -> Dataset | None:
    # Accept a dataset object or a not-yet-instantiated `_target_` config (dict / DictConfig).
    if isinstance(dataset, Mapping) or type(dataset).__name__ == "DictConfig":
        if "_target_" in dataset:
            from hydra.utils import instantiate

            return instantiate(dataset)
        raise ValueError(f"dataset config needs a `_target_`, got keys {list(dataset)}")
    return dataset


class ImageDataModule(pl.LightningDataModule):
    """Dataloaders over given datasets (images, points or videos: anything yielding dict items).

    Args:
        train, val, test: datasets (or their ``_target_`` configs); ``val``/``test`` optional.
        batch_size: training batch size (per device); ``drop_last`` applies to training only.
        val_batch_size: evaluation batch size (defaults to ``batch_size``).
        num_workers: dataloader worker processes.
        seed: seed of the training order.
        root, size: values the dataset configs interpolate (``data.root``, ``data.size``), so one
            override reaches every split; kept here for the record only.
    """

    def __init__(
        self,
        train: Any,
        val: Any = None,
        test: Any = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
        root: str | None = None,
        size: int | None = None,
    ):
        super().__init__()
        for key, value in (("data.batch_size", batch_size), ("data.val_batch_size", val_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        self.train_set, self.val_set, self.test_set = _build(train), _build(val), _build(test)
        if len(self.train_set) == 0:
            from shared.data import DataError

            raise DataError(f"the training set ({type(self.train_set).__name__}) is empty; check data.train")
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers, self.seed, self.drop_last = int(num_workers), int(seed), bool(drop_last)
        self.pin_memory, self.root, self.size = bool(pin_memory), root, size
        if self.drop_last and len(self.train_set) < self.batch_size:
            raise ValueError(
                f"training set has {len(self.train_set)} items, fewer than batch_size={self.batch_size} "
                "with drop_last=True: no batch would be produced"
            )

    def _batches_done(self) -> int | None:
        """Training batches consumed so far (per rank), read from the trainer: where a resumed run
        restarts. None without a trainer (the sampler then counts for itself)."""
        t = getattr(self, "trainer", None)
        return None if t is None else int(t.global_step) * int(getattr(t, "accumulate_grad_batches", 1))

    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (0, 1) if t is None else (int(t.global_rank), int(t.world_size))

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        common = dict(
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory
        )
        if train:
            sampler = StepBatchSampler(
                len(dataset),
                batch_size,
                self.seed,
                self.drop_last,
                step_fn=self._batches_done,
                rank_fn=self._rank_world,
            )
            return DataLoader(dataset, batch_sampler=sampler, **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader | list:
        return [] if self.test_set is None else self._loader(self.test_set, self.val_batch_size, train=False)


class ToyDataModule(ImageDataModule):
    """2D toy points (``shared.data.toys``): ``n_train`` points from ``seed`` and ``n_val`` points
    from ``seed + 1000``; with ``source`` set, items also carry an independent ``"source"`` point."""

    def __init__(
        self,
        name: str,
        n_train: int,
        n_val: int,
        batch_size: int,
        source: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        val_batch_size: int | None = None,
    ):
        super().__init__(
            train=ToyDataset(name, n_train, seed, source),
            val=ToyDataset(name, n_val, seed + 1000, source) if n_val > 0 else None,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self.name, self.source = name, source
