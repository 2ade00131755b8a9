"""Real videos as Generative Image Dynamics training pairs: a still and the spectral volume of its motion.

GID (Li et al., CVPR 2024, Sec. 7 "Data") takes a start frame ``I0`` of a video of oscillating scenes,
estimates the optical flow from ``I0`` to each of the following frames — the displacement of every pixel
of ``I0`` over time, the motion texture — and keeps the K lowest temporal frequencies of it as the
spectral volume (`shared.data.spectral`). `OscillationVideoFolder` does this for a folder of videos with
torchvision's RAFT (Teed & Deng, ECCV 2020) loaded from a local weights file (nothing is downloaded);
the oscillating-scenes world (`shared.data.oscillating_scenes`) gives the same item keys with exact motion.

Flow on a CPU is slow (about a second per 10 frames at 64 px), so items can be cached on disk (``cache_dir``): one
file per (video, start, frames, stride, size, model) computed once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.data.spectral import _check_freqs, spectral_volume
from shared.data.video_readers import VIDEO_EXTENSIONS, _ClipDataset, _natural_key, _PyAVMixin, _require, _resize_crop

__all__ = ["OscillationVideoFolder", "RaftFlow"]

_RAFT = ("raft_small", "raft_large")


class RaftFlow:
    """torchvision RAFT with weights from a local file (``.pth``/``.pt`` state dict or ``.safetensors``).

    ``flow(src, dst)`` maps images (B, 3, H, W) in [-1, 1] to the flow (B, 2, H, W) ``(dx, dy)`` in pixels
    from ``src`` to ``dst`` (a pixel ``p`` of ``src`` is at ``p + flow(p)`` in ``dst``). RAFT needs sides of
    at least ``8 * 16 = 128`` (its correlation pyramid) that are multiples of 8: smaller images are upsampled
    by the smallest integer factor that reaches 128 and the flow is average-pooled and divided by it again;
    sides are padded (replicate) to multiples of 8 and the flow is cropped back.
    """

    MIN_SIDE = 128

    def __init__(
        self,
        weights: str | os.PathLike,
        model: str = "raft_small",
        num_flow_updates: int = 12,
        device: str = "cpu",
        config_key: str = "data.raft_weights",
    ):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"RAFT weights not found: '{path}' (set config key {config_key}=/path/to/{model}.pth)"
            )
        if model not in _RAFT:
            raise ValueError(f"RAFT model must be one of {_RAFT}, got {model!r}")
        from torchvision.models import optical_flow

        from shared.nn.autoencoder import read_state_dict

        net = getattr(optical_flow, model)(weights=None)
        state = read_state_dict(path)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a torchvision {model} state dict: missing {sorted(missing)[:3]}"
                f"{'...' if len(missing) > 3 else ''}, unexpected {sorted(unexpected)[:3]}"
                f"{'...' if len(unexpected) > 3 else ''} (config key {config_key})"
            )
        self.net = net.eval().to(device)
        self.device, self.num_flow_updates = device, int(num_flow_updates)

    @torch.no_grad()
    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        H, W = src.shape[-2:]
        up = -(-self.MIN_SIDE // min(H, W))  # ceil
        a, b = src.to(self.device).float(), dst.to(self.device).float()
        if up > 1:
            a = F.interpolate(a, scale_factor=up, mode="bilinear", align_corners=False)
            b = F.interpolate(b, scale_factor=up, mode="bilinear", align_corners=False)
        h, w = a.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        a = F.pad(a, (0, pw, 0, ph), mode="replicate")
        b = F.pad(b, (0, pw, 0, ph), mode="replicate")
        flow = self.net(a, b, num_flow_updates=self.num_flow_updates)[-1][..., :h, :w]
        if up > 1:
            flow = F.avg_pool2d(flow, up) / up
        return flow.float().cpu()


class OscillationVideoFolder(_PyAVMixin, _ClipDataset):
    """Every video file under ``root`` (recursively) gives one clip and its motion (module docstring).

    Items: ``x`` (3, T, S, S) in [-1, 1]; ``still`` = ``x[:, 0]``; ``displacement`` (2, T, S, S) the RAFT
    flow from the still to each frame (``displacement[:, 0] = 0``); ``spectral_volume`` (K, 4, S, S);
    ``path``, ``start``, ``caption`` (the constant ``caption`` argument).

    Args:
        root: folder of videos. raft_weights: local RAFT weights file (required; one-line error if missing).
        frames, stride, size: the clip (GID: 150 frames) taken every ``stride`` source frames, resized and
            centre-cropped to ``size``. num_freqs: K. raft_model, num_flow_updates, device, batch: the flow
            estimator and how many frame pairs go through it at once.
        cache_dir: where computed items are kept (None: no cache). train, seed: clip start as the readers.
    """

    def __init__(
        self,
        root: str,
        raft_weights: str,
        frames: int = 150,
        stride: int = 1,
        size: int = 64,
        num_freqs: int = 16,
        raft_model: str = "raft_small",
        num_flow_updates: int = 12,
        device: str = "cpu",
        batch: int = 16,
        cache_dir: str | None = None,
        caption: str = "",
        train: bool = False,
        seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        config_key: str = "data.root",
        weights_key: str = "data.raft_weights",
    ):
        super().__init__(frames, stride, size, train, seed)
        _check_freqs(int(num_freqs), self.frames)
        self.root = _require(root, config_key)
        # Built (and its weights checked) here, on the CPU, so a bad weights file fails before any clip is read;
        # moved to ``device`` on first use (inside each DataLoader worker).
        self._flow = RaftFlow(raft_weights, raft_model, num_flow_updates, "cpu", config_key=weights_key)
        self.raft_model, self.num_flow_updates = raft_model, int(num_flow_updates)
        self.device, self.batch, self.num_freqs, self.caption = device, int(batch), int(num_freqs), caption
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        exts = tuple(e.lower() for e in extensions)
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort(key=_natural_key)
            files += [Path(dirpath) / f for f in sorted(filenames, key=_natural_key) if Path(f).suffix.lower() in exts]
        if not files:
            raise FileNotFoundError(f"no video files ({', '.join(exts)}) under '{self.root}' (config key {config_key})")
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def _source(self, index: int) -> str:
        return str(self.files[index])

    def _read(self, index, first, count, step, pick):
        return self._decode(str(self.files[index]), first, count, step, pick)

    def _meta(self, index: int) -> dict:
        return {"path": str(self.files[index]), "caption": self.caption}

    def flow_model(self) -> RaftFlow:
        if self._flow.device != self.device:
            self._flow.net.to(self.device)
            self._flow.device = self.device
        return self._flow

    def motion(self, x: torch.Tensor) -> torch.Tensor:
        """Displacement (2, T, H, W) of the first frame's pixels: RAFT flow from frame 0 to every frame."""
        T = x.shape[1]
        frames = x.permute(1, 0, 2, 3)  # (T, 3, H, W)
        flows = [torch.zeros(1, 2, *x.shape[-2:])]
        flow = self.flow_model()
        for i in range(1, T, self.batch):
            dst = frames[i : i + self.batch]
            flows.append(flow(frames[:1].expand(len(dst), -1, -1, -1), dst))
        return torch.cat(flows).permute(1, 0, 2, 3).contiguous()

    def _cache_path(self, index: int, start: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = (
            "|".join(str(v) for v in (self.files[index], start, self.frames, self.stride, self.size, self.raft_model))
            + f"|{self.num_flow_updates}"
        )
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"

    def _load(self, index: int) -> dict:
        pick = self._start_picker(self._rng(index), self.frames, self.stride)
        frames, start = self._read(index, None, self.frames, self.stride, pick)
        x = _resize_crop(frames, self.size)
        cache = self._cache_path(index, start)
        if cache is not None and cache.is_file():
            disp = torch.load(cache, map_location="cpu", weights_only=True)
        else:
            disp = self.motion(x)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".tmp{os.getpid()}")
                torch.save(disp, tmp)
                os.replace(tmp, cache)
        item = {
            "x": x,
            "still": x[:, 0].clone(),
            "displacement": disp,
            "spectral_volume": spectral_volume(disp, self.num_freqs),
            "start": torch.tensor(start, dtype=torch.long),
        }
        item.update(self._meta(index))
        return item
