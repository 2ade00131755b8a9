"""``make report``: regenerate every paper README's results table, ``RESULTS.md`` and the HTML gallery from
measured results; ``--multirun`` aggregates a Hydra sweep into one table and one plot.

Each ``papers/<id>/results/<claim>.json`` (written by a claim run) carries its config, whose ``report:`` list
names the rows to show: ``{label, metric: dotted path into results["metrics"], paper: "<paper's number>"}``.
The table lands between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in ``papers/<id>/README.md``;
nothing in it is typed by hand. ``RESULTS.md`` holds one table per paper (claim, paper's number, ours,
command,
git revision, date). The gallery ``reports/index.html`` shows per paper its claims, the same tables, the
committed plots (``papers/<id>/results/*.png``) and the sample grids, GIFs and MP4s of the newest run of each
claim under ``outputs/`` (copied into ``reports/assets/`` so the folder is self-contained), plus the newest
``make demo`` and every aggregated sweep.

    python -m tools.report                        # all READMEs + RESULTS.md + reports/index.html
    python -m tools.report --paper ddpm           # one paper's README
    python -m tools.report --gallery              # only the gallery
    python -m tools.report --multirun outputs/multirun/<name>/<time> [--metric LABEL]
    python -m tools.report --root <tree>          # another project tree (tests)
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import shutil
from pathlib import Path

from shared.engine.console import format_value as fmt
from shared.engine.console import lookup_metric as lookup

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
IMAGE_EXT, VIDEO_EXT = (".png", ".jpg", ".jpeg", ".gif", ".svg"), (".mp4", ".webm")
MAX_MEDIA_BYTES = 8 * 2**20  # larger files are not copied into the gallery
MAX_MEDIA_PER_RUN = 24


def _root(root) -> Path:
    return Path(root) if root is not None else ROOT


def rows_of(result: dict) -> list[dict]:
    cfg = result.get("config") or {}
    out = []
    for row in cfg.get("report") or []:
        try:
            ours = fmt(lookup(result["metrics"], row["metric"]))
        except KeyError:
            ours = "missing"
        out.append({"label": row.get("label", row["metric"]), "paper": row.get("paper", ""), "ours": ours})
    return out


def revision(res: dict) -> str:
    git = res.get("git") or {}
    return (git.get("revision") or "?")[:8] + ("+dirty" if git.get("dirty") else "")


def load_results(paper: str, root=None) -> list[tuple[Path, dict]]:
    """``(file, record)`` of every readable results json of a paper that has report rows."""
    out = []
    for f in sorted((_root(root) / "papers" / paper / "results").glob("*.json")):
        try:
            res = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(res, dict) and "metrics" in res and rows_of(res):
            out.append((f, res))
    return out


def superseded_note(paper: str, claim_file: str, root=None) -> str:
    """`` — superseded by `<paper>/<claim>` ...`` for a make-target claim whose experiment config names the claim that
    re-tests it (``claim.superseded_by``), else ``""``."""
    targets = make_target_claims(root)
    if targets is not None and f"{paper}/{claim_file}" not in targets:
        return ""
    by = superseded_by(f"{paper}/{claim_file}", root)
    return (f" — a first design, superseded by `{by}` (re-run against this evidence by `make claims-superseded`)"
            if by else "")


def paper_table(paper: str, root=None) -> str:
    lines = []
    for f, res in load_results(paper, root):
        wall = res.get("wall_time_s")
        lines.append(
            f"**{res.get('claim') or f.stem}** — `{res.get('command', '?')}` "
            f"(rev {revision(res)}, {res.get('date', '?')[:10]}, wall {fmt(wall)} s, "
            f"seeds {res.get('seeds')}; [json](results/{f.name})){superseded_note(paper, f.stem, root)}"
        )
        lines.append("")
        lines.append("| measure | paper | ours |")
        lines.append("|---|---|---|")
        lines += [f"| {_md_cell(r['label'])} | {_md_cell(r['paper'])} | {_md_cell(r['ours'])} |" for r in rows_of(res)]
        lines.append("")
    if not lines:
        return "_No committed results yet._\n"
    lines.append(
        "All papers: [RESULTS.md](../../RESULTS.md); pictures: `make gallery` → `reports/index.html`."
    )
    return "\n".join(lines).rstrip() + "\n"


def update_readme(paper: str, root=None) -> bool:
    readme = _root(root) / "papers" / paper / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    table = paper_table(paper, root)
    new = re.sub(
        re.escape(BEGIN) + r".*?" + re.escape(END), lambda m: f"{BEGIN}\n{table}{END}", text, flags=re.S
    )
    readme.write_text(new)
    return True


def papers(root=None) -> list[str]:
    base = _root(root) / "papers"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "README.md").exists())


def _md_cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def results_md(root=None) -> str:
    """One table per paper: claim, measure, paper's number, ours, command, git revision, date."""
    parts = [
        "# Results\n",
        "Generated by `make report` from `papers/*/results/*.json`; every number comes from a "
        "committed run of the committed code (command, revision and date beside it). Pictures: "
        "`make gallery` → `reports/index.html`.\n",
    ]
    for paper in papers(root):
        parts.append(f"## {paper}\n\n[README](papers/{paper}/README.md#results)\n")
        loaded = load_results(paper, root)
        if not loaded:
            parts.append("_No committed results yet._\n")
            continue
        lines = [
            "| claim | measure | paper | ours | command | revision | date |",
            "|---|---|---|---|---|---|---|",
        ]
        for f, res in loaded:
            for i, r in enumerate(rows_of(res)):
                first = i == 0
                claim = f"[{res.get('claim') or f.stem}](papers/{paper}/results/{f.name})" if first else ""
                cmd = f"`{_md_cell(res.get('command', '?'))}`" if first else ""
                lines.append(
                    f"| {claim} | {_md_cell(r['label'])} | {_md_cell(r['paper'])} | {_md_cell(r['ours'])} | "
                    f"{cmd} | {revision(res) if first else ''} | "
                    f"{(res.get('date') or '?')[:10] if first else ''} |"
                )
        parts.append("\n".join(lines) + "\n")
    parts.append(claim_times_md(root))
    parts.append(suite_run_md(root))
    return "\n".join(parts)


