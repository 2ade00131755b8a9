"""EMO's training clips from the TalkingFaces world (Tian et al. 2024, Sec. 3.3 and 4.1).

:class:`EMOClips` wraps ``TalkingFaces`` (through :class:`shared.data.memo.Memo`, so every item is rendered once per
process) and adds what EMO's stages read:

* ``face_region`` (1, H, W) in {-1, 1}: the face locator's input, the union of the face's bounding boxes over the
  clip (Sec. 3.2: "M = union of M^i ... the facial bounding box regions of the video clip"); for a single frame that
  frame's box;
* with ``motion_frames = n > 0`` the world's clip of ``n + f`` frames is split (Sec. 3.3: "n + f contiguous frames
  are sampled from the video clip, with the started n frames are motion frames"): ``motion_frames`` (3, n, H, W),
  and ``x`` and every per-frame key (audio feature windows, mouth opening, head pose, ...) keep the last f frames.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from shared.data.memo import Memo

__all__ = ["EMOClips", "box_mask"]


def box_mask(box: torch.Tensor, size: int) -> torch.Tensor:
    """(4,) normalised (x0, y0, x1, y1) -> (1, size, size) mask in {-1, 1} (pixel centres inside the box)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    inside_x = (c >= box[0]) & (c <= box[2])
    inside_y = (c >= box[1]) & (c <= box[3])
    return (inside_y[:, None] & inside_x[None, :]).float()[None] * 2 - 1


class EMOClips(Dataset):
    """Items for EMO (module docstring). ``frames`` is the generated clip length f; the source renders / reads
    ``motion_frames + frames`` frames per clip. ``source`` is the dataset class (the TalkingFaces world, cached by
    :class:`~shared.data.memo.Memo`; or a reader such as ``shared.data.avatar_readers.TalkingHeadDataset``, built
    directly: its clips change per epoch). Items without ``face_box`` (real clips: no face detector here) get no
    ``face_region``."""

    def __init__(self, motion_frames: int = 0, frames: int = 8, frames_only: bool = False,
                 source: str = "shared.data.talking_faces.TalkingFaces", **world):
        if motion_frames < 0 or (frames_only and motion_frames):
            raise ValueError(f"motion_frames must be >= 0 (and 0 for single frames), got {motion_frames}")
        self.n_motion, self.frames, self.frames_only = int(motion_frames), int(frames), bool(frames_only)
        length = self.n_motion + self.frames
        if source == "shared.data.talking_faces.TalkingFaces":
            self.world = Memo(source, frames=length, frames_only=self.frames_only, **world)
            ds = self.world.dataset
        else:
            from hydra.utils import get_class

            if not source.startswith("shared.data."):
                raise ValueError(f"source must be a dataset of shared.data, got {source!r}")
            if self.frames_only:
                raise ValueError(f"{source} reads clips: use frames=1 instead of frames_only")
            ds = self.world = get_class(source)(frames=length, **world)
        self.size = int(ds.size)
        self.per_frame_keys = tuple(getattr(ds, "per_frame_keys", ("audio_features",)))

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.world, "set_epoch", None)):
            self.world.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.world[index])
        if "face_box" in item:
            item["face_region"] = box_mask(item["face_box"], self.size)
        if self.frames_only:
            return item
        item.pop("audio", None)  # raw samples of all frames: not split (the features are)
        item.pop("frame_caption", None)
        n = self.n_motion
        if n:
            item["motion_frames"] = item["x"][:, :n]
            item["x"] = item["x"][:, n:]
            for k in self.per_frame_keys:
                if k in item and isinstance(item[k], torch.Tensor) and item[k].ndim:
                    item[k] = item[k][n:]
        return item
