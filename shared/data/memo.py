"""An in-memory cache of a pure dataset's items, shared by every equal dataset of the process.

The synthetic worlds render an item from ``(seed, split, index)`` alone, so an item may be kept once rendered: a
claim that trains several variants on the same world (stage after stage, seed after seed, in one process) renders
each item once instead of once per epoch per variant. ``Memo`` builds the dataset from its class and arguments and keys
the cache by them — two ``Memo`` of the
same config share their items; any other config has its own. The dataset is named by ``dataset_target`` (a class
of ``shared.data``; the rest of the keyword arguments are its own), so a world's data config only swaps its
``_target_``: Items are returned as shallow copies (the collate
function stacks them into new tensors; nothing downstream writes into an item's tensors).

    train:
      _target_: shared.data.memo.Memo
      dataset_target: shared.data.puppets.Puppets
      n: 2048
      frames: 8
      ...

Only for datasets whose items are pure functions of their index (the worlds; not readers with per-epoch random
clips: those have ``set_epoch``, which ``Memo`` refuses).
"""
from __future__ import annotations

import json
from typing import Any

from torch.utils.data import Dataset

__all__ = ["Memo", "clear_memo"]

_STORE: dict[str, dict[int, dict]] = {}


def clear_memo() -> None:
    _STORE.clear()


class Memo(Dataset):
    """Cached items of ``dataset_target(**kwargs)`` (a dataset class of ``shared.data``); see the module docstring."""

    def __init__(self, dataset_target: str, **kwargs: Any):
        from hydra.utils import get_class
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if not str(dataset_target).startswith("shared.data."):
            raise ValueError(f"Memo caches datasets of shared.data, got dataset_target={dataset_target!r}")
        cls = get_class(str(dataset_target))
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise ValueError(f"dataset_target={dataset_target!r} is not a Dataset class")
        kwargs = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                  for k, v in kwargs.items()}
        self.key = json.dumps({"target": str(dataset_target), **kwargs}, sort_keys=True, default=str)
        self.dataset = cls(**kwargs)
        if callable(getattr(self.dataset, "set_epoch", None)):
            raise ValueError(f"{type(self.dataset).__name__} changes per epoch (set_epoch): its items cannot be cached")
        self.items = _STORE.setdefault(self.key, {})
        for attr in ("per_frame_keys", "channel_time_keys"):
            if hasattr(self.dataset, attr):
                setattr(self, attr, getattr(self.dataset, attr))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        item = self.items.get(index)
        if item is None:
            item = self.dataset[index]
            self.items[index] = item
        return dict(item)
