"""Body-pose skeleton shared by the puppet world and the pose-video readers: keypoint layout, rendered
pose maps, retargeting to another body's proportions, and OpenPose/DWPose JSON parsing.

Layout: the 14 body keypoints of OpenPose's COCO-18 skeleton (Cao et al. 2019, OpenPose, the ``COCO``
output format; DWPose, Yang et al. 2023, writes the same 18 points), in that order, so a puppet's
keypoint ``k`` and a real frame's keypoint ``k`` mean the same joint. Index 0 is OpenPose's nose; the
puppets put it at the head centre. Eyes and ears (COCO-18 indices 14-17) are not used. BODY_25 files
are mapped onto the same 14 points (their ``MidHip`` and feet are dropped).

Coordinates: keypoints are ``(x, y)`` normalised by the frame width and height, continuous (pixel
``(col, row)`` spans ``[col, col + 1) / W``), so ``floor(x * W)`` is the column of the pixel holding the
point. OpenPose writes pixel *centres* at integer coordinates; `read_openpose_json` adds the half pixel.

Pose maps (what Animate Anyone's Pose Guider reads, Hu et al. 2024, Sec. 3.2: the rendered skeleton
image) come in two forms: ``"rgb"`` (3 channels, each bone a line in its own OpenPose-style hue on
black) and ``"limbs"`` (one channel per bone, easier for tiny models). Lines are antialiased from
their distance field; values in [-1, 1] (background -1).

Retargeting (`retarget_pose`): every bone keeps its 2D direction and gets the target body's length
(or, given the source body's rest lengths, the target's length times the source bone's current
foreshortening ratio), rebuilt from the root (the neck) outward.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shared.data.raster import segment_distance

__all__ = [
    "BONES",
    "BONE_COLORS",
    "KEYPOINTS",
    "ROOT",
    "bone_lengths",
    "bone_vectors",
    "read_openpose_json",
    "render_pose_map",
    "retarget_pose",
]

KEYPOINTS = (
    "head",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
)
# (parent, child) in OpenPose's limb order; parents come before children (a tree rooted at the neck).
BONES = ((1, 0), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13))
ROOT = 1
# One hue per bone, evenly spaced as in OpenPose's renderings, full saturation and value.
BONE_COLORS = np.array([colorsys.hsv_to_rgb(i / len(BONES), 1.0, 1.0) for i in range(len(BONES))], np.float32)

# COCO-18 and BODY_25 indices of the 14 keypoints above.
_FROM_COCO18 = list(range(14))
_FROM_BODY25 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]


def bone_vectors(keypoints: torch.Tensor, bones: Sequence[tuple[int, int]] = BONES) -> torch.Tensor:
    """(..., K, 2) keypoints -> (..., B, 2) child minus parent for each bone."""
    p = torch.as_tensor([b[0] for b in bones])
    c = torch.as_tensor([b[1] for b in bones])
    return keypoints[..., c, :] - keypoints[..., p, :]


def bone_lengths(keypoints: torch.Tensor, bones: Sequence[tuple[int, int]] = BONES) -> torch.Tensor:
    """(..., K, 2) keypoints -> (..., B) bone lengths."""
    return bone_vectors(keypoints, bones).norm(dim=-1)


def retarget_pose(
    keypoints: torch.Tensor,
    target_lengths: torch.Tensor,
    source_lengths: torch.Tensor | None = None,
    bones: Sequence[tuple[int, int]] = BONES,
    root: int = ROOT,
) -> torch.Tensor:
    """Map a pose sequence onto another body: bone directions kept, bone lengths replaced.

    Args:
        keypoints: (..., K, 2) complete poses (every keypoint present), e.g. (T, K, 2).
        target_lengths: (B,) or broadcastable to (..., B): the new body's bone lengths.
        source_lengths: None -> every bone gets exactly its target length. Given (the source body's
            rest lengths, broadcastable to (..., B)) -> a bone of current length ``l`` gets
            ``l * target / source``: a bone foreshortened to 60 % of its rest length stays at 60 %
            of the target's (the mapping the puppet world's projection obeys exactly).
        bones: (parent, child) pairs, parents before children; root: the keypoint kept in place.

    Returns (..., K, 2). A zero-length source bone has no direction: its child lands on its parent.
    """
    kp = torch.as_tensor(keypoints)
    vec = bone_vectors(kp, bones)
    length = vec.norm(dim=-1, keepdim=True)
    target = torch.as_tensor(target_lengths, dtype=kp.dtype)[..., None]
    if source_lengths is None:
        scale = torch.where(length > 0, target / length.clamp_min(1e-12), torch.zeros_like(length))
    else:
        src = torch.as_tensor(source_lengths, dtype=kp.dtype)[..., None]
        if torch.any(src <= 0):
            raise ValueError(f"source_lengths must be positive, got {src.flatten().tolist()}")
        scale = (target / src).expand_as(length)
    new_vec = vec * scale
    out = kp.clone()
    placed = {root}
    for b, (p, c) in enumerate(bones):
        if p not in placed:
            raise ValueError(f"bone {b} ({p}->{c}) comes before its parent {p} is placed; order bones root-first")
        out[..., c, :] = out[..., p, :] + new_vec[..., b, :]
        placed.add(c)
    return out


def render_pose_map(
    keypoints: torch.Tensor | np.ndarray,
    size: int,
    conf: torch.Tensor | np.ndarray | None = None,
    mode: str = "rgb",
    width: float | None = None,
    threshold: float = 0.05,
) -> torch.Tensor:
    """Rendered skeleton maps of a pose sequence.

    Args:
        keypoints: (T, K, 2) normalised ``(x, y)`` (module docstring), K = len(KEYPOINTS).
        size: output side (square frames).
        conf: (T, K) confidences; a bone is drawn only where both ends exceed ``threshold``.
        mode: ``"rgb"`` -> (3, T, size, size) coloured lines (later bones drawn over earlier ones);
            ``"limbs"`` -> (B, T, size, size), one channel per bone.
        width: line half-width in pixels; default ``max(0.5, size / 40)``.

    Returns float32 in [-1, 1], background -1.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (len(KEYPOINTS), 2):
        raise ValueError(f"keypoints must be (T, {len(KEYPOINTS)}, 2), got shape {kp.shape}")
    if mode not in ("rgb", "limbs"):
        raise ValueError(f"pose map mode must be 'rgb' or 'limbs', got {mode!r}")
    T = kp.shape[0]
    w = max(0.5, size / 40) if width is None else float(width)
    c = np.ones(kp.shape[:2], np.float32) if conf is None else np.asarray(conf, dtype=np.float32)
    pix = kp * size
    g = np.arange(size, dtype=np.float32) + 0.5
    px, py = g[None, None, :], g[None, :, None]
    channels = 3 if mode == "rgb" else len(BONES)
    out = np.zeros((channels, T, size, size), np.float32)
    for b, (p, q) in enumerate(BONES):
        ok = (c[:, p] > threshold) & (c[:, q] > threshold)  # (T,)
        if not ok.any():
            continue
        d, _ = segment_distance(px, py, pix[:, p], pix[:, q])
        cov = np.clip(w + 0.5 - d, 0.0, 1.0) * ok[:, None, None]
        if mode == "limbs":
            out[b] = cov
        else:
            out += (BONE_COLORS[b][:, None, None, None] - out) * cov[None]
    return torch.from_numpy(out * 2 - 1)


