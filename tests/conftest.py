"""Test-wide settings: offline, quiet, deterministic, and one place to compose experiment configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHONHASHSEED", "0")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")


def compose(overrides=(), config_name="train"):
    """Compose the root config exactly as ``python -m shared.engine.train`` would."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return _compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def compose_cfg():
    return compose
