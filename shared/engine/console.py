"""What a run prints: a quiet console, the expected wall time of a claim before it starts, and a results
summary with the run folder when it ends.

* :func:`quiet` silences what does not concern the run: Lightning's "GPU available / TPU available" lines and
  its "Tip: try installing ..." adverts, and warnings that are known noise on this project's runs (a
  deprecation inside Lightning's own pytree helper, "modules in eval mode" — the frozen teachers and EMA copies
  are in eval mode on purpose — and the data-loader worker hint for in-memory synthetic data). Real warnings
  still show. ``VDP_VERBOSE=1`` keeps everything.
* :func:`harness_callbacks` adds the step progress bar (:class:`shared.engine.callbacks.StepProgressBar`) to
  every trainer that shows one.
* :func:`announce` (before a claim pipeline runs): the wall time of the committed run of the same experiment
  (``papers/*/results/*.json`` whose config has this run's ``name``), on what it ran, and the quick-mode hint.
* :func:`claim_summary` (at the end of every claim, called by ``shared.engine.claims.finish``): the report rows
  (label, ours, paper's number), the expected direction and whether it held, the wall time, the run folder and
  where the results were published.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from shared.engine.expectations import lookup as lookup_metric

__all__ = ["quiet", "start_run", "harness_callbacks", "announce", "expected_wall_time", "claim_summary",
           "lookup_metric",
           "format_value"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

NOISE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*module\(s\) in eval mode at the start of training.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`training_step` returned `None`.*",
)
_QUIET = {"done": False}


class _DropNoise(logging.Filter):
    """Drops Lightning's device banner and its tips; keeps everything else it logs."""

    PREFIXES = ("GPU available", "TPU available", "HPU available", "IPU available", "💡 Tip",
                "Running in `fast_dev_run` mode", "`Trainer.fit` stopped: `max_steps=")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.PREFIXES)


def quiet() -> None:
    """Install the filters (idempotent). ``VDP_VERBOSE=1`` disables them."""
    if _QUIET["done"] or os.environ.get("VDP_VERBOSE"):
        return
    _QUIET["done"] = True
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropNoise())


def harness_callbacks(cfg: DictConfig) -> list:
    """Callbacks every trainer gets from the harness (not from ``cfg.callbacks``): the step progress bar
    when the trainer shows a progress bar."""
    from shared.engine.callbacks import StepProgressBar

    quiet()
    trainer = cfg.get("trainer") or {}
    return [StepProgressBar()] if trainer.get("enable_progress_bar", True) else []


# ------------------------------------------------------------------------------------------------ claims
def _committed_results(root: Path = PROJECT_ROOT):
    for f in sorted((root / "papers").glob("*/results/*.json")):
        try:
            res = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(res, dict) and isinstance(res.get("config"), dict):
            yield f, res


def expected_wall_time(name: str, root: Path = PROJECT_ROOT) -> dict | None:
    """``{"wall_time_s", "file", "date", "compute", "reused"}`` of the committed run of the experiment called
    ``name`` (its config's ``name``), or ``None`` when none is committed."""
    for f, res in _committed_results(root):
        if res["config"].get("name") == name and isinstance(res.get("wall_time_s"), (int, float)):
            return {"wall_time_s": float(res["wall_time_s"]), "file": str(f.relative_to(root)),
                    "date": str(res.get("date") or "?")[:10], "compute": res.get("compute"),
                    "reused": bool(res.get("reused_stages"))}
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def announce(cfg: DictConfig, stream=None) -> str:
    """Print (and return) the line shown before a claim pipeline starts."""
    stream = stream or sys.stdout
    name = str(cfg.get("name"))
    quick = bool(cfg.get("quick"))
    ref = expected_wall_time(name)
    if ref is None:
        est = "no committed run of this experiment to estimate its wall time from"
    else:
        c = ref["compute"] or {}
        how = (f"{c.get('torch_threads')} thread(s) on {c.get('cpus_usable')} of {c.get('cpus')} cores"
               if c else "machine not recorded")
        est = (f"a full run took {_minutes(ref['wall_time_s'])} ({ref['date']}, {how}; {ref['file']}"
               + (", some stages reused from an earlier run, so the full cost is higher" if ref["reused"] else "")
               + ")")
    if quick:
        line = f"[claim] {name}: quick mode (tiny budgets, numbers meaningless); {est}"
    else:
        line = f"[claim] {name}: {est}. A check in seconds first: add quick=true"
    print(line, file=stream, flush=True)
    return line


def format_value(v) -> str:
    """``mean ± std (n=k)`` for a per-seed summary, 3 significant digits for a number."""
    if isinstance(v, dict) and "mean" in v:
        n = len(v.get("per_seed", [])) or 1
        return f"{format_value(v['mean'])} ± {format_value(v.get('std', 0.0))} (n={n})" if n > 1 \
            else format_value(v["mean"])
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def claim_summary(record: dict, cfg: DictConfig, published: Path | None = None, stream=None) -> str:
    """Print (and return) the end-of-claim summary: report rows, expected direction, wall time, run folder."""
    stream = stream or sys.stdout
    cfg_c = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    metrics = record.get("metrics") or {}
    lines = [f"== {record.get('paper')}/{record.get('claim')}: results "
             f"({'quick mode, not evidence' if cfg_c.get('quick') else 'seeds ' + str(record.get('seeds'))}) =="]
    rows = cfg_c.get("report") or []
    if rows:
        width = max(len(str(r.get("label", r.get("metric")))) for r in rows)
        skipped = 0
        for r in rows:
            try:
                ours = format_value(lookup_metric(metrics, r["metric"]))
            except KeyError:
                if cfg_c.get("quick"):   # quick budgets measure other step counts / variants
                    skipped += 1
                    continue
                ours = "missing"
            paper = r.get("paper", "")
            lines.append(f"  {str(r.get('label', r['metric'])):<{width}}  {ours:>22}"
                         + (f"   (paper: {paper})" if paper not in ("", "—", None) else ""))
        if skipped:
            lines.append(f"  ({skipped} report rows not measured at quick budgets)")
    else:
        for key, value in _leaves(metrics):
            lines.append(f"  {key}: {format_value(value)}")
    wall = record.get("wall_time_s")
    if wall is not None:
        lines.append(f"  wall time: {_minutes(float(wall))}")
    lines.append(f"  run folder: {Path(str(cfg_c.get('run_dir'))).resolve()}")
    lines.append(f"  results:    {Path(str(cfg_c.get('run_dir'))).resolve() / 'results.json'}")
    if published is not None:
        lines.append(f"  published:  {published} (make report updates the README tables)")
    text = "\n".join(lines)
    print(text, file=stream, flush=True)
    return text


def _leaves(metrics, prefix="", limit=40):
    out = []
    if isinstance(metrics, dict) and not ("mean" in metrics and "per_seed" in metrics):
        for k, v in metrics.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k), limit)
    else:
        out.append((prefix, metrics))
    return out[:limit]


def start_run(cfg: DictConfig) -> None:
    """What every ``shared.engine.train`` run does first: a quiet console, progress bars for sampling, and for a
    claim pipeline the line with its expected wall time."""
    from shared.engine import progress

    quiet()
    progress.enable()
    if cfg.get("pipeline"):
        announce(cfg)
