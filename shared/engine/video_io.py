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

__all__ = ["save_image_grid", "save_labelled_columns", "save_labelled_rows", "save_labelled_video_grid",
           "save_video_grid", "to_uint8", "video_grid_frames"]


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


def save_labelled_video_grid(
    rows: list[tuple[str, torch.Tensor]],
    path: str | Path,
    fps: float = 4,
    scale: int = 3,
    padding: int = 2,
    label_width: int = 150,
) -> Path:
    """One GIF/MP4 whose rows are labelled video sets, e.g. ``[("real", v1), ("per-frame", v2), ("video", v3)]``
    (each (k, C, T, H, W) in [-1, 1]; the rows' k, T, H and W must agree): every row is a strip of its k clips
    (``scale`` x nearest), its label written in a left column (PIL's built-in bitmap font, white on black), and the
    frame counter ``t = i / T`` in the top-left corner, so a viewer can compare the rows frame by frame."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("save_labelled_video_grid needs at least one (label, videos) row")
    shapes = {tuple(v.shape[:1]) + tuple(v.shape[2:]) for _, v in rows}
    if len(shapes) != 1:
        raise ValueError(f"the rows' videos must share (k, T, H, W), got {sorted(shapes)}")
    strips = [video_grid_frames(v, nrow=v.shape[0], padding=padding, pad_value=1.0, scale=scale) for _, v in rows]
    t, h, w, _ = strips[0].shape
    frames = []
    for i in range(t):
        canvas = Image.new("RGB", (label_width + w, len(rows) * h + 14), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 2), f"t = {i + 1} / {t}", fill=(255, 255, 255))
        for r, ((label, _), strip) in enumerate(zip(rows, strips)):
            canvas.paste(Image.fromarray(strip[i]), (label_width, 14 + r * h))
            for k, line in enumerate(str(label).split("\n")):
                draw.text((4, 14 + r * h + h // 2 - 6 + 11 * k - 5 * (str(label).count("\n"))), line,
                          fill=(255, 255, 255))
        frames.append(np.asarray(canvas))
    frames = np.stack(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
    elif path.suffix.lower() == ".mp4":
        _write_mp4(frames, path, fps, 18)
    else:
        raise ValueError(f"save_labelled_video_grid writes .gif or .mp4, got '{path}'")
    return path


def save_labelled_columns(columns: Mapping[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]],
                          path: str | Path, fps: float = 4, scale: int = 4, padding: int = 2) -> Path:
    """A GIF whose columns are labelled video sets side by side (reference | pose | generated, input | control |
    output, ...): ``columns`` maps label -> videos (or is a list of ``(label, videos)`` pairs); every value is
    ``(B, C, T, H, W)`` (or ``(B, C, H, W)``, shown still; C = 1 or 3) in [-1, 1] with the same B, H, W; row i shows
    item i of every column (a column of fewer frames holds its last); the label is written above its column."""
    from PIL import Image, ImageDraw

    path = Path(path)
    if path.suffix.lower() != ".gif" or not columns:
        raise ValueError(f"save_labelled_columns writes a .gif of at least one column, got '{path}'")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gif(np.stack(out), path, fps)
    return path


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


def save_labelled_rows(rows: dict[str, torch.Tensor], path: str | Path, fps: float = 4, scale: int = 3,
                       padding: int = 2, label_width: int | None = None) -> Path:
    """One GIF/MP4 comparing methods: row ``k`` tiles the videos (B, C, T, H, W) of ``rows[label_k]`` side by side,
    with ``label_k`` written on a strip to its left (``\\n`` breaks lines). Rows of fewer frames hold their last."""
    if not rows:
        raise ValueError("save_labelled_rows needs at least one row")
    grids = {k: video_grid_frames(v, nrow=v.shape[0], padding=padding, scale=scale) for k, v in rows.items()}
    t = max(g.shape[0] for g in grids.values())
    width = max(g.shape[2] for g in grids.values())
    lw = label_width or 6 * max(len(line) for k in rows for line in k.split("\n")) + 8
    out = []
    for label, g in grids.items():
        g = np.concatenate([g, np.repeat(g[-1:], t - g.shape[0], axis=0)]) if g.shape[0] < t else g
        g = np.pad(g, ((0, 0), (0, 0), (0, width - g.shape[2]), (0, 0)), constant_values=255)
        strip = np.broadcast_to(_label_strip(label, g.shape[1], lw), (t, g.shape[1], lw, 3))
        out.append(np.concatenate([strip, g], axis=2))
    frames = np.ascontiguousarray(np.concatenate(out, axis=1))
    path = Path(path)
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"save_labelled_rows writes .gif or .mp4, got '{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
    else:
        _write_mp4(frames, path, fps, 18)
    return path
