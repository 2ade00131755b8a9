"""Keep a ``make claims`` timing record as evidence: ``python -m tools.claims_record OUT [--timings F] [--runs DIR]``.

Copies ``outputs/claims/timings.json`` (what ``make claims`` writes: per-test wall time and outcome, the suite's
wall time, the machine and revision) to ``OUT`` (e.g. ``docs/measurements/claims_suite_<date>.json``) and adds a
summary: the claims' and the shared stages' total, the longest claim, and how many re-runs equal their committed
evidence bit for bit. A record written before the suite measured each re-run's drift from its evidence (``drift``,
:func:`shared.engine.results.metric_drift`) can be completed from the pytest folders the runs left (``--runs``, e.g.
``/tmp/pytest-of-$USER/pytest-N``): each ``test_claim_*/results.json`` there is compared with the committed file of its
paper and claim. Writes nothing under ``papers/``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.engine.results import metric_drift

ROOT = Path(__file__).resolve().parents[1]


def test_name(test_id: str) -> str:
    """``tests/test_claims.py::test_claim[vdm/moving_digits_claim]`` -> ``vdm/moving_digits_claim`` (its parameter)."""
    return test_id.split("[", 1)[1][:-1] if "[" in test_id else test_id


def is_stage(test_id: str) -> bool:
    """A shared stage's test (trained for the claims, no evidence of its own), not a claim's."""
    return test_name(test_id).startswith("stage-")


def _claim_of(test_id: str) -> str | None:
    """The experiment a claim test re-ran (None: a stage)."""
    return None if is_stage(test_id) or "[" not in test_id else test_name(test_id)


def drift_from_runs(runs: Path, root: Path = ROOT) -> dict[str, dict]:
    """``{paper/claim-name: drift}`` of every claim re-run found under ``runs`` against its committed evidence."""
    out = {}
    for f in sorted(runs.glob("*/test_claim_*/results.json")):
        res = json.loads(f.read_text())
        evidence = root / "papers" / str(res["paper"]) / "results" / f"{res['claim']}.json"
        if evidence.is_file():
            committed = json.loads(evidence.read_text())["metrics"]
            out[f"{res['paper']}/{res['claim']}"] = metric_drift(res["metrics"], committed)
    return out


def summarise(record: dict) -> dict:
    claims = {k: v for k, v in record["claims"].items() if _claim_of(k)}
    stages = {k: v for k, v in record["claims"].items() if not _claim_of(k)}
    longest = max(claims.items(), key=lambda kv: kv[1]["wall_time_s"], default=(None, {"wall_time_s": 0.0}))
    drifts = [v["drift"] for v in claims.values() if isinstance(v.get("drift"), dict)]
    return {"claims": len(claims), "claims_s": round(sum(v["wall_time_s"] for v in claims.values()), 1),
            "stages": len(stages), "stages_s": round(sum(v["wall_time_s"] for v in stages.values()), 1),
            "longest": _claim_of(longest[0]) if longest[0] else None, "longest_s": longest[1]["wall_time_s"],
            "outcomes": {o: sum(v["outcome"] == o for v in record["claims"].values())
                         for o in sorted({v["outcome"] for v in record["claims"].values()})},
            "with_drift": len(drifts), "bit_identical": sum(d["identical"] == d["compared"] for d in drifts)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.claims_record", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--timings", type=Path, default=ROOT / "outputs" / "claims" / "timings.json")
    ap.add_argument("--runs", type=Path, default=None)
    ap.add_argument("--revision", default=None, help="the suite's git revision, for a record written without it")
    a = ap.parse_args(argv)
    if not a.timings.is_file():
        print(f"error: no timing record at {a.timings}: run make claims first", file=sys.stderr)
        return 2
    if a.out.resolve().is_relative_to((ROOT / "papers").resolve()):
        print(f"error: {a.out} is under papers/, which only a publishing run writes", file=sys.stderr)
        return 2
    record = json.loads(a.timings.read_text())
    if a.revision and "git" not in record:
        record["git"] = {"revision": a.revision, "source": "given to tools.claims_record"}
    if a.runs is not None:
        found = drift_from_runs(a.runs)
        for test_id, rec in record["claims"].items():
            exp = _claim_of(test_id)
            if exp is None or "drift" in rec:
                continue
            from shared.engine.compose import compose  # the experiment's claim name (a config may rename it)

            name = f"{exp.split('/')[0]}/{compose([f'experiment={exp}']).claim.name}"
            if name in found:
                rec["drift"] = found[name]
    record["summary"] = summarise(record)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
