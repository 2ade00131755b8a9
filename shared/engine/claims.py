"""Helpers for multi-stage claim checks (``pipeline:`` experiments): train variants, gather per-seed
metrics, summarise the spread and write ``results.json`` next to the run and under ``papers/<id>/results``.

A pipeline reads its knobs from ``cfg.claim`` (seeds, variants, evaluation protocol) and calls
:func:`fit_variant` for each trained model, so every model is trained by exactly the code of
``python -m shared.engine.train``.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from shared.engine.results import write_results
from shared.engine.run import fit

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Stages this process took from an earlier run's folder instead of computing them (a resumed finished
# variant, a cached JSON): ``finish`` records them, so a results.json's wall time is not mistaken for the
# claim's full cost (RESULTS.md, "Claim-suite wall times"). Stages reused in worker processes are not seen.
_REUSED: list[str] = []


def variant_config(cfg: DictConfig, overrides: dict | None = None, seed: int | None = None) -> DictConfig:
    """A copy of ``cfg`` with dotted-key ``overrides`` applied (and ``seed``), without the pipeline key."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.pipeline = None
        if seed is not None:
            sub.seed = int(seed)
        for key, value in (overrides or {}).items():
            OmegaConf.update(sub, key, value, merge=False, force_add=True)
    return sub


def fit_variant(cfg: DictConfig, tag: str, overrides: dict | None = None, seed: int | None = None):
    """Train one variant into ``<run_dir>/<tag>``; returns the trained module (in eval mode).

    A claim re-run in the same folder (``hydra.run.dir=<old run>``) resumes each variant from its
    ``last.ckpt`` — a finished variant is not trained again.
    """
    sub = variant_config(cfg, overrides, seed)
    last = Path(cfg.run_dir) / tag / "checkpoints" / "last.ckpt"
    if last.exists() and not sub.get("ckpt_path"):
        with open_dict(sub):
            sub.ckpt_path = str(last)
        _REUSED.append(f"variant:{tag}")
    module, datamodule, trainer = fit(sub, run_dir=Path(cfg.run_dir) / tag)
    module.eval()
    return module


def note_reused(stage: str) -> None:
    """Record that this run took ``stage`` from an earlier run (a cached teacher, ...): see ``_REUSED``."""
    _REUSED.append(stage)


def cached(path: str | Path, compute):
    """``compute()`` once per claim folder: its JSON result is kept at ``path`` and reused on a re-run."""
    path = Path(path)
    if path.exists():
        _REUSED.append(f"cached:{path.name}")
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def summarise(per_seed: list[float]) -> dict:
    """mean, sample std and the per-seed values (NaN-free floats)."""
    vals = [float(v) for v in per_seed]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "per_seed": vals}


def finish(cfg: DictConfig, metrics: dict, *, paper: str, claim: str, t0: float, extra: dict | None = None,
           copy_to_paper: bool = True) -> dict:
    """Write ``results.json`` in the run folder and copy it to ``papers/<paper>/results/<claim>.json``."""
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    seeds = list(cfg.claim.seeds) if "claim" in cfg and "seeds" in cfg.claim else [int(cfg.seed)]
    path = Path(cfg.run_dir) / "results.json"
    extra = dict(extra or {})
    if _REUSED:
        extra.setdefault("reused_stages", sorted(set(_REUSED)))
        _REUSED.clear()
    record = write_results(path, metrics, paper=paper, claim=claim, seeds=seeds, config=cfg_dict,
                           wall_time_s=round(time.time() - t0, 1), extra=extra)
    if copy_to_paper and cfg.claim.get("publish", True):
        dest = PROJECT_ROOT / "papers" / paper / "results" / f"{claim}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        for f in Path(cfg.run_dir).glob("*.png"):
            shutil.copyfile(f, dest.parent / f"{claim}_{f.name}")
    return record


def seed_job_config(cfg_dict: dict) -> DictConfig:
    """The prologue of a per-seed job (possibly in a worker process): one intra-op thread, the config rebuilt from
    the plain container the job was handed."""
    import torch

    torch.set_num_threads(1)
    return OmegaConf.create(cfg_dict)


def world_items(cfg: DictConfig, n: int, seed: int, split: str = "test", keys=("x",), world=None, **kwargs):
    """The first ``n`` items of the claim's world (``cfg.data.train`` with ``seed``/``split``/``n`` replaced, or
    the class ``world`` built with the same arguments plus ``kwargs``), stacked per key; one tensor if one key."""
    import torch
    from hydra.utils import get_class

    spec = OmegaConf.to_container(cfg.data.train, resolve=True)
    cls = world or get_class(spec.pop("_target_"))
    spec.pop("_target_", None)
    spec.update(n=int(n), seed=int(seed), split=split, **kwargs)
    ds = cls(**spec)
    items = [ds[i] for i in range(int(n))]
    out = tuple(torch.stack([it[k] for it in items]) for k in keys)
    return out[0] if len(keys) == 1 else out


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def module_config(cfg: DictConfig, override: DictConfig | dict, **fields) -> DictConfig:
    """The experiment's ``module`` config with a stage's ``override`` merged on top and ``fields`` set
    (``None`` values are skipped) — how distillation pipelines describe their student modules."""
    m = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg.module)), override)
    for key, value in fields.items():
        if value is not None:
            m[key] = value
    return m


def stage_overrides(nested: dict, prefix: str = "") -> dict:
    """A claim stage's nested overrides (``claim.stages.<stage>``) as dotted keys for :func:`fit_variant`; lists and
    a ``conditions`` mapping stay leaves (a stage's conditions replace the module's whole declaration)."""
    out = {}
    for k, v in nested.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and k != "conditions":
            out.update(stage_overrides(v, key))
        else:
            out[key] = v
    return out


def train_stage(cfg: DictConfig, stage: str, tag: str, seed: int, extra: dict | None = None):
    """Train stage ``cfg.claim.stages[stage]`` (plus dotted ``extra`` overrides) into ``<run_dir>/<tag>`` with
    :func:`fit_variant` and export what it trained (``module.export_weights``) to ``<tag>/export.safetensors``, once;
    returns ``(export path, module)``. A re-run in the same folder resumes the variant and keeps its export."""
    path = Path(cfg.run_dir) / tag / "export.safetensors"
    over = stage_overrides(OmegaConf.to_container(cfg.claim.stages[stage], resolve=True))
    over.update(extra or {})
    module = fit_variant(cfg, tag, over, seed)
    if not path.exists():
        module.export_weights(path)
    return path, module
