"""``results.json``: the evidence a claim check leaves behind.

Each file records the metrics, seeds, NFE, wall time, the git revision (with a dirty flag), package
versions, the command line and the resolved config, so any number in a README can be traced to a run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "numpy", "scikit-learn")


# Published evidence (papers/<id>/results/...) is what runs write, not what they run: a worktree that publishes
# several claims one after another is not "dirty" for the later ones. Any other changed tracked file is, by name.
EVIDENCE = re.compile(r"papers/[^/]+/results/")


def git_revision(cwd: str | os.PathLike | None = None) -> dict:
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        # a copy of the tree without .git (a remote GPU machine, say): the revision its sender names, marked so
        sent = os.environ.get("VDP_GIT_REVISION")
        return {"revision": sent or "unknown", "dirty": True, **({"source": "VDP_GIT_REVISION"} if sent else {})}
    changed = [p for p in (line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if line.strip())
               if not EVIDENCE.match(p)]
    return {"revision": rev, "dirty": bool(changed), **({"dirty_paths": changed[:10]} if changed else {})}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def command_line() -> str:
    """The command that produced this run, written the way a user would type it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        mod = Path(argv[0]).resolve()
        try:
            rel = mod.relative_to(Path(__file__).resolve().parents[2]).with_suffix("")
            argv[0] = "python -m " + ".".join(rel.parts)
        except ValueError:
            pass
    return " ".join(argv)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), or ``unknown``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_time_s() -> float:
    """User + system CPU seconds of this process and its finished children: against the wall time it shows how much
    of a core the run actually had (a loaded machine stretches wall time, not CPU time)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 1)


def compute_resources() -> dict:
    """What the run could use and how busy the machine was: a wall time read without these overstates
    or understates the claim's cost (a run pinned to one core, or sharing the machine with other jobs).
    ``cpu_model`` names the processor and ``cpu_time_s`` the CPU seconds the run used, so a wall time can be
    compared across machines."""
    out: dict = {"cpus": os.cpu_count(), "cpu_model": cpu_model()}
    try:
        out["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass
    try:
        import torch
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        from shared.engine.isa import isa_state
        out.update(isa_state())   # the instruction set the numbers were computed with (AVX2 pinned: shared.engine.isa)
    except ImportError:  # pragma: no cover
        pass
    try:
        out["loadavg_15m_at_end"] = round(os.getloadavg()[2], 2)
    except OSError:  # pragma: no cover
        pass
    try:
        out["cpu_time_s"] = cpu_time_s()
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        pass
    return out


_RUN_START_GIT: dict | None = None


def remember_git_state() -> dict:
    """Record the tree's revision and dirty flag as a run starts: the code a run executes is the code of its start,
    so :func:`provenance` reports that state (with ``changed_during_run`` when the tree's state at the end differs -
    files edited or committed while a long claim ran), not whatever the tree holds when the results are written."""
    global _RUN_START_GIT
    _RUN_START_GIT = git_revision()
    return _RUN_START_GIT


def run_git_state() -> dict:
    now = git_revision()
    if _RUN_START_GIT is None:
        return now
    return {**_RUN_START_GIT, **({"changed_during_run": True} if now != _RUN_START_GIT else {})}


def provenance() -> dict:
    return {"git": run_git_state(), "packages": package_versions(), "command": command_line(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cpu", "compute": compute_resources()}


def _jsonable(x: Any):
    try:
        import torch
        if isinstance(x, torch.Tensor):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    return x


def write_results(path: str | os.PathLike, metrics: dict, *, claim: str | None = None, paper: str | None = None,
                  seeds: list | None = None, config: dict | None = None, wall_time_s: float | None = None,
                  extra: dict | None = None) -> dict:
    """Write ``results.json`` atomically and return what was written."""
    record = {"paper": paper, "claim": claim, "metrics": metrics, "seeds": seeds, "wall_time_s": wall_time_s,
              **provenance(), **(extra or {}), "config": config}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record, default=_jsonable)
    return record


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2, default=None) -> None:
    """``obj`` as JSON (plus a newline) to ``path`` through ``<path>.tmp`` and a rename: a reader never sees half a
    file, and an interrupted write leaves the old one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=default) + "\n")
    os.replace(tmp, path)


# Metric-name words that measure the machine, not the method: left out when a re-run is compared with its evidence.
_MACHINE_WORDS = {"time", "times", "wall", "s", "seconds", "ms", "mem", "memory", "bytes", "mib", "gib", "throughput",
                  "cached", "speedup", "cost", "forward", "bench"}


def _numbers(x: Any, path: str = ""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def _machine_metric(path: str) -> bool:
    return any(w in _MACHINE_WORDS for w in re.split(r"[._\[\]\s=]+", path.lower()))


def metric_drift(new: dict, committed: dict) -> dict:
    """How far a re-run's metrics are from the committed evidence's: over every number both trees hold (timings,
    memory and cache flags left out), ``compared``, ``identical`` (bit for bit; NaN equals NaN) and the largest
    relative difference ``max_rel`` (``|a - b| / max(|a|, |b|)``, at most 2; inf where one is NaN) with its metric
    ``worst``."""
    a, b = dict(_numbers(new)), dict(_numbers(committed))
    keys = [k for k in a if k in b and not _machine_metric(k)]
    same, worst, max_rel = 0, None, 0.0
    for k in keys:
        x, y = a[k], b[k]
        if x == y or (x != x and y != y):
            same += 1
            continue
        rel = abs(x - y) / max(abs(x), abs(y)) if x == x and y == y else float("inf")
        if rel > max_rel:
            max_rel, worst = rel, k
    return {"compared": len(keys), "identical": same, "max_rel": max_rel, "worst": worst}
