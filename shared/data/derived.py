"""Datasets derived from another video dataset by adding keys the conditioning seam reads.

:class:`SourceAndContent` — each item also carries ``source`` (the clip itself: a structure or control encoder
estimates depth/edges from it, as Gen-1 runs MiDaS on the training clip and video ControlNets run their detectors)
and ``content`` (one frame of the clip, drawn per item from ``(seed, index)``: Gen-1's content is the image embedding
of one of the clip's frames, Sec. 3.3). Used by the paper-scale configs of ``papers/gen1`` and
``papers/controlnet_video`` on real videos (the CPU claims use the styled-shapes world's own subclass).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

__all__ = ["SourceAndContent"]


class SourceAndContent(Dataset):
    """``dataset``'s items plus ``source`` (= ``x``) and ``content`` (a random frame of ``x``, (C, H, W))."""

    def __init__(self, dataset: Dataset, seed: int = 0, content: bool = True):
        self.dataset, self.seed, self.content = dataset, int(seed), bool(content)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        x = item["x"]
        item["source"] = x
        if self.content:
            if x.dim() == 4:  # (C, T, H, W)
                t = int(np.random.default_rng([self.seed, int(index), 5]).integers(x.shape[1]))
                item["content"] = x[:, t].clone()
            else:
                item["content"] = x.clone()
        return item
