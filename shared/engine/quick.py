"""Quick mode: ``quick=true`` makes any experiment — a plain training run or a claim pipeline — finish in seconds.

One switch, one mechanism (what the tests use too). ``quick=true`` expands, before Hydra composes the run, into

1. the experiment's own ``quick_overrides:`` list (fewer seeds and samples, tiny networks for paper-scale
   configs, a synthetic stand-in for data the run does not need: whatever makes *that* experiment small), and
2. the root config's ``quick_base`` for its kind of run: ``quick_base.train`` for plain training (a few steps,
   a checkpoint, short sample grids), ``quick_base.pipeline`` for claim pipelines (every stage one step:
   ``trainer.fast_dev_run``), ``quick_base.sample`` / ``quick_base.evaluate`` for those entry points. Entries
   naming a key the composed config does not have (no sample-grid callback, say) are skipped.

Overrides the user typed win: a quick entry for a key the user also set is dropped. ``+quick=true`` and
``++quick=true`` mean the same as ``quick=true``. The numbers of a quick run are meaningless (the summary says
so); it checks that the command, the data paths and the code run end to end.
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["is_quick_flag", "expand", "expand_argv", "override_key"]

_TRUE = ("true", "1", "yes", "on")
_SENTINEL = object()


def override_key(override: str) -> str:
    """The key an override sets: ``+a.b=1`` -> ``a.b``, ``model@x=y`` -> ``model@x``, ``~a`` -> ``a``."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def is_quick_flag(override: str) -> bool:
    return "=" in override and override_key(override) == "quick"


def _first_values(overrides: Sequence[str]) -> list[str]:
    """Overrides of a sweep (``a=1,2``, ``range(...)``, ``choice(...)``) reduced to their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for o in overrides:
        if override_key(o).startswith(("hydra.", "hydra/")):
            continue
        parsed = parser.parse_overrides([o])[0]
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()))
            out.append(f"{parsed.get_key_element()}={first}")
        else:
            out.append(o)
    return out


def _has_key(cfg: DictConfig, key: str) -> bool:
    if "@" in key or "/" in key:   # a config-group choice: always applicable
        return True
    return OmegaConf.select(cfg, key, default=_SENTINEL, throw_on_missing=False) is not _SENTINEL


def _kind(cfg: DictConfig, config_name: str) -> str:
    if config_name != "train":
        return config_name
    return "pipeline" if cfg.get("pipeline") else "train"


def expand(overrides: Sequence[str], config_name: str = "train") -> list[str]:
    """The overrides with a ``quick=true`` flag replaced by what it means (see the module docstring)."""
    overrides = list(overrides)
    flags = [o for o in overrides if is_quick_flag(o)]
    if not flags:
        return overrides
    rest = [o for o in overrides if not is_quick_flag(o)]
    if flags[-1].split("=", 1)[1].strip().lower() not in _TRUE:
        return [*rest, "quick=false"]
    from shared.engine.compose import compose_raw

    typed = {override_key(o) for o in rest}
    first = _first_values(rest)
    cfg = compose_raw(first, config_name)
    own = [o for o in (cfg.get("quick_overrides") or []) if override_key(o) not in typed]
    shrunk = compose_raw([*own, *first], config_name) if own else cfg   # what the generic entries apply to
    base = shrunk.get("quick_base") or {}
    generic = [g for g in (base.get(_kind(shrunk, config_name)) or [])   # "+key=" entries add, others must exist
               if override_key(g) not in typed and (g.startswith("+") or _has_key(shrunk, override_key(g)))]
    return [*generic, *own, *rest, "quick=true"]


def expand_argv(argv: Sequence[str], config_name: str = "train") -> list[str]:
    """``sys.argv[1:]`` of an entry point with ``quick=true`` expanded (flags such as ``-m`` stay in place)."""
    argv = list(argv)
    if not any(is_quick_flag(a) for a in argv if not a.startswith("-")):
        return argv
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    if any(f in ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd") for f in flags):
        raise SystemExit("error: quick=true cannot be combined with --config-name/--config-path/--config-dir")
    return [*flags, *expand(overrides, config_name)]
