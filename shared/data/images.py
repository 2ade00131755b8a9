"""Readers for real image datasets in their usual on-disk formats.

- ``Cifar10Dataset``: the "CIFAR-10 python version" (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``; Krizhevsky, 2009). Those files are pickles of a dict holding a uint8 numpy
  ``data`` array (N, 3072; 1024 R, then G, then B values, each a row-major 32x32 plane) and a
  ``labels`` list. They are read with a *restricted* unpickler that only rebuilds plain
  containers and numpy arrays, so a tampered file fails instead of running code. Never point
  it at other pickles.
- ``ImageFolderDataset``: a folder of image files read with PIL, either flat (no labels) or with
  one subfolder per class (labels = index of the sorted class folder names).

Items are ``{"x": (C, H, W) float32 in [-1, 1], "y": long}`` (``"y"`` only when labels exist).
A missing root raises a one-line ``FileNotFoundError`` naming the path and the config key.

An image file that cannot be decoded, or holds non-finite pixels (NaN/Inf in a float TIFF), is skipped with a
warning and counted in ``dataset.num_skipped`` (names and reasons in ``dataset.skipped``), exactly like the video
readers' undecodable clips: the item of the next readable index is returned instead. A dataset with no readable
image at all is one :class:`~shared.data.DataError` naming the folder and the first file's reason.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shared.data import DataError

log = logging.getLogger(__name__)

__all__ = ["Cifar10Dataset", "ImageFolderDataset", "load_cifar_batch", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts/lists/str/bytes/numbers and numpy arrays; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes from Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            # The real files were written by Python 2 numpy (numpy.core.*), now numpy._core.*.
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR batch file "
                                     f"{getattr(self, 'path', '')}".rstrip())


def load_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` int64 labels."""
    try:
        with open(path, "rb") as f:
            unpickler = _NumpyOnlyUnpickler(f, encoding="bytes")
            unpickler.path = str(path)
            batch = unpickler.load()
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise
        raise ValueError(f"{path}: not a CIFAR-10 batch file ({e})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR-10 batch file, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch file needs 'data' and 'labels', has {sorted(map(str, batch))}")
    try:
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: 'data' is not N x 3072 uint8 pixels ({e})") from None
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data, labels


class Cifar10Dataset(Dataset):
    """CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py/``, or that folder itself).

    Args:
        root: dataset path (config key ``data.root``).
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        classes: keep only these class indices.
    """

    def __init__(self, root: str | Path, split: str = "train", classes: Sequence[int] | None = None):
        if split not in _CIFAR_FILES:
            raise ValueError(f"unknown CIFAR-10 split {split!r}; choose 'train' or 'test'")
        root = Path(root).expanduser()
        folder = root if (root / _CIFAR_FILES[split][0]).is_file() else root / _CIFAR_DIR
        missing = [name for name in _CIFAR_FILES[split] if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 {split} files {missing} not found under '{root}' (expected {_CIFAR_DIR}/); "
                "set the config key data.root to the folder holding it"
            )
        parts = [load_cifar_batch(folder / name) for name in _CIFAR_FILES[split]]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if classes is not None:
            keep = np.isin(labels, np.asarray(list(classes)))
            data, labels = data[keep], labels[keep]
        self.split = split
        self.data = torch.from_numpy(np.ascontiguousarray(data))  # uint8, converted per item
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.data[i].float() / 127.5 - 1.0, "y": self.labels[i]}


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    # Shorter side to `size` (bicubic), then a centred size x size crop.
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


class ImageFolderDataset(Dataset):
    """Images under ``root``, resized (shorter side) and centre-cropped to ``size`` x ``size``.

    If ``root`` has subfolders, each subfolder is a class (sorted names -> labels 0..K-1; files
    are found recursively inside it, files directly in ``root`` are ignored) and items carry
    ``"y"``; otherwise every image file directly in ``root`` is used, without labels.

    Args:
        root: dataset path (config key ``data.root``): the folder of the class folders (ImageNet: ``.../train``);
            a root holding ``train``/``val``/``test`` folders is refused (its classes would be the splits).
        num_classes: if given, the number of class folders required (a DiT config passes the model's).
        size: output side length.
        extensions: file suffixes to read (case-insensitive).
        channels: 3 (RGB) or 1 (greyscale).
    """

    def __init__(
        self,
        root: str | Path,
        size: int = 64,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        channels: int = 3,
        num_classes: int | None = None,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder '{root}' not found; set the config key data.root")
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLIT_NAMES)
        if splits:   # the dataset's root, not a split: its "classes" would be train/val
            raise FileNotFoundError(f"data.root={root} holds the split folders {splits}, not class folders; point "
                                    f"data.root at one split, e.g. {root / splits[0]} (<root>/<class>/<image>)")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)

        def images_in(folder: Path, recursive: bool) -> list[Path]:
            files = folder.rglob("*") if recursive else folder.iterdir()
            return sorted(p for p in files if p.is_file() and p.suffix.lower() in exts)

        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if num_classes is not None and len(class_dirs) != int(num_classes):
            raise ValueError(f"data.root={root} has {len(class_dirs)} class folders, the model expects "
                             f"{num_classes} classes (<root>/<class>/<image>; ImageNet's train/ has 1000)")
        if class_dirs:
            self.classes: list[str] | None = [p.name for p in class_dirs]
            self.samples = [(f, k) for k, d in enumerate(class_dirs) for f in images_in(d, recursive=True)]
        else:
            self.classes = None
            self.samples = [(f, -1) for f in images_in(root, recursive=False)]
        if not self.samples:
            raise FileNotFoundError(
                f"no images with extensions {exts} under '{root}'; set the config key data.root"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"data.size must be a positive integer, got {size!r}")
        self.root, self.size, self.channels = root, size, channels
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _load(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            img.load()
            if img.mode in ("F", "I", "I;16", "I;16B", "I;16L"):  # float / integer TIFFs: no NaN or Inf
                raw = np.asarray(img, dtype=np.float64)
                if not np.isfinite(raw).all():
                    bad = int((~np.isfinite(raw)).sum())
                    raise ValueError(f"{bad} non-finite pixel value(s) (NaN/Inf)")
            img = _resize_center_crop(img.convert("RGB" if self.channels == 3 else "L"), self.size)
            arr = np.asarray(img, dtype=np.uint8)
        x = torch.from_numpy(arr.copy()).float() / 127.5 - 1.0
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        item = {"x": x.contiguous()}
        if self.classes is not None:
            item["y"] = torch.tensor(label, dtype=torch.long)
        return item

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        for k in range(n):
            j = (i + k) % n
            src = str(self.samples[j][0])
            if src in self.skipped:
                continue
            try:
                return self._load(j)
            except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this file
                self._skip(src, e)
        first = next(iter(self.skipped.items()))
        raise DataError(f"no readable image among the {n} files under '{self.root}' ({self.num_skipped} skipped; "
                        f"e.g. {first[0]}: {first[1]}); check data.root")

    def _skip(self, src: str, err: Exception) -> None:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
        self.skipped[src] = reason
        msg = f"skipping {src}: {reason} ({self.num_skipped} skipped so far)"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
