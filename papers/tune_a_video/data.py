"""One video, repeated: the training set of one-shot tuning (Tune-A-Video Sec. 4.2)."""
from __future__ import annotations

from hydra.utils import get_class
from torch.utils.data import Dataset


class OneVideo(Dataset):
    """Item ``index`` of the world ``world`` (a dataset class path and its arguments) returned ``n`` times."""

    def __init__(self, world: str, index: int, n: int = 1000, **world_kwargs):
        self.item = get_class(world)(**world_kwargs)[int(index)]
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for OneVideo of length {self.n}")
        return dict(self.item)