def read_openpose_json(
    path: str | Path, width: int | None = None, height: int | None = None, units: str = "pixels"
) -> tuple[np.ndarray, np.ndarray]:
    """One OpenPose/DWPose JSON frame ``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}``.

    Returns ``(keypoints (14, 2) normalised (x, y), conf (14,))`` of the person with the highest total
    confidence (zeros when nobody is detected). ``units="pixels"``: coordinates are pixel centres and are
    divided by the frame size (``width``/``height``, or the file's ``canvas_width``/``canvas_height``);
    ``units="normalized"``: coordinates already lie in [0, 1]. 18 (COCO) or 25 (BODY_25) points.
    """
    if units not in ("pixels", "normalized"):
        raise ValueError(f"keypoint units must be 'pixels' or 'normalized', got {units!r}")
    data = json.loads(Path(path).read_text())
    people = data.get("people") if isinstance(data, dict) else None
    if people is None:
        raise ValueError(f"{path}: no 'people' list (OpenPose JSON expected)")
    kp, conf = np.zeros((len(KEYPOINTS), 2), np.float32), np.zeros(len(KEYPOINTS), np.float32)
    best = -math.inf
    for person in people:
        flat = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float32)
        if flat.size == 18 * 3:
            idx = _FROM_COCO18
        elif flat.size == 25 * 3:
            idx = _FROM_BODY25
        else:
            raise ValueError(f"{path}: pose_keypoints_2d has {flat.size} values, expected 54 (COCO-18) or 75 (BODY_25)")
        pts = flat.reshape(-1, 3)[idx]
        score = float(pts[:, 2].sum())
        if score > best:
            best, kp, conf = score, pts[:, :2].copy(), pts[:, 2].copy()
    if units == "pixels":
        w = width if width is not None else data.get("canvas_width")
        h = height if height is not None else data.get("canvas_height")
        if not w or not h:
            raise ValueError(f"{path}: pixel keypoints need the frame size (no canvas_width/canvas_height)")
        kp = (kp + 0.5) / np.array([w, h], np.float32)
    kp[conf <= 0] = 0.0
    return kp, conf
