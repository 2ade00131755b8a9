"""The report: README tables, RESULTS.md, the HTML gallery (opened in headless Chromium), sweeps.

Everything is built in a tmp project tree from small fake results (``report --root``), so these tests do not
depend on any paper's real results. The browser test serves the gallery from a local http.server, lets
Chromium
load it, reads back the page's own per-image/video load marks and saves a screenshot under
``outputs/test_report/``; it skips only where no Chromium is installed.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from shared.engine.results import write_results
from tools.report import (
    aggregate_multirun,
    build_gallery,
    main,
    paper_table,
    results_md,
    update_readme,
)

REPORT_ROWS = [
    {"label": "FD 1 step", "metric": "fd.1", "paper": "12.2"},
    {"label": "FD 2 steps", "metric": "fd.2", "paper": "8.15"},
]


def fake_tree(root: Path) -> Path:
    """A project tree with one paper, a committed result + plot, a local run with a grid, GIF and MP4, a demo
    folder and an aggregated sweep."""
    from shared.engine.video_io import save_image_grid, save_video_grid

    paper = root / "papers" / "toy_paper"
    (paper / "results").mkdir(parents=True)
    (paper / "README.md").write_text(
        "# Toy paper\n\nA paper about toys (Someone et al. 2024).\n\n"
        "## Results\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\nTail.\n"
    )
    (root / "experiments" / "toy_paper").mkdir(parents=True)
    (root / "experiments" / "toy_paper" / "claim_a.yaml").write_text(
        "# @package _global_\n# Toy Table 1 at CPU scale: reflow straightens the toy.\nname: toy\n"
    )
    metrics = {"fd": {"1": {"mean": 3.0, "std": 0.5, "per_seed": [2.5, 3.5]}, "2": 1.25}}
    cfg = {"report": REPORT_ROWS, "expected": {"metric": "fd.1", "direction": "less_than", "value": 5}}
    write_results(
        paper / "results" / "claim_a.json",
        metrics,
        paper="toy_paper",
        claim="claim_a",
        seeds=[0, 1],
        config=cfg,
        wall_time_s=12.0,
    )
    g = torch.Generator().manual_seed(0)
    save_image_grid(
        torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, paper / "results" / "claim_a_plot.png", nrow=2
    )
    run = root / "outputs" / "toy_claim_a" / "2026-01-01_00-00-00"
    write_results(run / "results.json", metrics, paper="toy_paper", claim="claim_a", seeds=[0, 1], config=cfg)
    save_image_grid(
        torch.rand(16, 3, 8, 8, generator=g) * 2 - 1, run / "samples" / "final.png", nrow=4, scale=4
    )
    video = torch.rand(4, 3, 6, 8, 8, generator=g) * 2 - 1
    save_video_grid(video, run / "video.gif", nrow=2, scale=4)
    save_video_grid(video, run / "video.mp4", nrow=2, scale=4)
    demo = root / "outputs" / "demo" / "2026-01-01_00-00-01"
    demo.mkdir(parents=True)
    (demo / "summary.json").write_text(json.dumps({"rows": [["ddim: S=5 eta=0", "FD_judge 1.0"]]}))
    save_image_grid(torch.rand(4, 1, 8, 8, generator=g), demo / "ddim" / "grid.png", nrow=2)
    sweep = root / "outputs" / "multirun" / "toy" / "2026-01-01_00-00-02"
    for i, lr in enumerate(("0.001", "0.002")):
        job = sweep / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- module.optimizer.lr={lr}\n- seed=0\n")
        write_results(
            job / "results.json",
            {"fd": {"1": 3.0 + i, "2": 1.0 + i}},
            paper="toy_paper",
            claim="claim_a",
            config={"report": REPORT_ROWS},
            wall_time_s=1.0,
        )
    aggregate_multirun(sweep)
    return root


def test_readme_table_and_results_md(tmp_path):
    root = fake_tree(tmp_path)
    assert update_readme("toy_paper", root)
    text = (root / "papers" / "toy_paper" / "README.md").read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\n\nTail.\n")
    assert "| FD 1 step | 12.2 | 3 ± 0.5 (n=2) |" in text and "| FD 2 steps | 8.15 | 1.25 |" in text
    assert paper_table("toy_paper", root) in text
    assert "superseded" not in paper_table("toy_paper", root)
    # a make-target claim whose config names the claim that re-tests it says so under its table's heading
    config = root / "experiments" / "toy_paper" / "claim_a.yaml"
    original = config.read_text()
    config.write_text(original + "claim:\n  superseded_by: toy_paper/claim_b\n")
    assert ("— a first design, superseded by `toy_paper/claim_b` (re-run against this evidence by `make "
            "claims-superseded`)") in paper_table("toy_paper", root)
    (root / "Makefile").write_text("toy:\n\t$(TRAIN) experiment=toy_paper/other\n")   # not a make-target claim
    assert "superseded" not in paper_table("toy_paper", root)
    (root / "Makefile").unlink()
    config.write_text(original)
    md = results_md(root)
    assert "| claim | measure | paper | ours | command | revision | date |" in md
    row = next(line for line in md.splitlines() if "FD 1 step" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0].startswith("[claim_a]") and cells[2:4] == ["12.2", "3 ± 0.5 (n=2)"]
    assert re.fullmatch(r"[0-9a-f]{8}(\+dirty)?", cells[5]) and re.fullmatch(r"\d{4}-\d\d-\d\d", cells[6])
    main(["--root", str(root), "--no-gallery"])
    assert (root / "RESULTS.md").read_text() == md
    # the claim-suite time budget: each result's recorded wall time and the total
    assert "| toy_paper | claim_a | cpu | 0.2 | ≤ 10: ok |" in md
    assert "| **total** | `make claims`: the recorded times summed | cpu | **0.2** |" in md


def test_aggregate_multirun_results_and_csv(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (lr, loss) in enumerate((("0.1", 0.5), ("0.2", 0.25))):
        job = sweep / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- lr={lr}\n- name=x\n")
        (job / "logs").mkdir()
        (job / "logs" / "metrics.csv").write_text(f"epoch,step,train/loss\n0,0,1.0\n0,1,{loss}\n")
    s = aggregate_multirun(sweep)
    assert s["swept"] == ["lr"] and s["columns"] == ["job", "lr", "train/loss", "step"]
    assert [r[2] for r in s["rows"]] == [0.5, 0.25]
    for name in ("summary.md", "summary.csv", "summary.json", "summary.png"):
        assert (sweep / name).stat().st_size > 0, name
    assert "| 1 | 0.2 | 0.25 | 1 |" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_real_multirun_aggregates(tmp_path):
    """A real two-job Hydra multirun of the train entry point, aggregated by the report's CLI."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.engine.train",
            "-m",
            "data.size=8",
            "data.batch_size=8",
            "data.train.classes=[0,1]",
            "model.base_channels=8",
            "model.norm_groups=4",
            "trainer.max_steps=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "callbacks.samples=null",
            "module.optimizer.lr=1e-3,2e-3",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(
        [sys.executable, "-m", "tools.report", "--multirun", str(sweep), "--metric", "train/loss"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((sweep / "summary.json").read_text())
    assert s["swept"] == ["module.optimizer.lr"] and len(s["rows"]) == 2
    assert [float(row[1]) for row in s["rows"]] == [1e-3, 2e-3]
    assert all(isinstance(row[-1], float) and row[-1] == row[-1] for row in s["rows"])  # finite losses
    assert (sweep / "summary.png").exists() and "train/loss" in r.stdout


# --------------------------------------------------------------------------------------------- browser
def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _browser(exe: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    chromium() is None,
    reason="no Chromium installed (apt-get install chromium chromium-driver; "
    ".ci/run installs it): the gallery's browser test cannot run",
)
def test_gallery_loads_in_chromium(tmp_path):
    root = fake_tree(tmp_path / "tree")
    index = build_gallery(root)
    assert index == root / "reports" / "index.html"
    handler = functools.partial(_Quiet, directory=str(index.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    try:
        r = _browser(chromium(), url, tmp_path / "profile", "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        dom = r.stdout
        shot_dir = ROOT / "outputs" / "test_report"
        shot_dir.mkdir(parents=True, exist_ok=True)
        shot = shot_dir / "gallery.png"
        shot.unlink(missing_ok=True)
        _browser(
            chromium(),
            url,
            tmp_path / "profile2",
            f"--screenshot={shot}",
            "--window-size=1280,1800",
            "--hide-scrollbars",
        )
    finally:
        server.shutdown()
    # the tables: the paper's claim table, the demo table and the sweep table
    assert "<h2>toy_paper</h2>" in dom and "Toy Table 1 at CPU scale" in dom
    assert re.search(r"<td>FD 1 step</td><td>12\.2</td><td>3 ± 0\.5 \(n=2\)</td>", dom)
    assert "<td>ddim: S=5 eta=0</td>" in dom and 'class="sweep"' in dom and "module.optimizer.lr" in dom
    # every image and video: present, and marked loaded by the page itself
    kinds = re.findall(r"<(img|video)\b[^>]*>", dom)  # committed plot, grid, GIF, demo grid, sweep plot; MP4
    assert kinds.count("video") == 1 and kinds.count("img") == 5, kinds
    tags = re.findall(r"<(?:img|video)\b[^>]*>", dom)
    not_loaded = [t for t in tags if 'data-status="loaded"' not in t]
    assert not not_loaded, f"media that did not load: {not_loaded}"
    status = json.loads(re.search(r'<span id="media-status"[^>]*>(\{.*?\})</span>', dom).group(1))
    assert status == {"total": len(tags), "loaded": len(tags), "failed": 0, "pending": 0}
    assert shot.exists() and shot.stat().st_size > 10_000, "screenshot not written"


def test_a_run_that_reuses_cached_stages_says_so_and_is_not_timed(tmp_path):
    import time

    from omegaconf import OmegaConf

    from shared.engine import claims

    claims._REUSED.clear()   # stages an earlier test of this worker reused without finishing a claim
    root = fake_tree(tmp_path)
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "seed": 0,
                            "claim": {"seeds": [0], "publish": False},
                            "report": [{"label": "FD", "metric": "fd", "paper": "-"}]})
    first = claims.cached(tmp_path / "run" / "stage.json", lambda: {"fd": 2.0})
    rec = claims.finish(cfg, first, paper="toy_paper", claim="claim_b", t0=time.time(), copy_to_paper=False)
    assert "reused_stages" not in rec  # computed, not reused
    again = claims.cached(tmp_path / "run" / "stage.json", lambda: {"fd": -1.0})
    assert again == first
    rec = claims.finish(cfg, again, paper="toy_paper", claim="claim_b", t0=time.time(), copy_to_paper=False)
    assert rec["reused_stages"] == ["cached:stage.json"]
    (root / "papers" / "toy_paper" / "results" / "claim_b.json").write_text(json.dumps(rec))
    md = results_md(root)
    assert "| toy_paper | claim_b | cpu | (0.0) | not timed: reused cached stages" in md
    assert "| **total** | `make claims`: the recorded times summed | cpu | **0.2** |" in md  # claim_a only


def test_results_record_the_compute_a_run_had_and_the_time_table_shows_it(tmp_path):
    import torch

    rec = write_results(tmp_path / "results.json", {"fd": 1.0}, paper="p", claim="c", seeds=[0], wall_time_s=3.0)
    assert rec["compute"]["torch_threads"] == torch.get_num_threads()
    assert 1 <= rec["compute"]["cpus_usable"] <= rec["compute"]["cpus"]
    md = results_md(fake_tree(tmp_path / "tree"))  # claim_a is written by write_results in this process
    n, usable = torch.get_num_threads(), rec["compute"]["cpus_usable"]
    assert f"| toy_paper | claim_a | cpu | 0.2 | ≤ 10: ok | {n} thread{'s' if n != 1 else ''} / {usable} of " in md


def test_follow_up_experiments_are_listed_but_not_held_to_the_budget(tmp_path):
    root = fake_tree(tmp_path)
    (root / "Makefile").write_text("toy_paper:\n\t$(TRAIN) experiment=toy_paper/other_claim\n")
    md = results_md(root)
    assert "| toy_paper | claim_a | follow-up | 0.2 | follow-up (no budget) |" in md  # not run by `make toy_paper`
    assert "| **total** | `make claims`: the recorded times summed | cpu | **0.0** | two at a time ≥ 0.0 min" in md
    assert "| total | every timed result (with follow-ups) | | 0.2 |" in md


def test_sweep_report_keeps_every_metric_in_report_order_and_takes_several(tmp_path):
    """Issue: the first 8 labels were kept silently (3-RF cut from the reflow-rounds sweep); --metric A B was an
    argparse error. Now every report row is a column, in the config's order, wall time last."""
    sweep = tmp_path / "sweep"
    labels = [f"S(Z) {k}-RF" for k in (1, 2, 3)] + [f"SW {k}-RF" for k in (1, 2, 3)] + [f"m{i}" for i in range(5)]
    rows = [{"label": lab, "metric": f"v{i}"} for i, lab in enumerate(labels)]
    for j, rounds in enumerate((1, 2, 3)):
        job = sweep / str(j)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- claim.reflow_rounds={rounds}\n- claim.seeds=[0]\n")
        metrics = {f"v{i}": float(10 * j + i) for i in range(len(labels)) if i % 3 < rounds or i >= 6}
        metrics["extra"] = {"nfe": 7.0, **({"4rf": 1.0} if rounds == 3 else {})}   # not in the report rows
        write_results(job / "results.json", metrics, config={"report": rows}, wall_time_s=5.0 + j)
    s = aggregate_multirun(sweep)
    # 11 report rows, none dropped; a metric only some jobs have (4-RF) shown; the rest listed as not shown
    assert s["columns"] == ["job", "claim.reflow_rounds", *labels, "extra.4rf", "wall_time_s"]
    assert s["not_shown"] == ["extra.nfe"] and "extra.nfe" in (sweep / "summary.md").read_text()
    assert s["rows"][2][2 + 2] == 22.0 and s["rows"][0][2 + 2] != s["rows"][0][2 + 2]   # 3-RF: measured / NaN
    main(["--multirun", str(sweep), "--metric", "S(Z) 3-RF", "SW 3-RF"])
    data = json.loads((sweep / "summary.json").read_text())
    assert data["metrics"] == ["S(Z) 3-RF", "SW 3-RF"] and data["plot"]
    main(["--multirun", str(sweep), "--metric", "S(Z) 1-RF", "--metric", "m4"])
    assert json.loads((sweep / "summary.json").read_text())["metrics"] == ["S(Z) 1-RF", "m4"]
    with pytest.raises(SystemExit, match="metric.*'nope'.* not in this sweep"):
        main(["--multirun", str(sweep), "--metric", "nope"])


def test_gallery_order_links_legends_and_follow_ups_stay_apart(tmp_path):
    """Issue #19's gallery: papers in the seminar order of the top README, the README's markdown links rendered,
    a follow-up claim's figures (``digits_claim_budget_*``) not shown under the base claim, figure legends."""
    from tools.report import claim_figures, legend_of, md_inline, seminar_order

    root = fake_tree(tmp_path / "tree")
    for name in ("zeta_paper", "alpha_paper"):
        (root / "papers" / name).mkdir()
        (root / "papers" / name / "README.md").write_text(f"# {name}\n\nSee [arXiv](https://arxiv.org/abs/1).\n")
    (root / "README.md").write_text("| [Z](papers/zeta_paper/README.md) |\n| [T](papers/toy_paper/README.md) |\n")
    assert seminar_order(root) == ["zeta_paper", "toy_paper", "alpha_paper"]
    res = root / "papers" / "toy_paper" / "results"
    write_results(res / "claim_a_budget.json", {"fd": {"1": 1.0}}, paper="toy_paper", claim="claim_a_budget",
                  config={"report": REPORT_ROWS})
    from shared.engine.video_io import save_image_grid

    save_image_grid(torch.zeros(4, 1, 8, 8), res / "claim_a_budget_pd_1step.png", nrow=2)
    assert [p.name for p in claim_figures(res, "claim_a")] == ["claim_a_plot.png"]
    assert [p.name for p in claim_figures(res, "claim_a_budget")] == ["claim_a_budget_pd_1step.png"]
    page = build_gallery(root).read_text()
    assert page.index('id="zeta_paper"') < page.index('id="toy_paper"') < page.index('id="alpha_paper"')
    assert '<a href="https://arxiv.org/abs/1">arXiv</a>' in page and "[arXiv](" not in page
    base = page[page.index('id="toy_paper--claim_a"'):page.index('id="toy_paper--claim_a_budget"')]
    assert "claim_a_budget_pd_1step" not in base
    assert "1 network evaluation(s) per sample" in page   # the legend of the follow-up's grid
    assert legend_of("digits_claim_samples_S10_eta=0.0.png").startswith("DDIM, S=10 steps, eta=0.0")
    assert legend_of("digits_guidance_samples_w1.5.png").startswith("guidance scale w = 1.5: column k = class k")
    assert md_inline("**b** `c` <x>") == "<b>b</b> <code>c</code> &lt;x&gt;"


def test_claim_times_judge_each_claim_by_its_tier_and_bound_the_suite(tmp_path):
    """RESULTS.md's time table: a claim of the long tier (as its experiment, or the experiment it extends, says
    now) is held to 30 minutes, one of `make claims` to 10; per suite the recorded times are summed and the least
    wall time two at a time is max(total / 2, longest); reused-stage runs are listed but not summed."""
    from tools.report import claim_times_md

    exp = tmp_path / "experiments" / "toy_paper"
    exp.mkdir(parents=True)
    (exp / "short.yaml").write_text("claim:\n  name: short\n")
    (exp / "base_long.yaml").write_text("claim:\n  name: base_long\n  tier: long\n")
    (exp / "long.yaml").write_text("defaults:\n  - /experiment/toy_paper/base_long\n  - _self_\nclaim:\n  name: long\n")
    (exp / "cached.yaml").write_text("claim:\n  name: cached\n")
    (exp / "first.yaml").write_text("claim:\n  name: first\n  superseded_by: toy_paper/redone\n")
    (exp / "redone.yaml").write_text("defaults:\n  - /experiment/toy_paper/first\n  - _self_\nclaim:\n"
                                     "  name: redone\n  superseded_by: null\n")
    (tmp_path / "Makefile").write_text("toy:\n" + "".join(f"\t$(TRAIN) experiment=toy_paper/{c}\n"
                                                         for c in ("short", "long", "other", "cached", "first",
                                                                   "redone")))
    res = tmp_path / "papers" / "toy_paper" / "results"
    for claim, wall, extra in (("short", 660.0, {}), ("long", 1500.0, {}), ("other", 300.0, {}),
                               ("cached", 50.0, {"reused_stages": ["teacher_cache:seed0"]}), ("followup", 9000.0, {}),
                               ("first", 120.0, {}), ("redone", 60.0, {})):
        cfg = {"report": [{"label": "x", "metric": "x", "paper": "—"}]}
        cfg.update({"claim": {"tier": "long"}} if claim == "other" else {})
        write_results(res / f"{claim}.json", {"x": 1.0}, paper="toy_paper", claim=claim, seeds=[0], config=cfg,
                      wall_time_s=wall)
        if extra:
            data = json.loads((res / f"{claim}.json").read_text())
            data.update(extra)
            (res / f"{claim}.json").write_text(json.dumps(data))
    (tmp_path / "papers" / "toy_paper" / "README.md").write_text("# Toy\n")
    md = claim_times_md(tmp_path)
    row = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:6]]
           for line in md.splitlines() if line.startswith("| toy_paper")}
    assert row["short"] == ["cpu", "11.0", "≤ 10: **over**"]
    assert row["long"] == ["long", "25.0", "≤ 30: ok"]            # tier inherited through defaults
    assert row["other"] == ["long", "5.0", "≤ 30: ok"]            # no experiment file: the committed config's tier
    assert row["followup"][0] == "follow-up" and "no budget" in row["followup"][2]
    assert "not timed" in row["cached"][2]
    totals = [line for line in md.splitlines() if line.startswith("| **total**")]
    assert ("| cpu | **12.0** | two at a time ≥ 11.0 min (within the 45-min suite budget); "
            "1 claim(s) not timed") in totals[0]
    assert "| long | **30.0** | two at a time ≥ 25.0 min" in totals[1]
    # a superseded first design keeps its tier's budget but is summed in make claims-superseded; a config that
    # extends it and sets superseded_by: null is current
    assert row["first"] == ["cpu, superseded", "2.0", "≤ 10: ok"] and row["redone"][0] == "cpu"
    assert "`make claims-superseded`: the recorded times summed | superseded | **2.0**" in totals[2]