CLAIM_BUDGET_S = 600.0       # every claim check of the CPU tier (make claims) within 10 minutes of one core
LONG_CLAIM_BUDGET_S = 1800.0  # the longer CPU tier (claim.tier: long, make claims-long): 30 minutes
SUITE_BUDGET_S = 2700.0       # the whole make claims suite, two claims at a time on 2 cores: 45 minutes wall


def make_target_claims(root=None) -> set[str] | None:
    """``{"<paper>/<claim>"}`` run by the Makefile's per-paper targets (``experiment=<paper>/<claim>``); None
    without a Makefile (follow-up experiments are not part of a paper's claim check)."""
    import re

    makefile = Path(root or ROOT) / "Makefile"
    if not makefile.exists():
        return None
    return set(re.findall(r"experiment=([\w-]+/[\w-]+)", makefile.read_text()))


def _experiment_claim_value(root: Path, name: str, key: str, depth: int = 0) -> tuple[bool, object]:
    """``(found, value)`` of ``claim.<key>`` as ``experiments/<name>.yaml`` sets it (null included), or as the
    experiment it extends (``defaults: - /experiment/<name>``) does; ``(False, None)`` when neither says."""
    import yaml

    path = root / "experiments" / f"{name}.yaml"
    if depth > 4 or not path.exists():
        return False, None
    cfg = yaml.safe_load(path.read_text()) or {}
    claim = cfg.get("claim") or {}
    if key in claim:
        return True, claim[key]
    for entry in cfg.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith("/experiment/"):
            found = _experiment_claim_value(root, entry[len("/experiment/"):], key, depth + 1)
            if found[0]:
                return found
    return False, None


def _experiment_tier(root: Path, name: str) -> str | None:
    """``claim.tier`` as ``experiments/<name>.yaml`` (or the experiment it extends) sets it; None when neither says."""
    found, tier = _experiment_claim_value(root, name, "tier")
    return str(tier) if found and tier is not None else None


def _tier(res: dict, paper: str, claim_file: str, root=None) -> str:
    """The claim's tier, "long" or "cpu": as its experiment config says now (a claim moved between tiers after
    its run), else as its committed run's config said (``claim.tier``)."""
    tier = _experiment_tier(_root(root), f"{paper}/{claim_file}")
    if tier is None:
        tier = ((res.get("config") or {}).get("claim") or {}).get("tier", "")
    return "long" if str(tier) == "long" else "cpu"


def superseded_by(name: str, root=None) -> str | None:
    """The claim that supersedes experiment ``<paper>/<claim>`` (``claim.superseded_by`` in its config or the one
    it extends; ``null`` there: current), or None."""
    found, by = _experiment_claim_value(_root(root), name, "superseded_by")
    return str(by) if found and by else None


def claim_suite(paper: str, claim_file: str, res: dict | None = None, root=None) -> str:
    """The suite that re-runs a claim: ``superseded`` (``make claims-superseded``), else its tier (``cpu``: ``make
    claims``, ``long``: ``make claims-long``). The one answer for the report and for tests/test_claims.py."""
    if superseded_by(f"{paper}/{claim_file}", root):
        return "superseded"
    return _tier(res or {}, paper, claim_file, root)


SUITE_TARGETS = (("cpu", "make claims"), ("long", "make claims-long"), ("superseded", "make claims-superseded"))


