"""tools.claims_record: a make-claims timing record kept as evidence, with each re-run's drift from its committed
results (completed from the pytest folders for a record written before the suite measured it)."""
from __future__ import annotations

import json
from pathlib import Path

from tools import claims_record

ROOT = Path(__file__).resolve().parents[1]


def _record(tmp_path: Path) -> Path:
    rec = {"date": "2026-12-05T00:00:00", "cpus": 2, "parallel_workers": 2, "total_s": 30.0, "suite_wall_s": 20.0,
           "claims": {"tests/test_claims.py::test_claim[stage-image-x-seed0]": {"wall_time_s": 5.0,
                                                                               "outcome": "passed"},
                      "tests/test_claims.py::test_claim[vdm/moving_digits_claim]": {"wall_time_s": 15.0,
                                                                                   "outcome": "passed"},
                      "tests/test_claims.py::test_claim[ddim/digits_claim]": {"wall_time_s": 10.0,
                                                                             "outcome": "failed"}}}
    path = tmp_path / "timings.json"
    path.write_text(json.dumps(rec))
    return path


def test_the_record_gets_its_drift_from_the_runs_and_a_summary(tmp_path, capsys):
    runs = tmp_path / "pytest-7"
    evidence = json.loads((ROOT / "papers/vdm/results/moving_digits_claim.json").read_text())
    moved = json.loads(json.dumps(evidence))
    (runs / "popen-gw0" / "test_claim_vdm_moving_digits_c0").mkdir(parents=True)
    (runs / "popen-gw0" / "test_claim_vdm_moving_digits_c0" / "results.json").write_text(json.dumps(evidence))
    ddim = json.loads((ROOT / "papers/ddim/results/digits_claim.json").read_text())
    key = next(k for k, v in ddim["metrics"].items() if isinstance(v, float) and "time" not in k)
    ddim["metrics"][key] = ddim["metrics"][key] * 2 + 1
    (runs / "popen-gw1" / "test_claim_ddim_digits_claim0").mkdir(parents=True)
    (runs / "popen-gw1" / "test_claim_ddim_digits_claim0" / "results.json").write_text(json.dumps(ddim))
    out = tmp_path / "kept.json"
    assert claims_record.main([str(out), "--timings", str(_record(tmp_path)), "--runs", str(runs)]) == 0
    rec = json.loads(out.read_text())
    vdm = rec["claims"]["tests/test_claims.py::test_claim[vdm/moving_digits_claim]"]["drift"]
    assert vdm["identical"] == vdm["compared"] > 0 and moved["claim"] == "moving_digits_claim"
    assert rec["claims"]["tests/test_claims.py::test_claim[ddim/digits_claim]"]["drift"]["worst"] == key
    s = rec["summary"]
    assert (s["claims"], s["claims_s"], s["stages"], s["stages_s"]) == (2, 25.0, 1, 5.0)
    assert (s["longest"], s["with_drift"], s["bit_identical"]) == ("vdm/moving_digits_claim", 2, 1)
    assert s["outcomes"] == {"failed": 1, "passed": 2}


def test_no_record_or_an_output_under_papers_is_one_line(tmp_path, capsys):
    assert claims_record.main([str(tmp_path / "o.json"), "--timings", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert claims_record.main([str(ROOT / "papers" / "x.json"), "--timings", str(_record(tmp_path))]) == 2
    assert "papers/" in capsys.readouterr().err
    assert not (ROOT / "papers" / "x.json").exists()