def test_the_measured_suite_run_is_reported_from_its_newest_record(tmp_path):
    from tools.report import suite_run_md

    assert suite_run_md(tmp_path) == ""
    (tmp_path / "docs" / "measurements").mkdir(parents=True)
    rec = {"date": "2026-12-05T01:52:00", "cpus": 2, "parallel_workers": 2, "suite_wall_s": 3966.0,
           "git": {"revision": "ca9b0bbf"},
           "claims": {"t::test_claim[stage-image-x-seed0]": {"wall_time_s": 60.0, "outcome": "passed"},
                      "t::test_claim[vdm/moving_digits_claim]": {"wall_time_s": 120.0, "outcome": "failed",
                                                                 "drift": {"compared": 4, "identical": 3,
                                                                           "max_rel": 0.25, "worst": "fd.mean"}}},
           "summary": {"claims": 1, "claims_s": 120.0, "stages": 1, "stages_s": 60.0, "with_drift": 1,
                       "bit_identical": 0}}
    folder = tmp_path / "docs" / "measurements"
    (folder / "claims_suite_2026-12-01.json").write_text(json.dumps(rec | {"suite_wall_s": 1.0}))   # older: not shown
    (folder / "claims_suite_2026-12-05.json").write_text(json.dumps(rec))
    md = suite_run_md(tmp_path)
    assert "**66.1 min wall** (**over** the 45-min budget)" in md and "revision ca9b0bb" in md
    assert "| stage-image-x-seed0 | 1.0 | stage trained |  |  |" in md
    assert "| vdm/moving_digits_claim | 2.0 | **changed** | 3 / 4 | 0.25 (`fd.mean`) |" in md
    # a part of the CPU tier measured on its own is shown beside the whole tier's newest record, each once
    (folder / "claims_suite_2026-12-06_video.json").write_text(json.dumps(rec | {"suite": "video",
                                                                                  "suite_wall_s": 2580.0}))
    md = suite_run_md(tmp_path)
    assert md.count("## Claim suite, measured") == 1 and md.count("| vdm/moving_digits_claim |") == 2
    assert "`make claims` (the CPU tier's current claims) at revision ca9b0bb" in md and "**66.1 min wall**" in md
    assert "`make claims-video` (the video part of the CPU tier, a target until 2026-12-05)" in md
    assert "**43.0 min wall** (within" in md
    assert md.index("`make claims`") < md.index("`make claims-video`") and "**0.0 min wall**" not in md
    # a record that re-ran a claim now superseded (claim.superseded_by) says so; the superseded suite has no budget
    (tmp_path / "experiments" / "vdm").mkdir(parents=True)
    (tmp_path / "experiments" / "vdm" / "moving_digits_claim.yaml").write_text(
        "claim:\n  name: moving_digits_claim\n  superseded_by: vdm/sprites_joint_claim\n")
    (folder / "claims_suite_2026-12-07_superseded.json").write_text(json.dumps(rec | {"suite": "superseded"}))
    md = suite_run_md(tmp_path)
    assert "`make claims` (the CPU tier, with the first designs that now run in `make claims-superseded`)" in md
    assert "`make claims-superseded` (the superseded first designs) at revision ca9b0bb" in md
    assert md.count("(**over** the 45-min budget)") == 1


