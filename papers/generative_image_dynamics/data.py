"""Training sets of the three models of Generative Image Dynamics, built from a world of oscillating scenes.

Every item of `shared.data.oscillating_scenes.OscillatingScenes` renders a whole clip (tens of milliseconds at
32x32 x 150 frames), too slow to draw afresh at every CPU training step, so the sets below render their scenes
once (optionally kept in a ``.pt`` file under ``cache_dir``, keyed by the world's arguments, so several claims
and seeds share it) and then serve tensors:

* :class:`SpectralScenes` — the motion model's items (Sec. 4.2): ``x`` the spectral volume in video layout
  ``(4, K, v, v)`` (channels Re x, Im x, Re y, Im y; bands on the time axis), box-filtered from the scene
  resolution ``S`` to ``v = volume_size`` (displacements stay in pixels of the still), and ``still`` (3, S, S).
* :class:`SpectralView` — the same items read lazily from any dataset with ``still`` and ``spectral_volume``
  (the real-video reader `shared.data.spectral_videos.OscillationVideoFolder` at paper scale).
* :class:`RenderPairs` — the renderer's items (Sec. 5: pairs ``(I_0, I_t)`` with the motion ``F_t`` from 0 to
  t): ``still``, ``frame`` (3, S, S), ``flow`` (2, S, S) and ``weight`` (1, S, S) = the mean motion magnitude
  ``W`` of the whole clip. With ``motion_size`` the motion passes through the same spatial bottleneck as the
  motion model's volumes (box filter to ``motion_size``, bilinear back), so the renderer trains on what it is
  given at test time.
* :class:`StillClips` — the video-diffusion baseline's items: a window of ``clip_len`` frames starting at a
  random frame (drawn from the item index) and the clip's still, rendered on the fly (``render(index, times)``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from shared.data.spectral import motion_importance

__all__ = ["SpectralScenes", "SpectralView", "RenderPairs", "StillClips", "box_resize", "bottleneck", "world_key"]


def world_key(world, **extra) -> str:
    """A short hash of a world's constructor state (numbers, strings, tuples) and ``extra``."""
    state = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(world).items())
             if isinstance(v, (int, float, str, bool, tuple))}
    blob = json.dumps({"class": type(world).__name__, **state, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def box_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average ``(..., S, S)`` maps over ``S/size`` blocks (``S`` divisible by ``size``)."""
    S = x.shape[-1]
    if S == size:
        return x
    if S % size:
        raise ValueError(f"box_resize: {S} is not a multiple of {size}")
    lead = x.shape[:-2]
    out = F.avg_pool2d(x.reshape(-1, 1, S, S), S // size)
    return out.reshape(*lead, size, size)


def bottleneck(flow: torch.Tensor, size: int | None) -> torch.Tensor:
    """Motion maps ``(..., S, S)`` through the volume resolution: box filter to ``size``, bilinear back."""
    if size is None or size == flow.shape[-1]:
        return flow
    S = flow.shape[-1]
    lead = flow.shape[:-2]
    low = box_resize(flow, size).reshape(-1, 1, size, size)
    return F.interpolate(low, size=(S, S), mode="bilinear", align_corners=False).reshape(*lead, S, S)


class _Cached(Dataset):
    def _load_or_build(self, cache_dir, key: str, build):
        path = Path(cache_dir) / f"{type(self).__name__}_{key}.pt" if cache_dir else None
        if path is not None and path.is_file():
            return torch.load(path, weights_only=True)
        data = build()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(data, tmp)
            tmp.replace(path)
        return data


class SpectralScenes(_Cached):
    """Still + box-filtered spectral volume of each scene of ``world`` (module docstring).

    Args:
        world: an ``OscillatingScenes`` (or any world whose items have ``still`` and ``spectral_volume``).
        volume_size: resolution ``v`` of the volumes (divides the scene size).
        cache_dir: where to keep the rendered tensors (None: in memory only).
    """

    def __init__(self, world, volume_size: int | None = None, cache_dir: str | None = None):
        self.world = world
        self.volume_size = int(volume_size or world.size)
        key = world_key(world, volume_size=self.volume_size)

        def build():
            stills, vols = [], []
            for i in range(len(world)):
                it = world[i]
                stills.append(it["still"])
                vols.append(box_resize(it["spectral_volume"], self.volume_size).transpose(0, 1))
            return {"still": torch.stack(stills), "x": torch.stack(vols).contiguous()}

        self.data = self._load_or_build(cache_dir, key, build)

    def __len__(self) -> int:
        return int(self.data["x"].shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"x": self.data["x"][i], "still": self.data["still"][i]}

    def volumes(self) -> torch.Tensor:
        """All volumes in the normaliser's layout ``(N, K, 4, v, v)``."""
        return self.data["x"].transpose(1, 2)


class SpectralView(Dataset):
    """``{"x": spectral volume (4, K, v, v), "still"}`` of each item of ``dataset`` (lazy; module docstring)."""

    def __init__(self, dataset: Dataset, volume_size: int | None = None):
        self.dataset, self.volume_size = dataset, None if volume_size is None else int(volume_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        it = self.dataset[i]
        vol = it["spectral_volume"]
        if self.volume_size is not None:
            vol = box_resize(vol, self.volume_size)
        return {"x": vol.transpose(0, 1).contiguous(), "still": it["still"]}


class RenderPairs(_Cached):
    """``frames_per_scene`` (still, frame t, motion to t, W) pairs of each scene of ``world`` (module docstring).

    The frame times are drawn from ``(seed, scene)``: uniform over ``1 .. frames - 1``.
    """

    def __init__(self, world, frames_per_scene: int = 8, motion_size: int | None = None, seed: int = 0,
                 cache_dir: str | None = None):
        self.world, self.m = world, int(frames_per_scene)
        self.motion_size = None if motion_size is None else int(motion_size)
        key = world_key(world, m=self.m, motion_size=self.motion_size, seed=int(seed))

        def build():
            out = {"still": [], "frame": [], "flow": [], "weight": []}
            for i in range(len(world)):
                it = world[i]
                disp = bottleneck(it["displacement"], self.motion_size)  # (2, T, S, S)
                T = disp.shape[1]
                rng = np.random.default_rng([int(seed), i, 31])
                ts = torch.from_numpy(rng.integers(1, T, size=self.m))
                out["still"].append(it["still"])
                out["frame"].append(it["x"][:, ts].transpose(0, 1))
                out["flow"].append(disp[:, ts].transpose(0, 1))
                out["weight"].append(motion_importance(disp))
            return {k: torch.stack(v).contiguous() for k, v in out.items()}

        self.data = self._load_or_build(cache_dir, key, build)

    def __len__(self) -> int:
        return int(self.data["frame"].shape[0]) * self.m

    def __getitem__(self, j: int) -> dict:
        i, f = divmod(int(j), self.m)
        d = self.data
        return {"still": d["still"][i], "x": d["frame"][i, f], "flow": d["flow"][i, f], "weight": d["weight"][i]}


class StillClips(Dataset):
    """A ``clip_len``-frame window of each scene (start drawn from ``(seed, index)``) and the scene's still.

    ``start_at_zero``: the fraction of windows that start at frame 0 (the still is then the window's first frame,
    as in the first chunk of a generated video)."""

    def __init__(self, world, clip_len: int = 16, seed: int = 0, start_at_zero: float = 0.25):
        if not 2 <= clip_len <= world.frames:
            raise ValueError(f"StillClips: clip_len must lie in [2, {world.frames}], got {clip_len}")
        self.world, self.clip_len, self.seed = world, int(clip_len), int(seed)
        self.start_at_zero = float(start_at_zero)

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i), 53])
        t0 = 0 if rng.random() < self.start_at_zero else int(rng.integers(0, self.world.frames - self.clip_len + 1))
        times = np.concatenate([[0.0], np.arange(t0, t0 + self.clip_len, dtype=np.float64)])
        x = self.world.render(int(i), times)["x"]
        return {"x": x[:, 1:].contiguous(), "still": x[:, 0].contiguous()}
