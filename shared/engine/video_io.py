"""Writing samples to disk: image grids as PNG, video grids as GIF or MP4.

Inputs follow the project's conventions — images (B, C, H, W), videos (B, C, T, H, W), float in
[-1, 1] (clamped) with C = 1 or 3. A video grid tiles the B videos frame by frame with
``torchvision.utils.make_grid`` (``nrow`` videos per row, ``padding`` pixels of ``pad_value``), and
``scale`` enlarges every pixel (nearest) so 32x32 samples stay visible. GIFs are written with PIL
(looping, ``1000 / fps`` ms per frame), MP4 with PyAV (libx264, yuv420p; odd sides are padded to
even ones as the codec requires). Each writer creates missing parent folders and returns the path.
:func:`save_labelled_rows` writes method comparisons: one row of videos per method, its name printed beside it.
:func:`save_labelled_columns` writes side-by-side columns (reference | pose | generated, input | control | output
...) under a header row of labels (PIL's default bitmap font), one example per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["save_image_grid", "save_labelled_columns", "save_labelled_rows", "save_video_grid",
           "to_uint8", "video_grid_frames"]


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


def _check_suffix(path: str | Path, writer: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` as a Path, or a one-line error naming the writer, the path and the extensions it writes."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{writer} writes {' or '.join(suffixes)}, got '{path}'")
    return path


def _write_frames(frames: np.ndarray, path: str | Path, fps: float, crf: int = 18) -> Path:
    """Write (T, H, W, 3) uint8 frames to ``path`` (.gif with PIL, .mp4 with PyAV); creates missing parents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
    else:
        _write_mp4(frames, path, fps, crf)
    return path


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
    _check_suffix(path, "save_video_grid", (".gif", ".mp4"))
    return _write_frames(video_grid_frames(videos, nrow, padding, pad_value, scale), path, fps, crf)


def save_labelled_columns(columns: Mapping[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]],
                          path: str | Path, fps: float = 4, scale: int = 4, padding: int = 2) -> Path:
    """A GIF whose columns are labelled video sets side by side (reference | pose | generated, input | control |
    output, ...): ``columns`` maps label -> videos (or is a list of ``(label, videos)`` pairs); every value is
    ``(B, C, T, H, W)`` (or ``(B, C, H, W)``, shown still; C = 1 or 3) in [-1, 1] with the same B, H, W; row i shows
    item i of every column (a column of fewer frames holds its last); the label is written above its column."""
    from PIL import Image, ImageDraw

    path = _check_suffix(path, "save_labelled_columns", (".gif",))
    if not columns:
        raise ValueError(f"save_labelled_columns needs at least one column, got none for '{path}'")
    vids = {}
    for label, v in (columns.items() if isinstance(columns, Mapping) else columns):
        v = v.detach().float().cpu()
        if v.ndim == 4:
            v = v[:, :, None]
        if v.ndim != 5:
            raise ValueError(f"column {label!r}: videos must be (B, C, T, H, W), got shape {tuple(v.shape)}")
        if v.shape[1] == 1:
            v = v.expand(-1, 3, -1, -1, -1)
        vids[label] = v
    shapes = {(v.shape[0], v.shape[1], v.shape[3], v.shape[4]) for v in vids.values()}
    if len(shapes) != 1:
        raise ValueError(f"columns differ in items/channels/size: {shapes}")
    b, _, h, w = shapes.pop()
    frames = max(v.shape[2] for v in vids.values())
    cell_h, cell_w = h * scale + padding, w * scale + padding
    header = 12
    out = []
    for t in range(frames):
        canvas = np.full((header + b * cell_h, len(vids) * cell_w, 3), 255, np.uint8)
        for j, v in enumerate(vids.values()):
            x = v[:, :, min(t, v.shape[2] - 1)]
            x = F.interpolate(x.clamp(-1, 1), scale_factor=scale, mode="nearest") if scale > 1 else x.clamp(-1, 1)
            img = to_uint8(x).permute(0, 2, 3, 1).numpy()
            for i in range(b):
                y0, x0 = header + i * cell_h, j * cell_w
                canvas[y0:y0 + h * scale, x0:x0 + w * scale] = img[i]
        im = Image.fromarray(canvas)
        draw = ImageDraw.Draw(im)
        for j, label in enumerate(vids):
            draw.text((j * cell_w + 1, 0), label[: max(1, cell_w // 6)], fill=(0, 0, 0))
        out.append(np.asarray(im))
    return _write_frames(np.stack(out), path, fps)


def _label_strip(text: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: ``text`` in white on black, PIL's built-in bitmap font, vertically centred."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    lines = text.split("\n")
    y = max(0, (height - 11 * len(lines)) // 2)
    for line in lines:
        draw.text((3, y), line, fill=(255, 255, 255))
        y += 11
    return np.asarray(im)


def save_labelled_rows(rows: Mapping[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]], path: str | Path,
                       fps: float = 4, scale: int = 3, padding: int = 2, label_width: int | None = None,
                       frame_counter: bool = False) -> Path:
    """One GIF/MP4 comparing methods: row ``k`` tiles the videos (B, C, T, H, W) in [-1, 1] of the k-th
    ``(label, videos)`` (``rows`` is a dict or a list of pairs) side by side, with the label written on a strip to its
    left (``\\n`` breaks lines). Rows of fewer frames hold their last. ``frame_counter`` adds a header line
    ``t = i / T`` so a viewer can compare the rows frame by frame."""
    from PIL import Image, ImageDraw

    items = list(rows.items() if isinstance(rows, Mapping) else rows)
    if not items:
        raise ValueError("save_labelled_rows needs at least one (label, videos) row")
    path = _check_suffix(path, "save_labelled_rows", (".gif", ".mp4"))
    grids = [video_grid_frames(v, nrow=v.shape[0], padding=padding, scale=scale) for _, v in items]
    t = max(g.shape[0] for g in grids)
    width = max(g.shape[2] for g in grids)
    lw = label_width or 6 * max(len(line) for k, _ in items for line in str(k).split("\n")) + 8
    out = []
    for (label, _), g in zip(items, grids):
        g = np.concatenate([g, np.repeat(g[-1:], t - g.shape[0], axis=0)]) if g.shape[0] < t else g
        g = np.pad(g, ((0, 0), (0, 0), (0, width - g.shape[2]), (0, 0)), constant_values=255)
        strip = np.broadcast_to(_label_strip(str(label), g.shape[1], lw), (t, g.shape[1], lw, 3))
        out.append(np.concatenate([strip, g], axis=2))
    frames = np.ascontiguousarray(np.concatenate(out, axis=1))
    if frame_counter:
        header = []
        for i in range(t):
            im = Image.new("RGB", (frames.shape[2], 14), (0, 0, 0))
            ImageDraw.Draw(im).text((4, 2), f"t = {i + 1} / {t}", fill=(255, 255, 255))
            header.append(np.asarray(im))
        frames = np.ascontiguousarray(np.concatenate([np.stack(header), frames], axis=1))
    return _write_frames(frames, path, fps)