def claim_times_md(root=None) -> str:
    """The claim suites' time budgets: each committed result's recorded wall time against its tier's budget
    (10 minutes for ``make claims``, 30 for ``make claims-long``), and per suite the total and the least wall
    time two claims at a time could take (half the total, or the longest claim) - from the recorded times, not
    a measurement of the suite."""
    suites = [k for k, _ in SUITE_TARGETS]
    rows, totals, longest, total_all = [], dict.fromkeys(suites, 0.0), dict.fromkeys(suites, 0.0), 0.0
    untimed = dict.fromkeys(suites, 0)
    targets = make_target_claims(root)
    for paper in papers(root):
        for f, res in load_results(paper, root):
            wall = res.get("wall_time_s")
            if not isinstance(wall, (int, float)):
                continue
            claim = res.get("claim") or f.stem
            in_make = targets is None or f"{paper}/{f.stem}" in targets
            tier, suite = _tier(res, paper, f.stem, root), claim_suite(paper, f.stem, res, root)
            label = tier + (", superseded" if suite == "superseded" else "")
            # a final run over an earlier run's folder: its reused stages are not timed again (recorded by
            # claims.finish as ``reused_stages``; older records: a short run pointed at an old folder)
            reused = bool(res.get("reused_stages")) or ("hydra.run.dir=" in str(res.get("command", "")) and wall < 120)
            if reused:
                untimed[suite] += int(in_make)
                rows.append(f"| {paper} | {claim} | {label if in_make else 'follow-up'} | ({wall / 60:.1f}) | "
                            f"not timed: reused cached stages of an earlier run | | {(res.get('date') or '?')[:10]} |")
                continue
            total_all += float(wall)
            if in_make:
                totals[suite] += float(wall)
                longest[suite] = max(longest[suite], float(wall))
                budget = LONG_CLAIM_BUDGET_S if tier == "long" else CLAIM_BUDGET_S
                verdict = f"≤ {budget / 60:.0f}: " + ("**over**" if wall > budget else "ok")
            else:
                verdict = "follow-up (no budget)"
            rows.append(f"| {paper} | {claim} | {label if in_make else 'follow-up'} | {wall / 60:.1f} | {verdict} | "
                        f"{_compute_note(res.get('compute'))} | {(res.get('date') or '?')[:10]} |")
    if not rows:
        return ""
    head = [
        "## Claim-suite wall times\n",
        "Wall time each committed result recorded (`wall_time_s` in its results.json), against its tier's budget: "
        "10 minutes of one core for the claim checks `make claims` runs, 30 for the longer tier (`claim.tier: long`, "
        "`make claims-long`). Runs that shared the 2-core machine with other jobs overstate a quiet "
        "machine's times; a run pinned to one core with one thread (`ran on`) "
        "gives an upper bound for two. The suite totals below are sums of these records, not a timing of the "
        "suite: `make claims` re-times it and writes `outputs/claims/timings.json`.\n",
        "Follow-up experiments (longer budgets, sweeps) are not part of a paper's `make` target and are not held "
        "to a budget. First designs a later claim of the same paper supersedes (`claim.superseded_by`; tier "
        "`..., superseded`) keep their tier's budget and re-run in `make claims-superseded`, not in `make claims` "
        "or `make claims-long`.\n",
        "| paper | claim | tier | wall (min) | budget (min) | ran on | date |",
        "|---|---|---|---|---|---|---|",
    ]
    tail = []
    for suite, target in SUITE_TARGETS:
        least = max(totals[suite] / 2, longest[suite])
        note = (f"two at a time ≥ {least / 60:.1f} min"
                + (f" ({'within' if least <= SUITE_BUDGET_S else '**over**'} the {SUITE_BUDGET_S / 60:.0f}-min "
                   f"suite budget)" if suite == "cpu" else "")
                + (f"; {untimed[suite]} claim(s) not timed (reused stages)" if untimed[suite] else ""))
        tail.append(f"| **total** | `{target}`: the recorded times summed | {suite} | **{totals[suite] / 60:.1f}** | "
                    f"{note} | | |")
    tail.append(f"| total | every timed result (with follow-ups) | | {total_all / 60:.1f} | | | |")
    return "\n".join(head + rows + tail) + "\n"


def suite_run_md(root=None) -> str:
    """The newest measured ``make claims`` run kept as evidence (``docs/measurements/claims_suite_*.json``, written by
    ``python -m tools.claims_record``): its wall time against the 45-minute budget, and per claim the wall time,
    the outcome against the committed evidence and how far the re-run's numbers are from the committed ones. One
    record per suite (``suite`` in the record): ``make claims`` (none), ``make claims-long`` / ``-superseded``, and
    the parts the CPU tier was run in until 2026-12-05 (``image`` / ``video`` / ``control``)."""
    newest: dict[str, Path] = {}   # per suite
    for f in sorted((_root(root) / "docs" / "measurements").glob("claims_suite_*.json")):
        newest[json.loads(f.read_text()).get("suite") or ""] = f
    if not newest:
        return ""
    lines = ["## Claim suite, measured\n"]
    for suite in sorted(newest, key=lambda k: (k != "", k)):
        lines += _suite_record_md(newest[suite], root)
    return "\n".join(lines) + "\n"