def test_a_claim_run_does_not_inherit_stages_an_earlier_failed_claim_reused(tmp_path, monkeypatch):
    """make claims runs many claims in one process: one that raised after reusing a stage must not leave it in the
    next claim's record (shared.engine.train.run starts every pipeline with claims.begin_claim)."""
    import sys
    import types

    from conftest import compose
    from omegaconf import open_dict

    from shared.engine import claims
    from shared.engine.train import run

    def failing(cfg):
        claims.note_reused("teacher_cache:seed0")
        raise RuntimeError("boom")

    def clean(cfg):
        return claims.finish(cfg, {"fd": 1.0}, paper="ddpm", claim="digits_claim", t0=0.0, copy_to_paper=False)

    mod = types.ModuleType("fake_pipelines")
    mod.failing, mod.clean = failing, clean
    monkeypatch.setitem(sys.modules, "fake_pipelines", mod)
    for name in ("failing", "clean"):
        cfg = compose(["experiment=ddpm/digits_claim", "logger=none", f"run_dir={tmp_path / name}"])
        with open_dict(cfg):
            cfg.pipeline = f"fake_pipelines.{name}"
        if name == "failing":
            with pytest.raises(RuntimeError, match="boom"):
                run(cfg)
        else:
            assert "reused_stages" not in run(cfg)
