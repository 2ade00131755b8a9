"""``make demo`` in its fast mode: every act runs, prints its table and leaves its pictures and videos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_demo_fast_runs_every_act_and_writes_pictures(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--fast", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"pictures and GIFs: {out.resolve()}" in r.stdout
    rows = dict(map(tuple, json.loads((out / "summary.json").read_text())["rows"]))
    assert any(k.startswith("ddim: DDIM S=") and v.startswith("FD_judge") for k, v in rows.items())
    for name in ("ddim_S2_eta0.png", "ddim_interpolation.gif", "ddim_interpolation.mp4"):
        assert (out / "ddim" / name).stat().st_size > 0, name
    if (ROOT / "papers" / "rectified_flow" / "demo.py").exists():
        assert (out / "rectified_flow" / "trajectories.png").stat().st_size > 0
        assert "rectified_flow: 2-RF (reflow): straightness S(Z)" in rows
    console = r.stderr + r.stdout
    assert "step 60/60" in console and "Epoch" not in console, "one progress bar over the training steps"
    assert "Tip:" not in console and "GPU available" not in console, "a quiet console"


def test_unknown_act_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--acts", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "unknown act 'nope'" in r.stderr
