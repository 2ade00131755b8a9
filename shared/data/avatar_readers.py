"""Readers for the human-avatar papers' real data, from a local path (decoded with PyAV, images with PIL).

- `PoseVideoDataset`: UBC-Fashion (Zablotskaia et al. 2019) / TikTok-style (Jafarian & Park 2021)
  dancing videos with a per-frame pose in the OpenPose/DWPose JSON format users produce
  (``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}``, one file per frame, 18 or 25 points; see
  `shared.data.pose.read_openpose_json`). Two layouts:

  * ``layout="video"`` (UBC-Fashion): ``root/<name>.mp4`` (any of ``extensions``, recursively) with the
    poses in ``pose_root/<name>/*.json`` (``pose_root`` defaults to ``root``; for a video in a
    subfolder, ``pose_root/<subfolder>/<name>/``);
  * ``layout="frames"`` (TikTok): ``root/<name>/<images_dir>/*.png|jpg`` with the poses in
    ``root/<name>/<poses_dir>/*.json``.

  JSON file ``i`` (natural filename order) is the pose of frame ``i``; a clip whose video has a
  different number of frames than pose files is skipped (and counted). Items give what the puppet
  world gives (`shared.data.puppets`), from real data: ``x``, ``reference`` (another frame of the same
  video, outside the clip when the video is long enough: Animate Anyone's training reference),
  ``keypoints`` (T, 14, 2) normalised to the output crop (points outside the crop lie outside [0, 1]),
  ``keypoint_conf`` (T, 14) (0 = not detected; such a joint's keypoint is (0, 0)), ``pose_map``
  (rendered skeletons), the reference's ``reference_keypoints`` / ``reference_conf`` /
  ``reference_pose_map`` / ``reference_index``, ``start``, ``path``.

- `TalkingHeadDataset`: HDTF-style talking-head clips (Zhang et al. 2021): ``root/**/<clip>.mp4`` with
  an audio stream. The audio is decoded with PyAV, mixed to mono and resampled to ``sample_rate``; it
  is aligned to the video by the streams' timestamps: frame ``i`` (time ``t0 + i / fps`` for the
  video's first timestamp ``t0`` and average rate ``fps``) owns the ``spf = sample_rate / data.fps``
  samples from that time on. The file's rate must be ``fps`` within 0.2 % (else it is skipped), and
  ``sample_rate / fps`` an integer. Items: ``x``, ``reference`` (another frame), ``audio`` (T * spf,),
  ``audio_features`` (T, D, window) (`shared.data.audio.AudioFrameFeatures`: log-mel or a local speech
  encoder, windows of ``context`` frames around each frame as EMO uses; audio before the file's start
  or after its end is silence), ``start``, ``path``. No face box: real clips carry none (EMO's face
  locator needs a detector, not part of this reader).

Clips, resizing, per-epoch starts (``train=True``), skipping of undecodable files with a warning (counted
in ``num_skipped``; ``skip_reasons`` keeps the first error of each) and the one-line error when every
file fails are those of `shared.data.video_readers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shared.data.audio import AudioFrameFeatures, SpeechEncoder, padded_slice
from shared.data.pose import read_openpose_json, render_pose_map
from shared.data.video_readers import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ClipError,
    _ClipDataset,
    _natural_key,
    _require,
    _resize_crop,
)

__all__ = ["PoseVideoDataset", "TalkingHeadDataset"]


def _video_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    exts = tuple(e.lower() for e in extensions)
    files = [Path(d) / f for d, _, names in os.walk(root) for f in names if os.path.splitext(f)[1].lower() in exts]
    return sorted(files, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _count_frames(path: str) -> int:
    """Frames of the first video stream: the container's count, else the number of video packets."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        if s.frames:
            return int(s.frames)
        return sum(1 for p in c.demux(s) if p.size)


