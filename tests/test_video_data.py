"""Video worlds, readers for the real datasets' layouts, the video datamodule, its configs and video I/O."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shared.data.video_datamodule import JointImageVideo, VideoDataModule
from shared.data.video_readers import CsvVideoDataset, FrameFolderDataset, VideoFolderDataset, class_caption
from shared.data.video_worlds import (
    _STEPS8,
    DIRECTIONS4,
    DIRECTIONS8,
    MovingDigits,
    ShapesVideo,
    VideoFrames,
    digits_split,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


# -- MovingDigits ----------


def test_moving_digits_shapes_ranges_and_determinism():
    ds = MovingDigits(n=20, seed=3)
    item = ds[5]
    assert item["x"].shape == (1, 16, 32, 32) and item["x"].dtype == torch.float32
    assert item["x"].min() >= -1 and item["x"].max() <= 1 and item["x"].max() > 0.5
    assert item["y"].dtype == torch.long and 0 <= int(item["y"]) < 10
    assert 0 <= int(item["direction"]) < 8 and int(item["motion"]) == int(item["direction"])
    assert item["caption"] == f"digit {int(item['y'])} moving {DIRECTIONS8[int(item['direction'])]}"
    assert _same(item, MovingDigits(n=20, seed=3)[5])  # pure function of (seed, split, index)
    assert not torch.equal(item["x"], MovingDigits(n=20, seed=4)[5]["x"])
    assert not torch.equal(item["x"], MovingDigits(n=20, seed=3, split="val")[5]["x"])
    small = MovingDigits(n=4, frames=8, size=16)[0]
    assert small["x"].shape == (1, 8, 16, 16) and small["positions"].shape == (8, 1, 2)


def test_moving_digits_test_split_uses_held_out_digit_images():
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    train_set = {t.numpy().tobytes() for t in train}
    assert not any(t.numpy().tobytes() in train_set for t in test)
    assert MovingDigits(n=1, split="test")._images.shape[0] == len(test)


def test_moving_digits_bounce_stays_in_canvas_and_starts_in_labelled_direction():
    ds = MovingDigits(n=200, seed=0)
    room = ds.size - ds.digit_size
    bounced = 0
    for i in range(len(ds)):
        it = ds[i]
        pos = it["positions"][:, 0].long()  # (T, 2) top-left
        assert pos.min() >= 0 and pos.max() <= room
        # Every pixel outside the digit's box is background.
        x = it["x"][0]
        for t in range(ds.frames):
            r, c = pos[t].tolist()
            outside = x[t].clone()
            outside[r : r + ds.digit_size, c : c + ds.digit_size] = -1
            assert torch.all(outside == -1)
        step = pos[1:] - pos[:-1]
        expected = torch.from_numpy(_STEPS8[int(it["direction"])]) * int(it["speed"])
        k = max(2, ds.frames // 4)
        assert torch.all(step[:k] == expected), "the labelled direction must hold for the first steps"
        flips = (torch.sign(step[1:]) * torch.sign(step[:-1]) < 0).any()
        bounced += int(flips)
        assert torch.all(step.abs().amax(dim=1) <= int(it["speed"]))  # a bounce reflects within the step
    assert bounced > 20  # bouncing actually happens


def test_moving_digits_multiple_digits():
    it = MovingDigits(n=3, num_digits=2, seed=1)[0]
    assert it["y"].shape == (2,) and it["direction"].shape == (2,) and it["positions"].shape == (16, 2, 2)
    assert it["caption"].count("digit") == 2


# -- ShapesVideo ----------


def _parse(caption: str) -> list[tuple[str, str, str]]:
    out = []
    for part in caption.split(" and "):
        a, color, shape, moving, direction = part.split(" ")
        assert a == "a" and moving == "moving"
        out.append((color, shape, direction))
    return out


def test_shapes_video_shapes_determinism_and_speed():
    ds = ShapesVideo(n=64, seed=0)
    it = ds[7]
    T, S = 16, 32
    assert it["x"].shape == (3, T, S, S) and it["x"].dtype == torch.float32
    assert it["x"].min() >= -1 and it["x"].max() <= 1
    assert it["mask"].shape == (T, S, S) and it["mask"].dtype == torch.long
    assert it["depth"].shape == (T, S, S) and it["positions"].shape == (T, 2, 2)
    assert _same(it, ShapesVideo(n=64, seed=0)[7])
    assert not torch.equal(it["x"], ShapesVideo(n=64, seed=1)[7]["x"])
    for i in range(5):  # warm-up
        ds[i]
    t0 = time.perf_counter()
    for i in range(64):
        ds[i]
    per_frame_ms = (time.perf_counter() - t0) / (64 * T) * 1e3
    assert per_frame_ms < 5, f"{per_frame_ms:.2f} ms per frame"  # ~0.1 ms on a free core; margin for load


def test_shapes_caption_matches_rendered_colour_motion_and_depth():
    ds = ShapesVideo(n=40, seed=2)
    for i in range(len(ds)):
        it = ds[i]
        parsed = _parse(it["caption"])
        assert len(parsed) == ds.num_shapes
        for k, (color, shape, direction) in enumerate(parsed):
            assert color == ds.colors[int(it["color"][k])] and shape == ds.SHAPES[int(it["shape"][k])]
            assert direction == DIRECTIONS4[int(it["direction"][k])]
            vis = it["mask"] == k + 1  # (T, H, W)
            assert vis.sum() > 0
            rgb = it["x"].permute(1, 2, 3, 0)[vis]  # (N, 3)
            target = torch.tensor(ds.COLORS[color])
            assert (rgb.mean(0) - target).abs().max() < 0.35, (it["caption"], rgb.mean(0))
            assert torch.allclose(it["depth"][vis], it["shape_depth"][k].expand(int(vis.sum())))
            # The visible mask moves as the caption says.
            rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
            first, last = vis[0], vis[-1]
            if first.sum() > 20 and last.sum() > 20 and k == 0:  # nearest shape: never occluded
                d = torch.stack(
                    [
                        (rows * last).sum() / last.sum() - (rows * first).sum() / first.sum(),
                        (cols * last).sum() / last.sum() - (cols * first).sum() / first.sum(),
                    ]
                )
                step = {"right": (0, 1), "up": (-1, 0), "left": (0, -1), "down": (1, 0)}[direction]
                assert float(d @ torch.tensor(step, dtype=torch.float32)) > 1.0
        assert torch.all(it["depth"][it["mask"] == 0] == 1.0)
        assert torch.all(it["shape_depth"][1:] > it["shape_depth"][:-1])  # indexed near to far


def test_shapes_occlusion_by_depth():
    ds = ShapesVideo(n=300, seed=0)
    found = 0
    for i in range(len(ds)):
        it = ds[i]
        cover = [
            ds._coverage(int(it["shape"][k]), it["positions"][:, k], float(it["radius"][k])) >= 0.5
            for k in range(2)
        ]
        both = cover[0] & cover[1]
        if both.sum() > 0:
            found += 1
            assert torch.all(it["mask"][both] == 1)  # the nearer shape (index 0) is visible
            assert torch.all(it["depth"][both] == it["shape_depth"][0])
    assert found > 5


def test_shapes_stay_inside_canvas():
    ds = ShapesVideo(n=100, seed=5, frames=24)
    for i in range(len(ds)):
        it = ds[i]
        for k in range(ds.num_shapes):
            reach = float(it["radius"][k]) * (1.3 if int(it["shape"][k]) == 2 else 1.0)
            p = it["positions"][:, k]
            assert p.min() >= reach and p.max() <= 32 - reach


def test_frames_only_modes():
    f = ShapesVideo(n=10, frames_only=True, seed=0)[3]
    assert f["x"].shape == (3, 32, 32) and f["mask"].shape == (32, 32) and f["depth"].shape == (32, 32)
    assert "moving" not in f["caption"] and f["positions"].shape == (2, 2)
    video = ShapesVideo(n=10, seed=0)[3]
    t = int(f["frame_index"])
    assert torch.equal(f["x"], video["x"][:, t]) and torch.equal(f["mask"], video["mask"][t])
    d = MovingDigits(n=10, frames_only=True)[2]
    assert d["x"].shape == (1, 32, 32) and d["caption"].startswith("digit") and "moving" not in d["caption"]
    wrapped = VideoFrames(MovingDigits(n=10), seed=0)
    w = wrapped[4]
    assert w["x"].shape == (1, 32, 32) and w["positions"].shape == (1, 2) and "moving" not in w["caption"]
    assert _same(w, wrapped[4])
    batch = next(iter(DataLoader(ShapesVideo(n=8, frames_only=True), batch_size=4)))
    assert batch["x"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4


# -- readers ----------


def _write_video(path: Path, values: list[int], codec: str = "libx264", size=(24, 32)):
    """A clip whose frame i is a flat grey of value values[i] (h, w = size)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=8)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "0"}
        for v in values:
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), v, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _grey(x: torch.Tensor) -> list[float]:
    """Mean value per frame of a (3, T, H, W) clip, back in [0, 255]."""
    return ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).tolist()


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf")
    _write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.mp4", [10 * i for i in range(12)])
    _write_video(root / "ApplyEyeMakeup" / "v_short.mp4", [50, 60])  # too short for 4 frames at stride 2
    _write_video(
        root / "Basketball" / "v_Basketball_g01_c01.avi", [200 - 10 * i for i in range(10)], codec="mpeg4"
    )
    (root / "Basketball" / "v_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    return root


def test_video_folder_round_trip(ucf_root):
    ds = VideoFolderDataset(ucf_root, frames=4, stride=2, size=16, seed=0)
    assert ds.classes == ["ApplyEyeMakeup", "Basketball"] and len(ds) == 4
    item = ds[0]
    assert item["x"].shape == (3, 4, 16, 16) and item["x"].dtype == torch.float32
    assert item["x"].min() >= -1 and item["x"].max() <= 1
    assert int(item["y"]) == 0 and item["caption"] == "apply eye makeup"
    start = int(item["start"])
    assert 0 <= start <= 12 - 7
    assert np.allclose(_grey(item["x"]), [10 * (start + 2 * i) for i in range(4)], atol=3)
    assert torch.equal(item["x"], ds[0]["x"])  # deterministic start per (seed, index)
    starts = {
        int(VideoFolderDataset(ucf_root, frames=4, stride=2, size=16, seed=s)[0]["start"]) for s in range(12)
    }
    assert len(starts) > 1
    avi = [ds[i] for i in range(len(ds)) if ds[i]["path"].endswith(".avi")][0]
    assert int(avi["y"]) == 1 and avi["caption"] == "basketball"
    s = int(avi["start"])
    assert np.allclose(_grey(avi["x"]), [200 - 10 * (s + 2 * i) for i in range(4)], atol=6)  # mpeg4 is lossy


def test_corrupt_and_short_files_are_skipped_and_counted(ucf_root):
    ds = VideoFolderDataset(ucf_root, frames=4, stride=2, size=16)
    with pytest.warns(RuntimeWarning, match="skipping"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 2
    assert {Path(p).name for p in ds.skipped} == {"v_short.mp4", "v_corrupt.mp4"}
    assert all(it["x"].shape == (3, 4, 16, 16) for it in items)  # bad indices gave the next valid item
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: skipped files are remembered
        [ds[i] for i in range(len(ds))]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["x"].shape == (4, 3, 4, 16, 16)


def test_train_mode_start_depends_on_epoch_deterministically(ucf_root):
    ds = VideoFolderDataset(ucf_root, frames=2, stride=1, size=8, train=True, seed=0)
    starts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.append(int(ds[0]["start"]))
    again = VideoFolderDataset(ucf_root, frames=2, stride=1, size=8, train=True, seed=0)
    again.set_epoch(3)
    assert int(again[0]["start"]) == starts[3] and len(set(starts)) > 1


def test_split_file_selects_clips(ucf_root, tmp_path):
    lst = tmp_path / "trainlist01.txt"
    lst.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4 1\n")
    ds = VideoFolderDataset(ucf_root, frames=2, size=8, split_file=str(lst))
    assert len(ds) == 1


def test_missing_root_raises_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"nope.*data\.root"):
        VideoFolderDataset(missing)
    with pytest.raises(FileNotFoundError, match=r"nope.*data\.root"):
        FrameFolderDataset(missing)
    with pytest.raises(FileNotFoundError, match=r"nope.*data\.train\.csv_path"):
        CsvVideoDataset(missing, tmp_path)
    try:
        VideoFolderDataset(missing, config_key="data.root")
    except FileNotFoundError as e:
        assert "\n" not in str(e)


def test_frame_folder_round_trip(tmp_path):
    from PIL import Image

    clip = tmp_path / "sky" / "video_a" / "clip_1"
    clip.mkdir(parents=True)
    for i in range(12):  # frame_2 must come before frame_10: natural order
        Image.fromarray(np.full((20, 30, 3), 20 * i, np.uint8)).save(clip / f"frame_{i}.png")
    short = tmp_path / "sky" / "video_a" / "clip_2"
    short.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(short / f"{i:03d}.jpg")
    ds = FrameFolderDataset(tmp_path / "sky", frames=4, stride=3, size=16, caption="sky")
    assert len(ds) == 2
    it = ds[0]
    s = int(it["start"])
    assert it["x"].shape == (3, 4, 16, 16) and it["caption"] == "sky"
    assert np.allclose(_grey(it["x"]), [20 * (s + 3 * i) for i in range(4)], atol=1)
    with pytest.warns(RuntimeWarning, match="skipping"):
        it2 = ds[1]  # too short -> next valid clip (wraps to clip_1)
    assert ds.num_skipped == 1 and it2["path"].endswith("clip_1")


def test_csv_video_dataset(tmp_path):
    root = tmp_path / "videos"
    _write_video(root / "000001_000050" / "1001.mp4", [30 * i for i in range(8)])
    _write_video(root / "000001_000050" / "1002.mp4", [200] * 8)
    csv_path = tmp_path / "results_2M_train.csv"
    csv_path.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '1001,http://x,PT00H00M08S,000001_000050,"A cat, walking"\n'
        "1003,http://x,PT00H00M08S,000001_000050,missing file\n"
        "1002,http://x,PT00H00M08S,000001_000050,Grey sky\n"
    )
    ds = CsvVideoDataset(csv_path, root, frames=3, stride=2, size=8)
    assert len(ds) == 3
    a = ds[0]
    assert a["caption"] == "A cat, walking" and a["videoid"] == "1001" and a["x"].shape == (3, 3, 8, 8)
    s = int(a["start"])
    assert np.allclose(_grey(a["x"]), [30 * (s + 2 * i) for i in range(3)], atol=3)
    with pytest.warns(RuntimeWarning, match="skipping"):
        b = ds[1]
    assert b["caption"] == "Grey sky" and ds.num_skipped == 1


