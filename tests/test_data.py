"""Tests of shared/data: toy distributions, digits, CIFAR-10 / image-folder readers, datamodules
and the conf/data configs (composed with Hydra and instantiated)."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shared.data.datamodule import EpochSeededSampler, ImageDataModule, ToyDataModule
from shared.data.digits import NUM_DIGITS, DigitsDataset, load_digit_tensors, real_splits, split_indices
from shared.data.images import Cifar10Dataset, ImageFolderDataset, load_cifar_batch
from shared.data.toys import TOY_NAMES, ToyDataset, sample_toy

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- toys
@pytest.mark.parametrize("name", TOY_NAMES)
def test_toys_deterministic_unit_scale(name):
    x = sample_toy(name, 4000, seed=3)
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 4000, seed=3))
    assert not torch.equal(x, sample_toy(name, 4000, seed=4))
    spread = x.std(dim=0)
    assert (spread > 0.15).all() and (spread < 1.5).all() and x.abs().max() < 6


def test_toys_do_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sample_toy("two_moons", 100, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_toy_shapes_are_right():
    centres = math.sqrt(2) * torch.tensor(
        [[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)]
    )
    x = sample_toy("eight_gaussians", 2000, 0)
    nearest = torch.cdist(x, centres).min(dim=1)
    assert nearest.values.max() < 0.6 and len(nearest.indices.unique()) == 8
    # checkerboard: only the squares with an even index sum are filled
    c = sample_toy("checkerboard", 2000, 0) / (math.sqrt(3) / 2)
    assert ((torch.floor(c[:, 0]) + torch.floor(c[:, 1])) % 2 == 0).all()
    left, right = sample_toy("mixture_left", 2000, 0), sample_toy("mixture_right", 2000, 0)
    assert left[:, 0].mean() < -1 and right[:, 0].mean() > 1
    assert (left[:, 1] > 0).float().mean().sub(0.5).abs() < 0.05  # two equal modes, top and bottom


def test_toy_errors_and_dataset():
    with pytest.raises(ValueError, match="unknown toy"):
        sample_toy("three_moons", 10, 0)
    ds = ToyDataset("mixture_right", 50, seed=0, source="mixture_left")
    item = ds[7]
    assert set(item) == {"x", "source"} and item["x"].shape == (2,)
    assert item["x"][0] > 0 > item["source"][0]
    assert set(ToyDataset("gaussian", 5)[0]) == {"x"}


# ---------------------------------------------------------------- digits
def test_digit_splits_partition_and_are_fixed():
    parts = {s: split_indices(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1258, 270, 269]
    joined = torch.cat(list(parts.values()))
    assert torch.equal(joined.sort().values, torch.arange(NUM_DIGITS))
    a, b = split_indices("real_a"), split_indices("real_b")
    assert len(set(a.tolist()) & set(b.tolist())) == 0
    assert sorted(a.tolist() + b.tolist()) == sorted(parts["val"].tolist() + parts["test"].tolist())
    assert torch.equal(split_indices("train"), split_indices("train", seed=0))
    assert not torch.equal(split_indices("train", seed=1), parts["train"])
    with pytest.raises(ValueError, match="unknown digits split"):
        split_indices("training")


def test_digits_pixels_labels_and_upscaling():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = DigitsDataset("test", size=8)
    i = int(ds.indices[0])
    item = ds[0]
    assert item["x"].shape == (1, 8, 8) and item["x"].dtype == torch.float32 and item["y"].dtype == torch.long
    assert torch.allclose(item["x"][0], torch.tensor(raw.images[i], dtype=torch.float32) / 8 - 1)
    assert int(item["y"]) == raw.target[i]
    assert ds.images.min() == -1 and ds.images.max() == 1
    big = DigitsDataset("test", size=16)
    assert big[0]["x"].shape == (1, 16, 16)
    expected = F.interpolate(ds.images[:5], size=16, mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(big.images[:5], expected)
    x32, y = load_digit_tensors(32)
    assert x32.shape == (NUM_DIGITS, 1, 32, 32) and y.shape == (NUM_DIGITS,)


def test_digits_class_filter_and_real_splits():
    threes = DigitsDataset("train", classes=[3])
    assert (threes.labels == 3).all()
    all_train = DigitsDataset("train")
    assert len(threes) == int((all_train.labels == 3).sum()) > 100
    a, b = real_splits(size=16)
    assert a.shape[1:] == b.shape[1:] == (1, 16, 16) and abs(len(a) - len(b)) <= 1
    assert not torch.equal(a[: len(b)].mean(0), b[: len(a)].mean(0))
    with pytest.raises(ValueError, match="no images"):
        DigitsDataset("val", classes=[11])


# ---------------------------------------------------------------- CIFAR-10
def _write_cifar(folder: Path, n: int = 4) -> dict[str, np.ndarray]:
    """Tiny files in the CIFAR-10 python format (protocol-2 pickles with bytes keys)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * n,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, np.array(labels))
    return written