def _suite_record_md(f: Path, root=None) -> list[str]:
    from tools.claims_record import is_stage, test_name

    rec = json.loads(f.read_text())
    s = rec.get("summary") or {}
    wall = float(rec.get("suite_wall_s", 0.0))
    rev = str((rec.get("git") or {}).get("revision", "?"))[:7]
    suite = rec.get("suite")
    target = f"make claims-{suite}" if suite else "make claims"
    with_old = any(superseded_by(test_name(t), root) for t in rec.get("claims", {}) if not is_stage(t))
    scope = {None: " (the CPU tier, with the first designs that now run in `make claims-superseded`)" if with_old
             else " (the CPU tier's current claims)",
             "long": " (the longer tier)", "superseded": " (the superseded first designs)"}.get(
        suite, f" (the {suite} part of the CPU tier, a target until 2026-12-05)")
    budget = (f" ({'within' if wall <= SUITE_BUDGET_S else '**over**'} the {SUITE_BUDGET_S / 60:.0f}-min budget)"
              if suite not in ("long", "superseded") else "")
    lines = [
        f"`{target}`{scope} at revision {rev} on {rec.get('cpus', '?')} CPUs, {rec.get('parallel_workers', '?')} "
        f"claims at a time with one thread each, {str(rec.get('date', '?'))[:10]} "
        f"([record]({f.relative_to(_root(root))})): "
        f"**{wall / 60:.1f} min wall**{budget}; {s.get('claims', '?')} claims summing to "
        f"{float(s.get('claims_s', 0)) / 60:.1f} min and {s.get('stages', '?')} shared stages to "
        f"{float(s.get('stages_s', 0)) / 60:.1f} min. Outcome: every check as the committed evidence has it (pass or "
        f"known failure) or not. Drift: the re-run's numbers against the committed results.json, timings left out; "
        f"{s.get('bit_identical', '?')} of {s.get('with_drift', '?')} claims bit for bit.\n",
        "| test | wall (min) | outcome vs evidence | numbers identical | largest relative difference |",
        "|---|---|---|---|---|",
    ]
    for test, r in rec.get("claims", {}).items():
        name = test_name(test)
        d = r.get("drift")
        same = f"{d['identical']} / {d['compared']}" if d else ""
        worst = (f"{d['max_rel']:.2g} (`{d['worst']}`)" if d and d.get("worst") else ("0" if d else ""))
        outcome = {"passed": "as committed", "failed": "**changed**"}.get(r.get("outcome"), r.get("outcome"))
        if is_stage(test):   # a shared stage: trained for the claims, no evidence of its own
            outcome = "stage trained" if r.get("outcome") == "passed" else f"stage {r.get('outcome')}"
        lines.append(f"| {name} | {float(r['wall_time_s']) / 60:.1f} | {outcome} | {same} | {worst} |")
    return lines + [""]


def _compute_note(compute) -> str:
    """'1 thread / 1 of 2 cores, load 1.9' from a results.json's ``compute`` record (older runs: unknown)."""
    if not isinstance(compute, dict):
        return "not recorded"
    threads, usable, cpus = compute.get("torch_threads"), compute.get("cpus_usable"), compute.get("cpus")
    note = f"{threads} thread{'s' if threads != 1 else ''} / {usable} of {cpus} cores"
    if compute.get("loadavg_15m_at_end") is not None:
        note += f", 15-min load {compute['loadavg_15m_at_end']}"
    return note


# ============================================================================================ gallery
def _experiment_notes(root: Path, paper: str, claim: str) -> str:
    """The comment lines at the top of ``experiments/<paper>/<claim>.yaml`` (what the config reproduces)."""
    f = root / "experiments" / paper / f"{claim}.yaml"
    if not f.exists():
        return ""
    notes = []
    for line in f.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            notes.append(line.lstrip("# ").rstrip())
    return " ".join(notes)


def _paper_summary(root: Path, paper: str) -> str:
    """First paragraph of the paper README after its title (the paper's reference line)."""
    readme = root / "papers" / paper / "README.md"
    if not readme.exists():
        return ""
    for para in re.split(r"\n\s*\n", readme.read_text()):
        p = para.strip()
        if p and not p.startswith(("#", "<!--", "```", "|")):
            return p
    return ""


def _media_of(folder: Path, limit: int = MAX_MEDIA_PER_RUN) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXT + VIDEO_EXT
        and "checkpoints" not in p.parts
        and p.stat().st_size <= MAX_MEDIA_BYTES
    ]
    # top-level figures first, then sample grids of sub-runs; final samples before intermediate ones
    found.sort(key=lambda p: (len(p.relative_to(folder).parts), "final" not in p.name, str(p)))
    return found[:limit]


def latest_runs(root=None) -> dict[tuple[str, str], Path]:
    """Newest run folder under ``outputs/`` of each ``(paper, claim)``, found from its ``results.json``."""
    out_dir = _root(root) / "outputs"
    best: dict[tuple[str, str], tuple[float, Path]] = {}
    if not out_dir.is_dir():
        return {}
    for f in out_dir.rglob("results.json"):
        if "multirun" in f.relative_to(out_dir).parts:
            continue
        try:
            res = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(res, dict) or not res.get("paper"):
            continue
        key = (str(res["paper"]), str(res.get("claim") or f.parent.parent.name))
        m = f.stat().st_mtime
        if key not in best or m > best[key][0]:
            best[key] = (m, f.parent)
    return {k: v[1] for k, v in best.items()}


def _newest(folder: Path) -> Path | None:
    runs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


class _Assets:
    """Copies media into ``reports/assets`` under unique, URL-safe names."""

    def __init__(self, report_dir: Path):
        self.dir = report_dir / "assets"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.used: set[str] = set()

    def add(self, src: Path, prefix: str) -> str:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}__{src.name}")
        stem, suf, i = name[: -len(src.suffix)] if src.suffix else name, src.suffix, 1
        while name in self.used:
            name, i = f"{stem}_{i}{suf}", i + 1
        self.used.add(name)
        shutil.copyfile(src, self.dir / name)
        return f"assets/{name}"


def _figure(url: str, caption: str, legend: str = "") -> str:
    cap = html.escape(caption)
    leg = f'<div class="legend">{html.escape(legend)}</div>' if legend else ""
    if url.lower().endswith(VIDEO_EXT):
        el = (
            f'<video src="{html.escape(url)}" muted autoplay loop playsinline controls preload="auto" '
            f'onloadeddata="vdpMark(this, true)" onerror="vdpMark(this, false)"></video>'
        )
    else:
        el = (
            f'<img src="{html.escape(url)}" alt="{cap}" loading="eager" '
            f'onload="vdpMark(this, true)" onerror="vdpMark(this, false)">'
        )
    return f"<figure>{el}<figcaption>{leg}{cap}</figcaption></figure>"