def test_class_caption():
    assert class_caption("ApplyEyeMakeup") == "apply eye makeup"
    assert class_caption("YoYo") == "yo yo" and class_caption("sky_timelapse") == "sky timelapse"


# -- datamodule and joint image-video batches -------------------------------------------------------------


def test_video_datamodule_seeded_shuffle_and_drop_last():
    def first_batches(seed):
        dm = VideoDataModule(
            train=MovingDigits(n=10), val=MovingDigits(n=5, split="test"), batch_size=4, seed=seed
        )
        dl = dm.train_dataloader()
        return [b["y"] for b in dl], dm

    a, dm = first_batches(0)
    b, _ = first_batches(0)
    c, _ = first_batches(1)
    assert len(a) == 2  # 10 items, batch 4, drop_last
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    val = list(dm.val_dataloader())
    assert [v["x"].shape[0] for v in val] == [4, 1]  # no drop_last, no shuffle for validation
    dl = dm.train_dataloader()
    e0 = [bt["y"] for bt in dl]
    e1 = [bt["y"] for bt in dl]  # outside a trainer the sampler goes on to the next pass: a new permutation
    assert all(torch.equal(x, y) for x, y in zip(a, e0))
    assert not all(torch.equal(x, y) for x, y in zip(a, e1))


def test_joint_image_video_batches():
    base = MovingDigits(n=12, frames=8, size=16, seed=0)
    dm = VideoDataModule(train=base, batch_size=3, extra_images=2, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (3, 1, 10, 16, 16)
    assert batch["frame_is_video"].shape == (3, 10)
    assert batch["frame_is_video"][:, :8].all() and not batch["frame_is_video"][:, 8:].any()
    assert batch["extra_y"].shape == (3, 2)
    joint = JointImageVideo(base, extra_images=2, seed=0)
    it = joint[4]
    assert torch.equal(it["x"][:, :8], base[4]["x"])
    for k in range(2):  # each extra frame is a frame of another video, with that video's label
        frame = it["x"][:, 8 + k]
        hits = [
            j
            for j in range(len(base))
            if j != 4 and any(torch.equal(frame, base[j]["x"][:, t]) for t in range(8))
        ]
        assert hits and int(it["extra_y"][k]) in {int(base[j]["y"]) for j in hits}
    shapes = JointImageVideo(ShapesVideo(n=6, frames=4), extra_images=3, seed=0)[0]  # no labels: random_frame
    assert shapes["x"].shape == (3, 7, 32, 32) and "extra_y" not in shapes


# -- configs ----------


def _instantiate(name: str, **overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    return instantiate(cfg)


@pytest.mark.parametrize("name", ["moving_digits", "shapes_video"])
def test_world_configs_instantiate(name):
    dm = _instantiate(name, **{"train.n": 8, "val.n": 4, "batch_size": 4})
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].ndim == 5 and batch["x"].shape[:3] == (4, 1 if name == "moving_digits" else 3, 16)
    assert len(batch["caption"]) == 4


def test_real_data_configs_instantiate(ucf_root, tmp_path):
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(Exception) as err:
        _instantiate("ucf101")
    assert isinstance(err.value, MissingMandatoryValue) or "root" in str(err.value)
    dm = _instantiate("ucf101", root=str(ucf_root), frames=2, stride=1, size=8, num_workers=0, batch_size=2)
    assert isinstance(dm.train_set, VideoFolderDataset) and dm.train_set.train and not dm.val_set.train
    batch = next(iter(dm.val_dataloader()))
    assert batch["x"].shape == (2, 3, 2, 8, 8)
    with pytest.raises(Exception, match="data.root"):
        _instantiate("sky_timelapse", root=str(tmp_path / "missing"))
    sky = tmp_path / "sky" / "v" / "c"
    sky.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(sky / f"{i}.jpg")
    dm = _instantiate("sky_timelapse", root=str(tmp_path / "sky"), frames=2, num_workers=0, batch_size=1)
    assert dm.train_set[0]["x"].shape == (3, 2, 64, 64)
    csv_path = tmp_path / "w.csv"
    csv_path.write_text("videoid,name,page_dir\n1,a,p\n")
    dm = _instantiate(
        "webvid", root=str(tmp_path), **{"train.csv_path": str(csv_path)}, num_workers=0, batch_size=1
    )
    assert isinstance(dm.train_set, CsvVideoDataset) and dm.train_set.rows[0][1] == "a"


# -- video I/O ----------


def test_save_image_and_video_grids(tmp_path):
    import av
    from PIL import Image

    from shared.engine.video_io import save_image_grid, save_video_grid

    videos = torch.stack([ShapesVideo(n=5, frames=6, size=15)[i]["x"] for i in range(5)])  # odd sides
    png = save_image_grid(videos[:, :, 0], tmp_path / "a" / "grid.png", nrow=3)
    with Image.open(png) as im:
        assert im.size == (3 * 15 + 4 * 2, 2 * 15 + 3 * 2)
    gif = save_video_grid(videos, tmp_path / "grid.gif", nrow=3, fps=4, scale=2)
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == (3 * 30 + 4 * 2, 2 * 30 + 3 * 2)
    mp4 = save_video_grid(videos, tmp_path / "grid.mp4", nrow=5, fps=4)
    with av.open(str(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape[:2] == (20, 88)  # 19 x 87 padded to even sides
    gray = save_video_grid(MovingDigits(n=2, frames=3)[0]["x"][None], tmp_path / "d.gif")
    assert gray.exists()
    with pytest.raises(ValueError, match="gif or .mp4"):
        save_video_grid(videos, tmp_path / "x.avi")


def test_configs_compose_with_hydra(ucf_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(CONF.parent)):
            cfg = compose(
                overrides=[
                    "+data=moving_digits",
                    "data.frames=8",
                    "data.size=16",
                    "data.train.n=8",
                    "data.batch_size=4",
                ]
            )
            dm = instantiate(cfg.data)
            assert dm.train_set[0]["x"].shape == (1, 8, 16, 16) and dm.val_set.split == "test"
            cfg = compose(
                overrides=["+data=ucf101", f"data.root={ucf_root}", "data.num_workers=0", "data.batch_size=2"]
            )
            dm = instantiate(cfg.data)
            assert dm.train_set.frames == 16 and dm.val_set.stride == 4 and len(dm.train_set) == 4
    finally:
        GlobalHydra.instance().clear()
