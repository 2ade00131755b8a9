"""Test-wide settings: offline, quiet, deterministic, and one place to compose experiment configs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import shared  # noqa: F401  - first: pins the CPU instruction set before any torch kernel runs (shared.engine.isa)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHONHASHSEED", "0")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")


def compose(overrides=(), config_name="train"):
    """Compose the root config exactly as ``python -m shared.engine.train`` would."""
    from shared.engine.compose import compose as _compose

    return _compose(overrides, config_name)


def image_stage_key(experiment: str, seed: int) -> str:
    """The teacher-cache key of an experiment's image stage (``claim.image``) for ``seed``: claims that share one
    image stage (the Sprites claims' ``sprites16``) must have equal keys, so the stage is trained once."""
    from omegaconf import OmegaConf

    from shared.engine.claims import variant_config
    from shared.engine.teachers import teacher_key

    cfg = compose([f"experiment={experiment}", "run_dir=/tmp/unused"])
    spec = OmegaConf.to_container(cfg.claim.image, resolve=False)
    over = {k: spec[k] for k in ("model", "module", "data")}
    over["trainer.max_steps"] = int(spec["max_steps"])
    return teacher_key(variant_config(cfg, over, seed), seed)


def item_digest(item: dict) -> str:
    """A short digest of a dataset item (every key, tensors by their bytes): a world's items before and after a change
    are compared by digests written down before it."""
    import hashlib

    import torch

    m = hashlib.sha256()
    for k in sorted(item):
        v = item[k]
        m.update(k.encode())
        m.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else str(v).encode())
    return m.hexdigest()[:16]


@pytest.fixture
def compose_cfg():
    return compose


def run_cli(entry: str, args: list[str], capsys) -> tuple[int, str]:
    """``python -m shared.engine.<entry> *args`` in this process (the module run as ``__main__``, as ``-m`` does,
    so Hydra finds ``conf/`` the same way): (exit status, stderr)."""
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [str(ROOT / "shared" / "engine" / f"{entry}.py"), *args]
    capsys.readouterr()
    try:
        runpy.run_module(f"shared.engine.{entry}", run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def run_claim(experiment: str, tmp_path, *overrides: str) -> dict:
    """Run a claim pipeline into ``tmp_path`` without publishing (papers/<id>/results untouched); its metrics."""
    import json

    from omegaconf import open_dict

    from shared.engine.train import run

    cfg = compose([f"experiment={experiment}", "logger=none", f"run_dir={tmp_path}", *overrides])
    with open_dict(cfg):
        cfg.claim.publish = False
    run(cfg)
    return json.loads((Path(tmp_path) / "results.json").read_text())["metrics"]


# ---------------------------------------------------------------------------------- claim-suite timer
# `make claims` (pytest -m claims): every claim test's wall time is recorded in outputs/claims/timings.json
# and the total is printed at the end (every claim of make claims within 10 min, the suite within 45 min wall).
CLAIM_BUDGET_S = 600.0
_CLAIM_TIMES: dict[str, dict] = {}
_CLAIM_SUITES: dict[str, str] = {}
_SUITE_T0 = 0.0
_WORKERS = 1


def pytest_runtest_logreport(report):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # under xdist the controller records every worker's reports
        return
    if "claims" not in report.keywords:
        return
    # setup counts too: a module-scoped fixture (one claim run shared by several tests) runs in its first test's setup
    rec = _CLAIM_TIMES.setdefault(report.nodeid, {"wall_time_s": 0.0, "outcome": "passed"})
    _CLAIM_SUITES[report.nodeid] = _suite_of_keywords(report.keywords)
    rec["wall_time_s"] = round(rec["wall_time_s"] + report.duration, 1)
    for name, value in getattr(report, "user_properties", ()):   # e.g. the re-run's drift from its evidence
        rec[name] = value
    if report.when == "call" or report.outcome != "passed":
        xfail = getattr(report, "wasxfail", None) is not None
        rec["outcome"] = ("xfailed" if report.skipped else "xpassed") if xfail else report.outcome
    if report.when == "teardown":
        _write_timings()  # after every claim, so an interrupted suite keeps what finished


def _suite_of_keywords(keywords) -> str:
    """The suite a claim test belongs to by its marks: ``long`` (make claims-long), ``superseded`` (make
    claims-superseded) or ``""`` (make claims, the CPU tier)."""
    return "long" if "claims_long" in keywords else "superseded" if "claims_superseded" in keywords else ""


def _run_suite() -> str | None:
    """The suite this run re-timed: the one all its claim tests belong to, ``mixed`` when they span suites."""
    suites = set(_CLAIM_SUITES.values())
    return (suites.pop() or None) if len(suites) == 1 else "mixed" if suites else None


def _timings_name(suite: str | None) -> str:
    """``timings.json`` for ``make claims``, ``timings_<suite>.json`` for another suite (``long``, ``superseded``)."""
    return f"timings_{suite}.json" if suite else "timings.json"


def _write_timings() -> dict:
    import json
    import time

    total = sum(v["wall_time_s"] for v in _CLAIM_TIMES.values())
    out = ROOT / "outputs" / "claims"
    out.mkdir(parents=True, exist_ok=True)
    from shared.engine.results import cpu_model, git_revision

    suite = _run_suite()
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git_revision(), "cpu_model": cpu_model(),
              "suite": suite,
              "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
              "parallel_workers": _WORKERS, "total_s": round(total, 1),
              "suite_wall_s": round(time.time() - _SUITE_T0, 1), "budget_per_claim_s": CLAIM_BUDGET_S,
              "claims": _CLAIM_TIMES}
    (out / _timings_name(suite)).write_text(json.dumps(record, indent=2))
    return record


def _papers_digest() -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "papers").rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


_PAPERS_AT_START: dict[str, str] = {}


def pytest_sessionstart(session):
    import time

    global _SUITE_T0, _WORKERS
    _SUITE_T0 = time.time()
    _WORKERS = getattr(session.config.option, "numprocesses", None) or 1
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _PAPERS_AT_START.update(_papers_digest())


def pytest_sessionfinish(session, exitstatus):
    """No test command may write papers/ (only an explicit publishing run does): the suite fails if one did."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not _PAPERS_AT_START:
        return
    now = _papers_digest()
    changed = sorted(k for k in set(now) | set(_PAPERS_AT_START) if now.get(k) != _PAPERS_AT_START.get(k))
    if changed:
        session.config._vdp_papers_changed = changed
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    changed = getattr(config, "_vdp_papers_changed", None)
    if changed:
        terminalreporter.section("papers/ changed during the tests", red=True)
        terminalreporter.write_line(f"{len(changed)} file(s) under papers/ changed; only a publishing run may write "
                                    f"there: {', '.join(changed[:10])}")
    if not _CLAIM_TIMES:
        return
    record = _write_timings()
    total, out = record["total_s"], ROOT / "outputs" / "claims"
    name = _timings_name(record.get("suite"))
    tr = terminalreporter
    tr.section("claim-suite wall times")
    for nodeid, v in sorted(_CLAIM_TIMES.items(), key=lambda kv: -kv[1]["wall_time_s"]):
        flag = "  OVER 10 min" if v["wall_time_s"] > CLAIM_BUDGET_S else ""
        tr.write_line(f"{v['wall_time_s']:8.1f} s  {v['outcome']:7s} {nodeid}{flag}")
    tr.write_line(f"{total:8.1f} s  sum of claim tests ({total / 60:.1f} min); suite wall "
                  f"{record['suite_wall_s'] / 60:.1f} min -> {out / name}")