def _html_table(header: list[str], rows: list[list[str]], cls: str = "results") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} .meta{color:#666;font-size:.85em} code{background:#f4f4f4;padding:0 .2em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0} .media{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;width:340px}
figure img,figure video{width:340px;height:auto;image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:.75em;color:#555;word-break:break-all} .legend{color:#222;word-break:normal;margin:.2em 0}
.note{background:#f7f7f0;border-left:4px solid #cc9;padding:.4em .8em;font-size:.9em}
#media-status{color:#888;font-size:.8em}
"""

SCRIPT = """
function vdpMark(el, ok) {
  if (el.dataset.status) return;
  el.dataset.status = ok ? "loaded" : "failed";
  vdpSummary();
}
function vdpSummary() {
  var all = document.querySelectorAll("img, video");
  var s = {total: all.length, loaded: 0, failed: 0, pending: 0};
  all.forEach(function (e) {
    var st = e.dataset.status;
    if (st === "loaded") s.loaded++; else if (st === "failed") s.failed++; else s.pending++;
  });
  var box = document.getElementById("media-status");
  if (box) { box.textContent = JSON.stringify(s); box.dataset.done = s.pending === 0 ? "1" : "0"; }
}
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("img").forEach(function (e) {
    if (e.complete && !e.dataset.status) vdpMark(e, e.naturalWidth > 0);
  });
  document.querySelectorAll("video").forEach(function (e) {
    if (e.readyState >= 2 && !e.dataset.status) vdpMark(e, true);
    if (e.error && !e.dataset.status) vdpMark(e, false);
  });
  vdpSummary();
});
"""


# What the rows and columns of each kind of committed figure mean (the claim pipelines' file names), shown under
# the figure. Regex on the file name -> legend; the first match wins.
LEGENDS = [
    (r"samples_S(\d+)_eta=(\d+(?:\.\d+)?)", "DDIM, S={0} steps, eta={1}: 64 independent samples, 8 per row"),
    (r"samples_S(\d+)_sigma_hat", "DDIM, S={0} steps with sigma-hat (the larger DDPM variance): 64 samples, 8 per row"),
    (r"interpolation\.png", "each row one pair of noise tensors; columns: slerp weight 0 -> 1 in x_T, decoded by DDIM "
                            "(eta = 0)"),
    (r"samples_(simple|vlb)", "DDPM trained with L_{0}, 1000 ancestral steps: 64 samples, 8 per row"),
    (r"(?:teacher_ddim|cd|ct|pd|student)_(\d+)step", "{0} network evaluation(s) per sample: 64 samples, 8 per row"),
    (r"samples_w(\d+(?:\.\d+)?)", "guidance scale w = {0}: column k = class k (labels 0-9 cycle along each row of 10)"),
    (r"samples_([A-Z]+\d+)", "DiT-{0} samples, column k = class k"),
    (r"one_step_samples", "one Euler step each; rows: 1-RF, 2-RF (reflow), 2-RF + distillation, DDPM-DDIM"),
    (r"grid_(\w+)\.png", "{0}: one sample per cell, column = class"),
    (r"extension_(reconstruction|replacement)", "top row: the given videos (frames the model sees); bottom row: "
                                                "extended with {0} guidance, one video per column"),
    (r"samples_(joint|video_only|pixel|pvdm)", "{0}: one generated video per cell"),
    (r"autoencoder_reconstruction", "top row: input videos; bottom row: their autoencoder reconstructions"),
    (r"per_frame_vs_video", "top row: frames sampled independently (image model); bottom row: the video model"),
    (r"style_per_frame_vs_transfer", "top row: personalised image model per frame; bottom row: with the transferred "
                                     "temporal layers"),
    (r"decoder_real_frame_temporal", "rows: real videos; per-frame decoder; temporal (video-finetuned) decoder"),
    (r"moving_digits_claim(?:_long)?_grid\.gif", "first row: base model + motion module; then per domain and "
                                                 "method per-frame vs motion-module rows; last: MotionLoRA"),
    (r"trajectories", "Euler paths from noise (black) to samples (red) over the target (green)"),
]


def legend_of(name: str) -> str:
    """The legend of a figure from its file name (``LEGENDS``), or ``""``."""
    for pattern, text in LEGENDS:
        m = re.search(pattern, name)
        if m:
            return text.format(*m.groups())
    return ""


def md_inline(text: str) -> str:
    """Escape ``text`` for HTML and render its inline markdown: ``[label](url)`` links, ``code``, **bold**."""
    out = html.escape(text)
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",
                 lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def seminar_order(root=None) -> list[str]:
    """Papers in the order of the top README's paper table (the seminar's order); others after, by name."""
    readme = _root(root) / "README.md"
    listed = re.findall(r"\(papers/([\w-]+)/README\.md\)", readme.read_text()) if readme.exists() else []
    names = papers(root)
    ordered = [p for p in dict.fromkeys(listed) if p in names]
    return ordered + sorted(p for p in names if p not in ordered)


def claim_figures(folder: Path, claim: str) -> list[Path]:
    """Committed figures of ``claim`` in a results folder: ``<claim>_*`` files that are not another, longer
    claim's (``digits_claim_budget_*`` belongs to ``digits_claim_budget``, not to ``digits_claim``)."""
    others = [f.stem for f in folder.glob("*.json") if f.stem != claim and f.stem.startswith(claim + "_")]
    out = []
    for p in sorted(folder.glob(f"{claim}_*")):
        if p.suffix.lower() not in IMAGE_EXT + VIDEO_EXT:
            continue
        if any(p.name.startswith(o + "_") for o in others):
            continue
        out.append(p)
    return out


