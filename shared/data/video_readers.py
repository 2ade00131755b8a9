"""Readers for the real video datasets' on-disk layouts (decoded with PyAV, images with PIL).

- `VideoFolderDataset`: UCF-101 (Soomro et al. 2012) — ``root/<class>/<clip>.avi|mp4``; the class is
  the folder name (sorted folder names give the label index); an optional UCF split file
  (``trainlist01.txt`` / ``testlist01.txt``: lines ``<class>/<clip>.avi [label]``) selects clips.
- `FrameFolderDataset`: SkyTimelapse (Xiong et al. 2018) — ``root/<video>/<clip>/*.jpg|png``, one
  clip per folder of frames, frames in natural filename order.
- `CsvVideoDataset`: WebVid-10M (Bain et al. 2021) — a CSV with columns ``videoid, name, page_dir``
  (``name`` is the caption), files at ``video_root/<page_dir>/<videoid>.mp4``; a ``path`` column,
  if present, overrides that rule with a path relative to ``video_root``.

Clips: ``frames`` frames taken every ``stride`` source frames. The start is drawn from a generator
seeded by ``(seed, index)`` — the same clip every epoch — or, with ``train=True``, by
``(seed, epoch, index)`` (the datamodule's sampler calls `set_epoch`), a fresh start per epoch
that is still reproducible. Frames are resized (shorter side to ``size``, antialiased bilinear) and
centre-cropped to ``size x size``; ``x`` is (3, T, size, size) float32 in [-1, 1].

A file that cannot be decoded, or is shorter than one clip, is skipped with a warning and counted
in ``dataset.num_skipped`` (names in ``dataset.skipped``); the item of the next valid index is
returned instead, so an epoch never crashes on one bad file. With DataLoader workers each worker
keeps its own count. A missing root raises ``FileNotFoundError`` naming the path and config key.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from shared.data import DataError

__all__ = ["CsvVideoDataset", "FrameFolderDataset", "VideoFolderDataset", "class_caption", "read_clip"]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ClipError(RuntimeError):
    """A file that cannot give a clip (undecodable, or too few frames)."""


def _require(path: str | os.PathLike, config_key: str, what: str = "dataset folder") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: '{p}' (set config key {config_key}=/path/to/it)")
    return p


def _natural_key(name: str) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def class_caption(name: str) -> str:
    """A UCF-101 class folder name as a caption: ``ApplyEyeMakeup`` -> ``apply eye makeup``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_", " ", name).split()
    return " ".join(w.lower() for w in words)


def _resize_crop(frames: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, size, size) in [-1, 1]: shorter side to size, centre crop."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if size is not None:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