def _decode_frames(path: str, indices: Sequence[int]) -> tuple[dict[int, np.ndarray], dict]:
    """Decode the frames ``indices`` of a video (uint8 (H, W, 3)); also the stream's rate and first time.

    Runs of wanted frames more than a second apart are reached by seeking (to the keyframe before the
    run, then decoding forward); a frame's index is read from its timestamp, ``round((pts - start) *
    fps)``, so the stream must have a constant rate. Without timestamps the video is decoded from the
    start, counting frames."""
    import av

    want = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        fps = float(s.average_rate) if s.average_rate else float("nan")
        tb = float(s.time_base) if s.time_base else float("nan")
        start = s.start_time if s.start_time is not None else 0
        info = {"fps": fps, "t0": start * tb if tb == tb else 0.0}
        gap = max(1, int(fps)) if fps == fps else len(want) + max(want)
        runs = [[want[0]]]
        for i in want[1:]:
            if i - runs[-1][-1] <= gap:
                runs[-1].append(i)
            else:
                runs.append([i])
        timed = fps == fps and tb == tb
        if timed:
            for run in runs:
                if run[0] > 0:
                    c.seek(start + int(run[0] / fps / tb), stream=s, backward=True, any_frame=False)
                for frame in c.decode(s):
                    if frame.pts is None:
                        timed = False
                        break
                    i = round((frame.pts - start) * tb * fps)
                    if i in run:
                        out[i] = frame.to_ndarray(format="rgb24")
                    if i >= run[-1]:
                        break
                if not timed:
                    break
        if not timed:  # count frames from the start instead
            out.clear()
            c.seek(0)
            for i, frame in enumerate(c.decode(s)):
                if i in want:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= want[-1]:
                    break
    missing = set(want) - out.keys()
    if missing:
        raise ClipError(f"the video ended before frame {min(missing)}")
    return out, info


def _reference_index(rng: np.random.Generator, total: int, first: int, span: int) -> int:
    """A frame outside ``[first, first + span)`` when there is one, else any frame."""
    outside = total - span
    if outside <= 0:
        return int(rng.integers(total))
    j = int(rng.integers(outside))
    return j if j < first else j + span


def _crop_keypoints(kp: np.ndarray, h: int, w: int, size: int | None) -> np.ndarray:
    """Normalised keypoints of an (h, w) frame -> normalised in the resized, centre-cropped frame
    (the geometry of `shared.data.video_readers._resize_crop`)."""
    if size is None:
        return kp
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    return ((kp * np.array([nw, nh], np.float32)) - np.array([left, top], np.float32)) / size


