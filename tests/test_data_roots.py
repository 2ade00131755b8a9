"""ImageNet's ``data.root`` is the split folder (issue #19): the top README said ``/data/imagenet``, the DiT README
``/data/imagenet/train``; the first silently made two classes, ``train`` and ``val``. Now such a root is refused in
one line, a DiT config requires exactly the model's classes, and the docs print the split folder."""
from __future__ import annotations

import re

import pytest
from conftest import ROOT, compose
from PIL import Image

from shared.data.images import ImageFolderDataset


def _imagenet(root, classes=("n01", "n02"), per=2):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per):
                Image.new("RGB", (12, 10), (i * 40, 0, 0)).save(root / split / c / f"{c}_{i}.JPEG")
    return root


def test_a_dataset_root_holding_splits_is_refused_and_the_split_folder_works(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    with pytest.raises(FileNotFoundError, match=r"holds the split folders \['train', 'val'\], not class folders; "
                                                r"point data.root at one split"):
        ImageFolderDataset(root, size=8)
    ds = ImageFolderDataset(root / "train", size=8)
    assert ds.classes == ["n01", "n02"] and len(ds) == 4 and int(ds[3]["y"]) == 1
    with pytest.raises(ValueError, match="has 2 class folders, the model expects 1000 classes"):
        ImageFolderDataset(root / "train", size=8, num_classes=1000)


def test_the_dit_config_checks_the_class_count_and_the_docs_print_the_split_folder(tmp_path):
    from hydra.utils import instantiate

    root = _imagenet(tmp_path / "imagenet")
    cfg = compose(["experiment=dit/imagenet256_table4", f"data.root={root / 'train'}", "data.num_workers=0"])
    assert cfg.data.train.num_classes == cfg.model.num_classes == 1000
    with pytest.raises(Exception, match="the model expects 1000 classes"):   # (Hydra wraps it)
        instantiate(cfg.data.train)
    cfg = compose(["experiment=dit/imagenet256_table4", f"data.root={root}", "data.num_workers=0"])
    with pytest.raises(Exception, match="holds the split folders"):
        instantiate(cfg.data.train)
    for doc in ("README.md", "papers/dit/README.md", "docs/DATA_AND_WEIGHTS.md"):
        roots = re.findall(r"data\.root=(\S*imagenet\S*)", (ROOT / doc).read_text())
        assert roots and all(r.rstrip("`:,.").endswith("/train") for r in roots), (doc, roots)


def test_the_cli_says_it_in_one_line(tmp_path):
    import subprocess
    import sys

    root = _imagenet(tmp_path / "imagenet")
    r = subprocess.run([sys.executable, "-m", "shared.engine.train", "experiment=dit/imagenet256_table4",
                        f"data.root={root}", "trainer=cpu", "data.num_workers=0", f"hydra.run.dir={tmp_path}/run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"data.root={root} holds the split folders" in last