def test_cifar10_reads_the_python_format(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    train = Cifar10Dataset(tmp_path, "train")
    test = Cifar10Dataset(tmp_path / "cifar-10-batches-py", "test")  # the batch folder itself works too
    assert len(train) == 20 and len(test) == 4
    data, labels = written["data_batch_2"]
    item = train[4]  # first image of the second batch
    assert item["x"].shape == (3, 32, 32) and item["x"].dtype == torch.float32 and int(item["y"]) == labels[0]
    # layout: 1024 R values, then G, then B, each a row-major 32x32 plane
    for c, r, col in [(0, 0, 0), (1, 1, 2), (2, 31, 5)]:
        assert item["x"][c, r, col] == pytest.approx(data[0, c * 1024 + r * 32 + col] / 127.5 - 1)
    assert train.data.dtype == torch.uint8
    test_labels = written["test_batch"][1]
    only = Cifar10Dataset(tmp_path, "test", classes=[int(test_labels[0])])
    assert (
        len(only) == int((test_labels == test_labels[0]).sum()) and (only.labels == int(test_labels[0])).all()
    )


def test_cifar10_missing_root_and_unsafe_pickle(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*data\.root"):
        Cifar10Dataset(tmp_path / "nowhere", "train")

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        load_cifar_batch(evil)


# ---------------------------------------------------------------- image folder
def _png(path: Path, size: tuple[int, int], colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_with_classes(tmp_path):
    _png(tmp_path / "dog" / "a.png", (30, 20), (0, 0, 255))
    _png(tmp_path / "cat" / "a.png", (20, 30), (255, 0, 0))
    _png(tmp_path / "cat" / "sub" / "b.PNG", (16, 16), (0, 255, 0))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, size=8)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    items = [ds[i] for i in range(3)]
    assert all(it["x"].shape == (3, 8, 8) for it in items)
    assert [int(it["y"]) for it in items] == [0, 0, 1]
    red, blue = items[0]["x"], items[2]["x"]
    assert torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(red[1:], -torch.ones(2, 8, 8))
    assert torch.allclose(blue[2], torch.ones(8, 8))
    grey = ImageFolderDataset(tmp_path, size=4, channels=1, extensions=["png"])
    assert grey[0]["x"].shape == (1, 4, 4) and len(grey) == 3


def test_image_folder_flat_and_missing(tmp_path):
    _png(tmp_path / "a.jpg", (12, 12), (128, 128, 128))
    ds = ImageFolderDataset(tmp_path, size=6)
    assert len(ds) == 1 and set(ds[0]) == {"x"} and ds[0]["x"].abs().max() < 0.02
    with pytest.raises(FileNotFoundError, match=r"missing.*data\.root"):
        ImageFolderDataset(tmp_path / "missing", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", size=8)


# ---------------------------------------------------------------- datamodules
def _order(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["y"]]


def test_image_datamodule_batches_and_seeded_order():
    train = DigitsDataset("train")
    dm = ImageDataModule(train, val=DigitsDataset("val"), batch_size=64, seed=5)
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["x"].shape == (64, 1, 8, 8) and batch["y"].dtype == torch.long
    assert len(loader) == len(train) // 64  # drop_last for training
    fresh = ImageDataModule(train, batch_size=64, seed=5).train_dataloader()
    pass0, pass1 = _order(fresh), _order(fresh)
    assert pass0 != pass1 and len(pass0) == len(pass1)  # a plain loop reshuffles each pass
    assert _order(ImageDataModule(train, batch_size=64, seed=5).train_dataloader()) == pass0
    assert _order(ImageDataModule(train, batch_size=64, seed=6).train_dataloader()) != pass0
    val = dm.val_dataloader()
    assert sum(len(b["x"]) for b in val) == 270  # no drop_last for evaluation
    assert dm.test_dataloader() == []


class _FakeTrainer:
    def __init__(self, global_step, rank=0, world=1):
        self.global_step, self.accumulate_grad_batches = global_step, 1
        self.global_rank, self.world_size = rank, world


def test_training_order_resumes_mid_pass_and_splits_across_ranks():
    train = DigitsDataset("val")  # 270 items -> 8 batches of 32 per pass
    dm = ImageDataModule(train, batch_size=32, seed=3)
    sampler = dm.train_dataloader().batch_sampler
    uninterrupted = list(sampler) + list(sampler)  # two passes
    per_pass = len(train) // 32
    for step in (0, 5, per_pass, per_pass + 3):
        dm.trainer = _FakeTrainer(step)  # a run resumed at this global step
        assert (
            list(dm.train_dataloader().batch_sampler)
            == uninterrupted[step : (step // per_pass + 1) * per_pass]
        )
    dm.trainer = _FakeTrainer(0, rank=0, world=2)
    rank0 = list(dm.train_dataloader().batch_sampler)
    dm.trainer = _FakeTrainer(0, rank=1, world=2)
    rank1 = list(dm.train_dataloader().batch_sampler)
    assert len(rank0) == len(rank1) == len(train) // 64 and all(len(b) == 32 for b in rank0 + rank1)
    assert not set(sum(rank0, [])) & set(sum(rank1, []))


def test_datamodule_builds_target_configs_and_checks_size():
    cfg = {"_target_": "shared.data.digits.DigitsDataset", "split": "val", "size": 16}
    dm = ImageDataModule(train=cfg, batch_size=10)
    assert isinstance(dm.train_set, DigitsDataset) and dm.train_set.size == 16
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ImageDataModule(train=DigitsDataset("val"), batch_size=1000)
    s = EpochSeededSampler(10, seed=1)
    first, second = list(s), list(s)
    assert sorted(first) == list(range(10)) and first != second
    s.set_epoch(1)
    assert list(s) == second


def test_toy_datamodule():
    dm = ToyDataModule("two_moons", n_train=1000, n_val=200, batch_size=100, source="gaussian", seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == batch["source"].shape == (100, 2)
    assert not torch.equal(dm.train_set.x[:200], dm.val_set.x)


def test_lightning_training_sees_the_seeded_batches():
    import pytorch_lightning as pl

    seen = []

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def training_step(self, batch, _):
            seen.append(batch["x"].clone())
            return (batch["x"] * self.w).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = ToyDataModule("gaussian", n_train=64, n_val=0, batch_size=32, seed=0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Probe(), datamodule=dm)
    plain = ToyDataModule("gaussian", n_train=64, n_val=0, batch_size=32, seed=0)
    sampler = plain.train_dataloader().batch_sampler
    expected = [plain.train_set.x[idx] for idx in list(sampler) + list(sampler)]
    assert len(seen) == 4 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert not torch.equal(seen[0], seen[2])  # the second epoch is reshuffled


# ---------------------------------------------------------------- conf/data with Hydra
@pytest.fixture
def compose_data():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "conf")):
        yield lambda *overrides: compose(overrides=list(overrides))
    GlobalHydra.instance().clear()


def test_configs_compose_and_instantiate(compose_data, tmp_path):
    from hydra.utils import instantiate

    dm = instantiate(compose_data("+data=digits", "data.size=8", "data.batch_size=32").data)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (32, 1, 8, 8) and dm.val_set.split == "val" and dm.train_set.size == 8

    dm = instantiate(compose_data("+data=toy2d", "data.name=checkerboard", "data.n_train=512").data)
    assert next(iter(dm.train_dataloader()))["x"].shape == (256, 2)

    _write_cifar(tmp_path / "cifar" / "cifar-10-batches-py", n=8)
    dm = instantiate(compose_data("+data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.batch_size=16",
                                  "data.num_workers=0").data)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 3, 32, 32) and len(dm.val_set) == 8

    for i in range(4):
        _png(tmp_path / "folder" / f"{i}.png", (10, 10), (i * 60, 0, 0))
    dm = instantiate(compose_data("+data=image_folder", f"data.root={tmp_path / 'folder'}", "data.size=8",
                                  "data.batch_size=2", "data.num_workers=0").data)  # fmt: skip
    assert next(iter(dm.train_dataloader()))["x"].shape == (2, 3, 8, 8)


def test_cifar_config_names_the_key_when_root_is_missing(compose_data, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_data("+data=cifar10", f"data.root={tmp_path / 'absent'}")
    with pytest.raises((FileNotFoundError, InstantiationException), match=r"absent.*data\.root"):
        instantiate(cfg.data)