def _claim_section(
    root: Path, paper: str, f: Path | None, res: dict, run: Path | None, assets: _Assets
) -> str:
    claim = str(res.get("claim") or (f.stem if f else "?"))
    parts = [
        f'<section class="claim" id="{html.escape(paper)}--{html.escape(claim)}">',
        f"<h3>{html.escape(claim)}</h3>",
    ]
    notes = _experiment_notes(root, paper, claim)
    if notes:
        parts.append(f'<p class="notes">{html.escape(notes)}</p>')
    rows = rows_of(res)
    if rows:
        parts.append(
            _html_table(["measure", "paper", "ours"], [[r["label"], r["paper"], r["ours"]] for r in rows])
        )
    expected = (res.get("config") or {}).get("expected")
    if expected:
        parts.append(f'<p class="meta">expected: <code>{html.escape(json.dumps(expected))}</code></p>')
    parts.append(
        f'<p class="meta">command <code>{html.escape(str(res.get("command", "?")))}</code> · '
        f"rev {html.escape(revision(res))} · {html.escape(str(res.get('date', '?'))[:10])} · "
        f"wall {html.escape(fmt(res.get('wall_time_s')))} s · seeds {html.escape(str(res.get('seeds')))}</p>"
    )
    figures = []
    if f is not None:  # committed plots beside the committed json: <claim>_*.png (not a follow-up's)
        for p in claim_figures(f.parent, claim):
            figures.append(_figure(assets.add(p, f"{paper}_committed"), f"papers/{paper}/results/{p.name}",
                                   legend_of(p.name)))
    if run is not None:
        for p in _media_of(run):
            rel = p.relative_to(root) if p.is_relative_to(root) else p
            figures.append(_figure(assets.add(p, f"{paper}_{claim}"), str(rel), legend_of(p.name)))
    if figures:
        parts.append('<div class="media">' + "".join(figures) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _demo_section(root: Path, assets: _Assets) -> str:
    run = _newest(root / "outputs" / "demo")
    if run is None:
        return ""
    parts = [
        '<section id="demo"><h2>Demo (<code>make demo</code>)</h2>',
        f'<p class="meta">{html.escape(str(run.relative_to(root)))}</p>',
    ]
    summary = run / "summary.json"
    if summary.exists():
        try:
            rows = json.loads(summary.read_text()).get("rows", [])
            parts.append(_html_table(["step", "result"], [list(r) for r in rows]))
        except (json.JSONDecodeError, OSError, AttributeError):
            pass
    figs = [_figure(assets.add(p, "demo"), str(p.relative_to(run))) for p in _media_of(run, 40)]
    if figs:
        parts.append('<div class="media">' + "".join(figs) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _sweeps_section(root: Path, assets: _Assets) -> str:
    base = root / "outputs" / "multirun"
    summaries = sorted(base.rglob("summary.json")) if base.is_dir() else []
    if not summaries:
        return ""
    parts = ['<section id="sweeps"><h2>Sweeps (Hydra multiruns)</h2>']
    for s in summaries:
        try:
            data = json.loads(s.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        parts.append(f"<h3>{html.escape(str(s.parent.relative_to(root)))}</h3>")
        parts.append(_html_table(data["columns"], [[fmt(c) for c in r] for r in data["rows"]], cls="sweep"))
        png = s.parent / "summary.png"
        if png.exists():
            parts.append(
                '<div class="media">'
                + _figure(assets.add(png, "sweep"), str(png.relative_to(root)))
                + "</div>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def floor_note(root) -> str:
    """The gallery's note on FD_judge's real-vs-real floor, with its sampling spread measured now
    (:func:`shared.metrics.judge.real_floor_spread`); only for this project's own tree (it needs the judge)."""
    if Path(root).resolve() != ROOT.resolve():
        return ""
    from shared.metrics.judge import real_floor_spread

    s = real_floor_spread()
    return ('<p class="note"><b>Reading FD_judge.</b> The "real vs real (floor)" rows compare two fixed halves of '
            f"the held-out digits: {s['fixed']:.2f}. That is one draw of a noisy estimate: over {s['draws']} random "
            f"disjoint splits of the same size (n = {s['n']}) the floor is {s['mean']:.2f} ± {s['std']:.2f} "
            f"(5-95 %: {s['q05']:.2f}-{s['q95']:.2f}). A model's FD_judge from as many samples has the same "
            "finite-sample error, so a value inside that band (for example 1.16, below the committed 1.43) means "
            "<i>indistinguishable from real digits at this sample size</i>, not better than real data.</p>")


def build_gallery(root=None, out_dir=None) -> Path:
    """Write ``<root>/reports/index.html`` (and its ``assets/``); returns the path of the page."""
    root = _root(root)
    report_dir = Path(out_dir) if out_dir else root / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    assets = _Assets(report_dir)
    runs = latest_runs(root)
    sections, nav = [], []
    names = seminar_order(root) + sorted({p for p, _ in runs} - set(papers(root)))
    for paper in names:
        committed = load_results(paper, root)
        claims_done = set()
        body = []
        for f, res in committed:
            claim = str(res.get("claim") or f.stem)
            claims_done.add(claim)
            body.append(_claim_section(root, paper, f, res, runs.get((paper, claim)), assets))
        for (p, claim), run in sorted(runs.items()):  # local runs whose results are not committed (yet)
            if p != paper or claim in claims_done:
                continue
            try:
                res = json.loads((run / "results.json").read_text())
            except (json.JSONDecodeError, OSError):
                continue
            body.append(_claim_section(root, paper, None, res, run, assets))
        if not body:
            body.append("<p><em>No results yet.</em></p>")
        summary = _paper_summary(root, paper)
        nav.append(f'<a href="#{html.escape(paper)}">{html.escape(paper)}</a>')
        sections.append(
            f'<section class="paper" id="{html.escape(paper)}"><h2>{html.escape(paper)}</h2>'
            + (f"<p>{md_inline(summary)}</p>" if summary else "")
            + "\n".join(body)
            + "</section>"
        )
    demo = _demo_section(root, assets)
    sweeps = _sweeps_section(root, assets)
    if demo:
        nav.insert(0, '<a href="#demo">demo</a>')
    if sweeps:
        nav.append('<a href="#sweeps">sweeps</a>')
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>video-diffusion-papers — results gallery</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        "<h1>video-diffusion-papers — results gallery</h1>"
        '<p class="meta">Generated by <code>make report</code> / <code>make gallery</code> from '
        "<code>papers/*/results/*.json</code> and the newest runs under <code>outputs/</code>. "
        '<span id="media-status">{}</span></p>'
        f"<nav>{''.join(nav)}</nav>{floor_note(root)}{demo}{''.join(sections)}{sweeps}</body></html>\n"
    )
    index = report_dir / "index.html"
    index.write_text(page)
    return index


# ============================================================================================ multirun
def _flatten(metrics, prefix="") -> dict:
    """Numeric leaves of a metrics dict (``{mean, std, ...}`` summaries collapse to their mean)."""
    out = {}
    if isinstance(metrics, dict) and "mean" in metrics and isinstance(metrics["mean"], (int, float)):
        return {prefix: float(metrics["mean"])}
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
        out[prefix] = float(metrics)
    return out


def _csv_metrics(job: Path) -> dict:
    """Last logged value of every column of the job's Lightning ``metrics.csv`` (CSVLogger)."""
    out = {}
    for f in sorted(job.rglob("metrics.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if k in ("epoch",) or v in (None, ""):
                        continue
                    try:
                        out[k] = float(v)
                    except ValueError:
                        pass
    return out


def _overrides(job: Path) -> dict:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return {}
    import yaml

    out = {}
    for item in yaml.safe_load(f.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _job_dirs(folder: Path) -> list[Path]:
    jobs = [
        p
        for p in folder.iterdir()
        if p.is_dir()
        and ((p / ".hydra").is_dir() or (p / "results.json").exists() or any(p.rglob("metrics.csv")))
    ]
    return sorted(jobs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _metric_rank(name: str) -> tuple:
    """Column order: the experiment's report rows (kept in their order), then logged losses, validation
    values, other values, learning rates, step/epoch counters, and the wall time last."""
    order = [("train/", 1), ("val/", 2), ("lr-", 4), ("step", 5), ("epoch", 5), ("wall_time_s", 6)]
    for prefix, rank in order:
        if name == prefix or name.startswith(prefix):
            return (rank,)
    return (3,)


def aggregate_multirun(folder, metrics: list[str] | None = None, plot_metric: str | None = None) -> dict:
    """One table (and a plot) of a Hydra multirun folder: a row per job, its swept overrides and its metrics.

    Metrics come from each job's ``results.json`` (the report rows of its config, by label, in the config's
    order, else every numeric leaf) or, without one, from the last values of its ``metrics.csv``. Every metric
    is a column unless ``metrics`` names some (unknown names are an error listing the known ones); the first
    of ``metrics`` (or ``plot_metric``) is plotted, up to four side by side. Writes ``summary.{md,csv,json,png}``
    in ``folder`` and returns ``{"columns", "rows", "swept", "metrics", "plot"}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"multirun folder not found: {folder}")
    jobs = _job_dirs(folder)
    if not jobs:
        raise FileNotFoundError(
            f"{folder} holds no Hydra job folders (0/, 1/, ... with .hydra/ or results.json)"
        )
    records, report_order, extra_keys = [], {}, set()
    for job in jobs:
        res_f, values = job / "results.json", {}
        if res_f.exists():
            try:
                res = json.loads(res_f.read_text())
            except json.JSONDecodeError:
                res = {}
            rows = (res.get("config") or {}).get("report") or []
            covered = {row["metric"] for row in rows}
            for row in rows:
                report_order.setdefault(row.get("label", row["metric"]), len(report_order))
                try:
                    v = lookup(res.get("metrics", {}), row["metric"])
                except KeyError:
                    continue
                v = v.get("mean") if isinstance(v, dict) else v
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values[row.get("label", row["metric"])] = float(v)
            # every other numeric metric too, by its dotted path (a sweep over structure, e.g. reflow rounds,
            # adds metrics the report rows do not name: they must not vanish)
            extra = {k: v for k, v in _flatten(res.get("metrics", {})).items() if k not in covered}
            values.update({k: v for k, v in extra.items() if k not in values})
            extra_keys.update(extra)
            if res.get("wall_time_s") is not None:
                values.setdefault("wall_time_s", float(res["wall_time_s"]))
        else:
            values = _csv_metrics(job)
        records.append({"job": job.name, "overrides": _overrides(job), "values": values})
    keys = list(dict.fromkeys(k for r in records for k in r["overrides"]))
    swept = [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1] or keys
    names = list(dict.fromkeys(k for r in records for k in r["values"]))
    names = [n for _, n in sorted(enumerate(names), key=lambda t: (
        (0, report_order[t[1]]) if t[1] in report_order else (*_metric_rank(t[1]), t[0])))]
    if metrics:
        unknown = [m for m in metrics if m not in names]
        if unknown:
            raise KeyError(f"metric(s) {unknown} not in this sweep; it has {names}")
    # default columns: the report rows, metrics that some jobs have and others lack, logged values, wall time;
    # metrics outside the report rows that every job has are listed as not shown (pick them with --metric)
    structural = {k for k in extra_keys if any(k not in r["values"] for r in records)}
    default = [n for n in names if n not in extra_keys or n in structural or not report_order]
    chosen = list(metrics) if metrics else default
    not_shown = [] if metrics else [n for n in names if n not in default]
    columns = ["job", *swept, *chosen]
    rows = [
        [
            r["job"],
            *[r["overrides"].get(k, "") for k in swept],
            *[r["values"].get(m, float("nan")) for m in chosen],
        ]
        for r in records
    ]
    summary = {
        "folder": str(folder),
        "columns": columns,
        "rows": rows,
        "swept": swept,
        "metrics": chosen,
        "not_shown": not_shown,
        "plot": None,
    }

    with open(folder / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    md = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_md_cell(fmt(c)) for c in r) + " |" for r in rows]
    note = ""
    if not_shown:
        note = (f"\n{len(not_shown)} further metrics (in every job's results, outside the report rows) are "
                f"not columns; `--metric NAME ...` shows any of them: {', '.join(not_shown)}\n")
    (folder / "summary.md").write_text(f"# Sweep {folder}\n\n" + "\n".join(md) + "\n" + note)

    targets = [plot_metric] if plot_metric else (list(metrics)[:4] if metrics else chosen[:1])
    targets = [t for t in targets if t in chosen]
    if targets:
        summary["plot"] = str(_plot_sweep(folder / "summary.png", records, swept, targets))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _plot_sweep(path: Path, records: list[dict], swept: list[str], metrics: list[str]) -> Path:
    """Each of ``metrics`` (one panel each) against the first swept key, one line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = swept[0] if swept else None
    xs_raw = [r["overrides"].get(x_key, r["job"]) if x_key else r["job"] for r in records]
    numeric = all(_num(v) is not None for v in xs_raw)
    cats = list(dict.fromkeys(xs_raw))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups: dict[str, list[tuple[float, float]]] = {}
        for r, xr in zip(records, xs_raw):
            label = ", ".join(f"{k}={r['overrides'].get(k)}" for k in swept[1:]) or metric
            x = _num(xr) if numeric else cats.index(xr)
            groups.setdefault(label, []).append((x, r["values"].get(metric, float("nan"))))
        for label, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if not numeric:
            ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=20, fontsize=8)
        ax.set_xlabel(x_key or "job")
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(f"{metric} over the sweep", fontsize=9)
        if len(groups) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", help="only this paper's README")
    ap.add_argument("--root", default=None, help="project tree to read and write (default: this checkout)")
    ap.add_argument("--gallery", action="store_true", help="only (re)build reports/index.html")
    ap.add_argument("--no-gallery", action="store_true", help="skip the HTML gallery")
    ap.add_argument(
        "--multirun", metavar="FOLDER", help="aggregate a Hydra multirun folder into one table + plot"
    )
    ap.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        default=None,
        help="with --multirun: metric columns to keep (--metric A B, or --metric A --metric B); "
        "default every metric; the first ones are plotted",
    )
    args = ap.parse_args(argv)
    root = _root(args.root)
    if args.multirun:
        try:
            s = aggregate_multirun(args.multirun, metrics=args.metric)
        except (FileNotFoundError, KeyError) as e:
            raise SystemExit(f"error: {str(e).strip(chr(34) + chr(39))}") from None
        print((Path(args.multirun) / "summary.md").read_text())
        print(f"plot: {s['plot']}")
        return
    if args.gallery:
        print(f"wrote {build_gallery(root)}")
        return
    targets = [args.paper] if args.paper else papers(root)
    for p in targets:
        if update_readme(p, root):
            print(f"updated papers/{p}/README.md")
    if not args.paper:
        (root / "RESULTS.md").write_text(results_md(root))
        print("wrote RESULTS.md")
        if not args.no_gallery:
            print(f"wrote {build_gallery(root)}")


if __name__ == "__main__":
    main()
