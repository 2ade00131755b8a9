"""One video, repeated: the training set of one-shot tuning (Tune-A-Video Sec. 4.2)."""
from __future__ import annotations

from hydra.utils import get_class
from torch.utils.data import Dataset


class OneVideo(Dataset):
    """Item ``index`` of the world ``world`` (a dataset class of ``shared.data`` and its arguments) returned ``n``
    times. Only ``shared.data`` datasets are accepted: a run config stored in a checkpoint may name this class, and
    building it must not call anything else."""

    def __init__(self, world: str, index: int, n: int = 1000, **world_kwargs):
        if not str(world).startswith("shared.data."):
            raise ValueError(f"OneVideo: world must be a dataset class of shared.data, got {world!r}")
        cls = get_class(str(world))
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise ValueError(f"OneVideo: world={world!r} is not a Dataset class")
        self.item = cls(**world_kwargs)[int(index)]
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for OneVideo of length {self.n}")
        return dict(self.item)