class PoseVideoDataset(_ClipDataset):
    """UBC-Fashion / TikTok-style videos with OpenPose/DWPose JSON poses (module docstring).

    Args:
        root: videos (``layout="video"``) or clip folders (``layout="frames"``).
        frames, stride, size, train, seed: clip sampling (`shared.data.video_readers`).
        layout: ``"video"`` or ``"frames"``. pose_root: folder of the per-video pose folders (video layout).
        images_dir, poses_dir: subfolders of a clip folder (frames layout).
        keypoint_units: ``"pixels"`` (OpenPose's default) or ``"normalized"`` JSON coordinates.
        pose_mode: ``"rgb"`` or ``"limbs"`` pose maps. config_key: named in errors.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        train: bool = False,
        seed: int = 0,
        layout: str = "video",
        pose_root: str | None = None,
        images_dir: str = "images",
        poses_dir: str = "openpose_json",
        keypoint_units: str = "pixels",
        pose_mode: str = "rgb",
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        config_key: str = "data.root",
    ):
        super().__init__(frames, stride, size, train, seed)
        self.root = _require(root, config_key)
        if layout not in ("video", "frames"):
            raise ValueError(f"layout must be 'video' or 'frames', got {layout!r}")
        if keypoint_units not in ("pixels", "normalized"):
            raise ValueError(f"keypoint_units must be 'pixels' or 'normalized', got {keypoint_units!r}")
        if pose_mode not in ("rgb", "limbs"):
            raise ValueError(f"pose_mode must be 'rgb' or 'limbs', got {pose_mode!r}")
        self.layout, self.keypoint_units, self.pose_mode = layout, keypoint_units, pose_mode
        self.clips: list[tuple[str, Path]] = []  # (video file or image folder, pose folder)
        if layout == "video":
            pose_base = self.root if pose_root is None else _require(pose_root, "data.pose_root", "pose folder")
            for f in _video_files(self.root, extensions):
                rel = f.relative_to(self.root).with_suffix("")
                self.clips.append((str(f), pose_base / rel))
            what = f"video files ({', '.join(extensions)})"
        else:
            for d in sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
                if (d / images_dir).is_dir():
                    self.clips.append((str(d / images_dir), d / poses_dir))
            what = f"clip folders with an '{images_dir}/' subfolder"
        if not self.clips:
            raise FileNotFoundError(f"no {what} under '{self.root}' (config key {config_key})")

    def __len__(self) -> int:
        return len(self.clips)

    def _source(self, index: int) -> str:
        return self.clips[index][0]

    def _pose_files(self, index: int) -> list[Path]:
        folder = self.clips[index][1]
        if not folder.is_dir():
            raise ClipError(f"pose folder not found: '{folder}'")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".json"), key=lambda p: _natural_key(p.name))
        if not files:
            raise ClipError(f"no pose .json files in '{folder}'")
        return files

    def _images(self, index: int) -> list[str]:
        folder = self.clips[index][0]
        names = sorted(
            (f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS), key=_natural_key
        )
        return [os.path.join(folder, f) for f in names]

    def _count(self, index: int) -> int:
        return _count_frames(self.clips[index][0]) if self.layout == "video" else len(self._images(index))

    def _frames(self, index: int, indices: Sequence[int]) -> dict[int, np.ndarray]:
        if self.layout == "video":
            return _decode_frames(self.clips[index][0], indices)[0]
        from PIL import Image

        names = self._images(index)
        out = {}
        for i in set(indices):
            with Image.open(names[i]) as im:
                out[i] = np.asarray(im.convert("RGB"))
        return out

    def _read(self, index, first, count, step, pick):
        total = self._count(index)
        first = pick(total) if first is None else first
        got = self._frames(index, [first + i * step for i in range(count)])
        return torch.from_numpy(np.stack([got[first + i * step] for i in range(count)])), first

    def _load(self, index: int) -> dict:
        rng = self._rng(index)
        poses = self._pose_files(index)
        total = self._count(index)
        if total != len(poses):
            raise ClipError(f"{total} frames but {len(poses)} pose files in '{self.clips[index][1]}'")
        first = self._start_picker(rng, self.frames, self.stride)(total)
        span = (self.frames - 1) * self.stride + 1
        ids = [first + i * self.stride for i in range(self.frames)]
        ref = _reference_index(rng, total, first, span)
        got = self._frames(index, ids + [ref])
        h, w = got[ids[0]].shape[:2]
        if any(got[i].shape != got[ids[0]].shape for i in ids + [ref]):
            raise ClipError("frames of different sizes")
        kps, confs = zip(*(read_openpose_json(poses[i], w, h, self.keypoint_units) for i in ids + [ref]))
        kp = np.stack([_crop_keypoints(k, h, w, self.size) for k in kps]).astype(np.float32)
        conf = np.stack(confs).astype(np.float32)
        kp[conf <= 0] = 0.0  # undetected joints: (0, 0) with confidence 0, as OpenPose writes them
        clip = _resize_crop(torch.from_numpy(np.stack([got[i] for i in ids + [ref]])), self.size)
        side = clip.shape[-1]
        pose_map = render_pose_map(kp, side, conf, mode=self.pose_mode)
        return {
            "x": clip[:, :-1].contiguous(),
            "reference": clip[:, -1].contiguous(),
            "pose_map": pose_map[:, :-1].contiguous(),
            "keypoints": torch.from_numpy(kp[:-1]),
            "keypoint_conf": torch.from_numpy(conf[:-1]),
            "reference_keypoints": torch.from_numpy(kp[-1]),
            "reference_conf": torch.from_numpy(conf[-1]),
            "reference_pose_map": pose_map[:, -1].contiguous(),
            "reference_index": torch.tensor(ref, dtype=torch.long),
            "start": torch.tensor(first, dtype=torch.long),
            "path": self.clips[index][0],
        }


def _decode_audio(path: str, sample_rate: int, t_lo: float, t_hi: float) -> tuple[np.ndarray, float]:
    """The first audio stream around ``[t_lo, t_hi]`` seconds, mono float32 at ``sample_rate``, and the time
    of its first sample. Seeks to half a second before ``t_lo`` (the decoder's first frames after a seek
    may lack their overlap) and stops a little after ``t_hi``."""
    import av

    chunks, t_first = [], None
    with av.open(path) as c:
        if not c.streams.audio:
            raise ClipError("no audio stream")
        s = c.streams.audio[0]
        if t_lo > 1.0 and s.time_base:
            c.seek(int((t_lo - 0.5) / float(s.time_base)), stream=s, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in c.decode(s):
            if t_first is None:
                t_first = float(frame.time) if frame.time is not None else 0.0
            for o in resampler.resample(frame):
                chunks.append(o.to_ndarray().reshape(-1))
            if frame.time is not None and frame.time > t_hi + 0.25:
                break
        for o in resampler.resample(None):
            chunks.append(o.to_ndarray().reshape(-1))
    if not chunks:
        raise ClipError("the audio stream has no samples")
    return np.concatenate(chunks).astype(np.float32), float(t_first or 0.0)


class TalkingHeadDataset(_ClipDataset):
    """HDTF-style talking-head clips with their audio (module docstring).

    Args:
        root: folder of video files (searched recursively).
        frames, size, train, seed: clip sampling (consecutive frames: audio needs the frame rate).
        fps: the videos' frame rate (files at another rate are skipped).
        sample_rate, n_mels, n_fft, hop, context, audio_encoder: the audio features (`AudioFrameFeatures`).
        extensions, config_key: video suffixes, and the key named in errors.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        size: int | None = 64,
        train: bool = False,
        seed: int = 0,
        fps: int = 25,
        sample_rate: int = 16000,
        n_mels: int = 40,
        n_fft: int = 512,
        hop: int = 160,
        context: int = 2,
        audio_encoder: SpeechEncoder | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        config_key: str = "data.root",
    ):
        super().__init__(frames, 1, size, train, seed)
        self.root = _require(root, config_key)
        self.features = AudioFrameFeatures(sample_rate, fps, n_mels, n_fft, hop, context, encoder=audio_encoder)
        self.fps, self.sample_rate = self.features.fps, self.features.sample_rate
        self.samples_per_frame = self.features.samples_per_frame
        self.files = _video_files(self.root, extensions)
        if not self.files:
            raise FileNotFoundError(
                f"no video files ({', '.join(extensions)}) under '{self.root}' (config key {config_key})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def _source(self, index: int) -> str:
        return str(self.files[index])

    def _read(self, index, first, count, step, pick):
        path = str(self.files[index])
        first = pick(_count_frames(path)) if first is None else first
        got, _ = _decode_frames(path, [first + i * step for i in range(count)])
        return torch.from_numpy(np.stack([got[first + i * step] for i in range(count)])), first

    def _load(self, index: int) -> dict:
        path = str(self.files[index])
        rng = self._rng(index)
        total = _count_frames(path)
        first = self._start_picker(rng, self.frames, 1)(total)
        ids = list(range(first, first + self.frames))
        ref = _reference_index(rng, total, first, self.frames)
        got, info = _decode_frames(path, ids + [ref])
        if not abs(info["fps"] - self.fps) <= 0.002 * self.fps:
            raise ClipError(f"frame rate {info['fps']:.3f}, expected {self.fps} (the dataset's fps)")
        spf = self.samples_per_frame
        t_clip = info["t0"] + first / info["fps"]  # the clip's first frame on the common clock
        margin = (self.features.context + 1) / self.fps + self.features.n_fft / self.sample_rate
        wave, t_audio = _decode_audio(path, self.sample_rate, t_clip - margin, t_clip + self.frames / self.fps + margin)
        start = int(round((t_clip - t_audio) * self.sample_rate))  # the clip's first sample in `wave`
        audio = padded_slice(torch.from_numpy(wave), start, start + self.frames * spf)
        features = self.features(torch.from_numpy(wave), start, self.frames)
        clip = _resize_crop(torch.from_numpy(np.stack([got[i] for i in ids + [ref]])), self.size)
        return {
            "x": clip[:, :-1].contiguous(),
            "reference": clip[:, -1].contiguous(),
            "audio": audio,
            "audio_features": features,
            "reference_index": torch.tensor(ref, dtype=torch.long),
            "start": torch.tensor(first, dtype=torch.long),
            "fps": torch.tensor(info["fps"], dtype=torch.float32),
            "path": path,
        }
