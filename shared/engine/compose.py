"""Compose the project's Hydra configs from Python exactly as the entry points do (demos, tests, tools).

``quick=true`` among the overrides expands as on the command line (:mod:`shared.engine.quick`).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_raw(overrides: Iterable[str] = (), config_name: str = "train") -> DictConfig:
    """Hydra's compose of ``config_name`` with ``overrides``, nothing expanded."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _compose(config_name=config_name, overrides=list(overrides))


def compose(overrides: Iterable[str] = (), config_name: str = "train") -> DictConfig:
    """The root config ``config_name`` (``train``, ``sample``, ``evaluate``) with Hydra-style ``overrides``."""
    from shared.engine.quick import expand

    return compose_raw(expand(list(overrides), config_name), config_name)