class _ClipDataset(Dataset):
    """Clip sampling, skipping of bad files and epoch seeding shared by the readers."""

    def __init__(self, frames: int, stride: int, size: int | None, train: bool, seed: int):
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got {frames=}, {stride=}")
        self.frames, self.stride = int(frames), int(stride)
        self.size = None if size is None else int(size)
        self.train, self.seed, self.epoch = bool(train), int(seed), 0
        self.skipped: set[str] = set()
        self.skip_reasons: dict[str, str] = {}  # source -> "error type: first line", in the order they failed

    # -- per-layout hooks -------------------------------------------------------------------
    def _source(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, index: int, first: int | None, count: int, step: int, pick) -> tuple[torch.Tensor, int]:
        """Frames ``first, first+step, ...`` (``count`` of them) as uint8 (T, H, W, 3).

        ``first`` may be None: then ``pick(total)`` chooses it once the frame count is known.
        Returns the frames and the first index used."""
        raise NotImplementedError  # pragma: no cover

    def _meta(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------------
    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        key = [self.seed, self.epoch, index] if self.train else [self.seed, index]
        return np.random.default_rng(key)

    def _start_picker(self, rng: np.random.Generator, count: int, step: int):
        span = (count - 1) * step + 1

        def pick(total: int) -> int:
            if total < span:
                raise ClipError(f"{total} frames, a clip needs {span} ({count} frames, stride {step})")
            return int(rng.integers(0, total - span + 1))

        return pick

    def _load(self, index: int) -> dict:
        pick = self._start_picker(self._rng(index), self.frames, self.stride)
        frames, start = self._read(index, None, self.frames, self.stride, pick)
        item = {"x": _resize_crop(frames, self.size), "start": torch.tensor(start, dtype=torch.long)}
        item.update(self._meta(index))
        return item

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        for k in range(n):
            j = (index + k) % n
            src = self._source(j)
            if src in self.skipped:
                continue
            try:
                return self._load(j)
            except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this file
                self._skip(src, e)
        raise DataError(
            f"{type(self).__name__}: no decodable clip among the {n} items of '{self._root_name()}' "
            f"({self.num_skipped} skipped; e.g. {self._first_reason()}); check data.root"
        )

    def _root_name(self) -> str:
        return str(getattr(self, "root", None) or getattr(self, "video_root", ""))

    def _first_reason(self) -> str:
        src, why = next(iter(self.skip_reasons.items()), ("?", "?"))
        return f"{src}: {why}"

    def _skip(self, src: str, err: Exception) -> None:
        self.skipped.add(src)
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        self.skip_reasons.setdefault(src, f"{type(err).__name__}: {text}".rstrip(": "))
        msg = f"skipping {src}: {type(err).__name__}: {err} ({self.num_skipped} skipped so far)"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def random_frame(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """One frame (3, size, size) of item ``index`` at a position drawn from ``rng``."""
        n = len(self)
        for k in range(n):
            j = (index + k) % n
            src = self._source(j)
            if src in self.skipped:
                continue
            try:
                frames, _ = self._read(j, None, 1, 1, self._start_picker(rng, 1, 1))
                return _resize_crop(frames, self.size)[:, 0]
            except Exception as e:  # noqa: BLE001
                self._skip(src, e)
        raise DataError(f"{type(self).__name__}: no decodable frame among the {n} items of '{self._root_name()}' "
                        f"({self.num_skipped} skipped; e.g. {self._first_reason()}); check data.root")


class _PyAVMixin:
    """Decoding of a clip from a video file with PyAV, stopping after the last needed frame."""

    def _decode(self, path: str, first: int | None, count: int, step: int, pick) -> tuple[torch.Tensor, int]:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            total = int(stream.frames or 0)
            if first is None and total > 0:
                first = pick(total)
            if first is not None:
                wanted = {first + i * step: i for i in range(count)}
                last = first + (count - 1) * step
                out: list = [None] * count
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        out[wanted[i]] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
                if all(f is not None for f in out):
                    return torch.from_numpy(np.stack(out)), first
                # The container's frame count was wrong: fall through and decode everything.
                container.seek(0)
            all_frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        start = pick(len(all_frames))
        clip = all_frames[start : start + (count - 1) * step + 1 : step]
        return torch.from_numpy(np.stack(clip)), start


class VideoFolderDataset(_PyAVMixin, _ClipDataset):
    """UCF-101 layout ``root/<class>/<clip>.<ext>``. Items: ``x``, ``y`` (class index), ``caption``
    (class name as words), ``path``, ``start``.

    Args:
        root: dataset folder. split_file: optional UCF list file (relative paths, one per line).
        frames, stride, size: clip length, frame step and output side. train: per-epoch random start.
        seed: clip start seed. extensions: video file suffixes. config_key: named in errors.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        train: bool = False,
        seed: int = 0,
        split_file: str | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        config_key: str = "data.root",
    ):
        super().__init__(frames, stride, size, train, seed)
        self.root = _require(root, config_key)
        exts = tuple(e.lower() for e in extensions)
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files = [
            p
            for c in self.classes
            for p in sorted((self.root / c).iterdir(), key=lambda p: _natural_key(p.name))
            if p.is_file() and p.suffix.lower() in exts
        ]
        if split_file is not None:
            listed = {
                line.split()[0].replace("\\", "/")
                for line in _require(split_file, "data.<train|val>.split_file", "split file")
                .read_text()
                .splitlines()
                if line.strip()
            }
            files = [p for p in files if p.relative_to(self.root).as_posix() in listed]
        if not files:
            raise FileNotFoundError(
                f"no video files ({', '.join(exts)}) under '{self.root}/<class>/' (config key {config_key})"
            )
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def _source(self, index: int) -> str:
        return str(self.files[index])

    def _read(self, index, first, count, step, pick):
        return self._decode(str(self.files[index]), first, count, step, pick)

    def _meta(self, index: int) -> dict:
        cls = self.files[index].parent.name
        return {
            "y": torch.tensor(self.class_to_idx[cls], dtype=torch.long),
            "caption": class_caption(cls),
            "path": str(self.files[index]),
        }


class FrameFolderDataset(_ClipDataset):
    """SkyTimelapse layout ``root/<video>/<clip>/*.jpg``: every folder holding image files is one clip.
    Items: ``x``, ``caption`` (the constant ``caption`` argument), ``path`` (the clip folder), ``start``.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        train: bool = False,
        seed: int = 0,
        caption: str = "",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        config_key: str = "data.root",
    ):
        super().__init__(frames, stride, size, train, seed)
        self.root = _require(root, config_key)
        self.caption = caption
        exts = tuple(e.lower() for e in extensions)
        clips = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort(key=_natural_key)
            imgs = sorted((f for f in filenames if os.path.splitext(f)[1].lower() in exts), key=_natural_key)
            if imgs:
                clips.append((dirpath, imgs))
        clips.sort(key=lambda c: _natural_key(os.path.relpath(c[0], self.root)))
        if not clips:
            raise FileNotFoundError(
                f"no frame folders ({', '.join(exts)}) under '{self.root}' (config key {config_key})"
            )
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def _source(self, index: int) -> str:
        return self.clips[index][0]

    def _read(self, index, first, count, step, pick):
        from PIL import Image

        folder, names = self.clips[index]
        if first is None:
            first = pick(len(names))
        out = []
        for i in range(count):
            with Image.open(os.path.join(folder, names[first + i * step])) as im:
                out.append(np.asarray(im.convert("RGB")))
        if any(o.shape != out[0].shape for o in out):
            raise ClipError("frames of different sizes")
        return torch.from_numpy(np.stack(out)), first

    def _meta(self, index: int) -> dict:
        return {"caption": self.caption, "path": self.clips[index][0]}


class CsvVideoDataset(_PyAVMixin, _ClipDataset):
    """WebVid layout: CSV ``videoid, name, page_dir`` with files ``video_root/page_dir/videoid.mp4``.
    Items: ``x``, ``caption`` (the ``name`` column), ``videoid``, ``path``, ``start``. Rows whose file
    is missing are skipped (and counted) when first read, like undecodable files.
    """

    def __init__(
        self,
        csv_path: str,
        video_root: str,
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        train: bool = False,
        seed: int = 0,
        extension: str = ".mp4",
        config_key: str = "data.root",
        csv_config_key: str = "data.train.csv_path",
    ):
        super().__init__(frames, stride, size, train, seed)
        self.csv_path = _require(csv_path, csv_config_key, "csv file")
        self.video_root = _require(video_root, config_key, "video folder")
        rows = []
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or ())
            need = {"videoid", "name"} | ({"page_dir"} if "path" not in cols else set())
            if not need <= cols:
                raise ValueError(f"{self.csv_path}: needs columns {sorted(need)}, has {sorted(cols)}")
            for r in reader:
                rel = (
                    r["path"] if r.get("path") else os.path.join(r["page_dir"], f"{r['videoid']}{extension}")
                )
                rows.append((str(r["videoid"]), r["name"], rel))
        if not rows:
            raise ValueError(f"{self.csv_path}: no rows")
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def _source(self, index: int) -> str:
        return str(self.video_root / self.rows[index][2])

    def _read(self, index, first, count, step, pick):
        return self._decode(self._source(index), first, count, step, pick)

    def _meta(self, index: int) -> dict:
        vid, name, _ = self.rows[index]
        return {"caption": name, "videoid": vid, "path": self._source(index)}


def read_clip(path: str | os.PathLike, frames: int, stride: int = 1, start: int = 0, size: int | None = None,
              config_key: str = "video") -> torch.Tensor:
    """One clip of a user's video: ``frames`` frames every ``stride`` from frame ``start`` of a folder of images
    (natural filename order) or of a video file (PyAV), resized and centre-cropped like the datasets' clips:
    (3, T, size, size) float32 in [-1, 1]. A missing path or a video too short is one line naming it."""
    p = _require(path, config_key, "video (a folder of frames or a video file)")
    if frames < 1 or stride < 1 or start < 0:
        raise ValueError(f"{config_key}: frames and stride must be >= 1 and start >= 0, got {frames=}, {stride=}, "
                         f"{start=}")
    span = start + (frames - 1) * stride + 1

    def pick(total: int) -> int:
        if total < span:
            raise DataError(f"{config_key}: '{p}' has {total} frames; frames {start}..{span - 1} are needed "
                            f"({frames} frames, stride {stride}, start {start})")
        return start

    if p.is_dir():
        from PIL import Image

        names = sorted((f for f in os.listdir(p) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS),
                       key=_natural_key)
        pick(len(names))
        out = []
        for i in range(frames):
            with Image.open(p / names[start + i * stride]) as im:
                out.append(np.asarray(im.convert("RGB")))
        if any(o.shape != out[0].shape for o in out):
            raise DataError(f"{config_key}: the frames in '{p}' have different sizes")
        clip = torch.from_numpy(np.stack(out))
    else:
        if p.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{config_key}: '{p}' is neither a folder of frames nor a video file "
                             f"({', '.join(VIDEO_EXTENSIONS)})")
        clip, _ = _PyAVMixin()._decode(str(p), None, frames, stride, pick)
    return _resize_crop(clip, size)
