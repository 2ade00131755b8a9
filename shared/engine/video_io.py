"""Writing samples to disk: image grids as PNG, video grids as GIF or MP4.

Inputs follow the project's conventions — images (B, C, H, W), videos (B, C, T, H, W), float in
[-1, 1] (clamped) with C = 1 or 3. A video grid tiles the B videos frame by frame with
``torchvision.utils.make_grid`` (``nrow`` videos per row, ``padding`` pixels of ``pad_value``), and
``scale`` enlarges every pixel (nearest) so 32x32 samples stay visible. GIFs are written with PIL
(looping, ``1000 / fps`` ms per frame), MP4 with PyAV (libx264, yuv420p; odd sides are padded to
even ones as the codec requires). Each writer creates missing parent folders and returns the path.
:func:`save_labelled_columns` writes side-by-side columns (input | control | output ...) under a header row of
labels (PIL's default bitmap font), one example per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["save_image_grid", "save_video_grid", "save_labelled_columns", "to_uint8", "video_grid_frames"]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255] (rounded, clamped)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _grid(images: torch.Tensor, nrow: int, padding: int, pad_value: float, scale: int) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (H', W', 3) uint8."""
    from torchvision.utils import make_grid

    x = images.detach().float().cpu().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"images need 1 or 3 channels, got shape {tuple(images.shape)}")
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    g = make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value)  # (3, H', W')
    return to_uint8(g).permute(1, 2, 0).contiguous()


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    scale: int = 1,
) -> Path:
    """Write images (B, C, H, W) in [-1, 1] as one PNG grid with ``nrow`` images per row."""
    from PIL import Image

    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(images, nrow, padding, pad_value, scale).numpy()).save(path)
    return path


def video_grid_frames(
    videos: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0, scale: int = 1
) -> np.ndarray:
    """Videos (B, C, T, H, W) in [-1, 1] -> grid frames (T, H', W', 3) uint8."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, C, T, H, W), got shape {tuple(videos.shape)}")
    return np.stack(
        [_grid(videos[:, :, t], nrow, padding, pad_value, scale).numpy() for t in range(videos.shape[2])]
    )


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(
        path,
        save_all=True,
        append_images=ims[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
        optimize=False,
        disposal=1,
    )


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sides
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_video_grid(
    videos: torch.Tensor,
    path: str | Path,
    nrow: int = 8,
    fps: float = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    scale: int = 1,
    crf: int = 18,
) -> Path:
    """Write videos (B, C, T, H, W) in [-1, 1] as one grid video; the format follows the extension
    (``.gif`` or ``.mp4``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"save_video_grid writes .gif or .mp4, got '{path}'")
    frames = video_grid_frames(videos, nrow, padding, pad_value, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        _write_gif(frames, path, fps)
    else:
        _write_mp4(frames, path, fps, crf)
    return path


def save_labelled_columns(
    columns: list[tuple[str, torch.Tensor]],
    path: str | Path,
    fps: float = 4,
    scale: int = 3,
    padding: int = 2,
    pad_value: float = 1.0,
) -> Path:
    """Write a GIF whose columns are labelled video sets: ``columns`` is ``[(label, videos (B, C, T, H, W)), ...]``
    with the same B, T, H, W (C = 1 or 3; a still image set (B, C, H, W) is repeated over time). Row ``b`` shows
    example ``b`` in every column; the labels sit in a header row above their columns."""
    from PIL import Image, ImageDraw

    if not columns:
        raise ValueError("save_labelled_columns needs at least one (label, videos) column")
    vids = []
    for label, v in columns:
        v = v.detach().float().cpu()
        if v.ndim == 4:
            v = v[:, :, None]
        if v.ndim != 5:
            raise ValueError(f"column {label!r}: videos must be (B, C, T, H, W), got shape {tuple(v.shape)}")
        vids.append(v)
    t = max(v.shape[2] for v in vids)
    vids = [v.expand(-1, -1, t, -1, -1) if v.shape[2] == 1 else v for v in vids]
    shapes = {(v.shape[0], v.shape[2], v.shape[3], v.shape[4]) for v in vids}
    if len(shapes) != 1:
        raise ValueError(f"columns differ in (B, T, H, W): {sorted(shapes)}")
    cols = [video_grid_frames(v, nrow=1, padding=padding, pad_value=pad_value, scale=scale) for v in vids]
    body = np.concatenate(cols, axis=2)  # (T, H', W', 3)
    widths = [c.shape[2] for c in cols]
    header = Image.new("RGB", (body.shape[2], 12), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    x = 0
    for (label, _), w in zip(columns, widths):
        draw.text((x + 2, 1), str(label), fill=(0, 0, 0))
        x += w
    frames = np.concatenate([np.broadcast_to(np.asarray(header)[None], (t, *np.asarray(header).shape)), body], 1)
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"save_labelled_columns writes .gif, got '{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gif(np.ascontiguousarray(frames), path, fps)
    return path
