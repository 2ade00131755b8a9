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

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
IMAGE_EXT, VIDEO_EXT = (".png", ".jpg", ".jpeg", ".gif", ".svg"), (".mp4", ".webm")
MAX_MEDIA_BYTES = 8 * 2**20  # larger files are not copied into the gallery
MAX_MEDIA_PER_RUN = 24


def _root(root) -> Path:
    return Path(root) if root is not None else ROOT


def lookup(metrics: dict, dotted: str):
    """Follow a dotted path; keys may themselves contain dots (``fd_judge.eta=0.0.10``), so match greedily."""
    node, rest = metrics, dotted
    while rest:
        if not isinstance(node, dict):
            raise KeyError(dotted)
        for k in sorted(node, key=len, reverse=True):
            if rest == k or rest.startswith(k + "."):
                node, rest = node[k], rest[len(k) + 1 :]
                break
        else:
            raise KeyError(dotted)
    return node


def fmt(v) -> str:
    if isinstance(v, dict) and "mean" in v:
        n = len(v.get("per_seed", [])) or 1
        return f"{fmt(v['mean'])} ± {fmt(v.get('std', 0.0))} (n={n})" if n > 1 else fmt(v["mean"])
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


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


def paper_table(paper: str, root=None) -> str:
    lines = []
    for f, res in load_results(paper, root):
        wall = res.get("wall_time_s")
        lines.append(
            f"**{res.get('claim') or f.stem}** — `{res.get('command', '?')}` "
            f"(rev {revision(res)}, {res.get('date', '?')[:10]}, wall {fmt(wall)} s, "
            f"seeds {res.get('seeds')}; [json](results/{f.name}))"
        )
        lines.append("")
        lines.append("| measure | paper | ours |")
        lines.append("|---|---|---|")
        lines += [f"| {r['label']} | {r['paper']} | {r['ours']} |" for r in rows_of(res)]
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
    return "\n".join(parts)


CLAIM_BUDGET_S = 600.0  # every tier-1 claim check should finish within 10 minutes on 2 cores


def make_target_claims(root=None) -> set[str] | None:
    """``{"<paper>/<claim>"}`` run by the Makefile's per-paper targets (``experiment=<paper>/<claim>``); None
    without a Makefile (follow-up experiments are not part of a paper's claim check)."""
    import re

    makefile = Path(root or ROOT) / "Makefile"
    if not makefile.exists():
        return None
    return set(re.findall(r"experiment=([\w-]+/[\w-]+)", makefile.read_text()))


def claim_times_md(root=None) -> str:
    """The claim suite's time budget: each committed result's recorded wall time and their total, the total
    of the claim checks the ``make <paper>`` targets run, and of follow-up experiments apart."""
    rows, total, total_make = [], 0.0, 0.0
    targets = make_target_claims(root)
    for paper in papers(root):
        for f, res in load_results(paper, root):
            wall = res.get("wall_time_s")
            if not isinstance(wall, (int, float)):
                continue
            # a final run over an earlier run's folder: its reused stages are not timed again (recorded by
            # claims.finish as ``reused_stages``; older records: a short run pointed at an old folder)
            reused = bool(res.get("reused_stages")) or ("hydra.run.dir=" in str(res.get("command", "")) and wall < 120)
            if reused:
                rows.append(f"| {paper} | {res.get('claim') or f.stem} | ({wall / 60:.1f}) | not timed: reused "
                            f"cached stages of an earlier run | {(res.get('date') or '?')[:10]} |")
                continue
            total += float(wall)
            claim = res.get("claim") or f.stem
            in_make = targets is None or f"{paper}/{f.stem}" in targets
            total_make += float(wall) if in_make else 0.0
            over = ("**over**" if wall > CLAIM_BUDGET_S else "ok") if in_make else "follow-up"
            rows.append(f"| {paper} | {claim} | {wall / 60:.1f} | {over} | "
                        f"{_compute_note(res.get('compute'))} | {(res.get('date') or '?')[:10]} |")
    if not rows:
        return ""
    head = [
        "## Claim-suite wall times\n",
        "Wall time each committed result recorded (`wall_time_s` in its results.json), against the 10-minute "
        "per-claim budget. Runs that shared the 2-core machine with other jobs overstate a quiet "
        "machine's times; a run pinned to one core with one thread (`ran on`) "
        "gives an upper bound for two. `make claims` re-times the suite and writes `outputs/claims/timings.json`.\n",
        "Follow-up experiments (longer budgets, sweeps) are not part of a paper's `make` target and are not held "
        "to the 10-minute budget.\n",
        "| paper | claim | wall (min) | ≤ 10 min | ran on | date |",
        "|---|---|---|---|---|---|",
    ]
    tail = [f"| **total** | claim checks of the `make <paper>` targets | **{total_make / 60:.1f}** | "
            f"{'ok' if total_make <= 3600 else '**over 60**'} | | |",
            f"| total | every timed result (with follow-ups) | {total / 60:.1f} | | | |"]
    return "\n".join(head + rows + tail) + "\n"


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


def _figure(url: str, caption: str) -> str:
    cap = html.escape(caption)
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
    return f"<figure>{el}<figcaption>{cap}</figcaption></figure>"


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
figure{margin:0;max-width:380px}
figure img,figure video{max-width:380px;max-height:380px;min-width:160px;image-rendering:pixelated;
border:1px solid #ddd} figcaption{font-size:.75em;color:#555;word-break:break-all}
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
    if f is not None:  # committed plots beside the committed json: <claim>_*.png
        for p in sorted(f.parent.glob(f"{claim}_*")):
            if p.suffix.lower() in IMAGE_EXT + VIDEO_EXT:
                figures.append(
                    _figure(assets.add(p, f"{paper}_committed"), f"papers/{paper}/results/{p.name}")
                )
    if run is not None:
        for p in _media_of(run):
            rel = p.relative_to(root) if p.is_relative_to(root) else p
            figures.append(_figure(assets.add(p, f"{paper}_{claim}"), str(rel)))
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


def build_gallery(root=None, out_dir=None) -> Path:
    """Write ``<root>/reports/index.html`` (and its ``assets/``); returns the path of the page."""
    root = _root(root)
    report_dir = Path(out_dir) if out_dir else root / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    assets = _Assets(report_dir)
    runs = latest_runs(root)
    sections, nav = [], []
    names = sorted(set(papers(root)) | {p for p, _ in runs})
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
            + (f"<p>{html.escape(summary)}</p>" if summary else "")
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
        f"<nav>{''.join(nav)}</nav>{demo}{''.join(sections)}{sweeps}</body></html>\n"
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


def aggregate_multirun(
    folder, metrics: list[str] | None = None, plot_metric: str | None = None, max_metrics: int = 8
) -> dict:
    """One table (and a plot) of a Hydra multirun folder: a row per job, its swept overrides and its metrics.

    Metrics come from each job's ``results.json`` (the report rows of its config, by label, else every numeric
    leaf) or, without one, from the last values of its ``metrics.csv``. Writes ``summary.{md,csv,json,png}``
    in ``folder`` and returns ``{"columns", "rows", "swept", "metrics", "plot"}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"multirun folder not found: {folder}")
    jobs = _job_dirs(folder)
    if not jobs:
        raise FileNotFoundError(
            f"{folder} holds no Hydra job folders (0/, 1/, ... with .hydra/ or results.json)"
        )
    records = []
    for job in jobs:
        res_f, values = job / "results.json", {}
        if res_f.exists():
            try:
                res = json.loads(res_f.read_text())
            except json.JSONDecodeError:
                res = {}
            for row in (res.get("config") or {}).get("report") or []:
                try:
                    v = lookup(res.get("metrics", {}), row["metric"])
                except KeyError:
                    continue
                v = v.get("mean") if isinstance(v, dict) else v
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values[row.get("label", row["metric"])] = float(v)
            if not values:
                values = _flatten(res.get("metrics", {}))
            if res.get("wall_time_s") is not None:
                values.setdefault("wall_time_s", float(res["wall_time_s"]))
        else:
            values = _csv_metrics(job)
        records.append({"job": job.name, "overrides": _overrides(job), "values": values})
    keys = list(dict.fromkeys(k for r in records for k in r["overrides"]))
    swept = [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1] or keys
    names = list(dict.fromkeys(k for r in records for k in r["values"]))
    chosen = list(metrics) if metrics else names[:max_metrics]
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
        "plot": None,
    }

    with open(folder / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    md = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_md_cell(fmt(c)) for c in r) + " |" for r in rows]
    (folder / "summary.md").write_text(f"# Sweep {folder}\n\n" + "\n".join(md) + "\n")

    target = plot_metric or (chosen[0] if chosen else None)
    if target is not None and target in chosen:
        summary["plot"] = str(_plot_sweep(folder / "summary.png", records, swept, target))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _plot_sweep(path: Path, records: list[dict], swept: list[str], metric: str) -> Path:
    """``metric`` against the first swept key, one line per value of the other swept keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = swept[0] if swept else None
    xs_raw = [r["overrides"].get(x_key, r["job"]) if x_key else r["job"] for r in records]
    numeric = all(_num(v) is not None for v in xs_raw)
    cats = list(dict.fromkeys(xs_raw))
    groups: dict[str, list[tuple[float, float]]] = {}
    for r, xr in zip(records, xs_raw):
        label = ", ".join(f"{k}={r['overrides'].get(k)}" for k in swept[1:]) or metric
        x = _num(xr) if numeric else cats.index(xr)
        y = r["values"].get(metric, float("nan"))
        groups.setdefault(label, []).append((x, y))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, pts in groups.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if not numeric:
        ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=20, fontsize=8)
    ax.set_xlabel(x_key or "job")
    ax.set_ylabel(metric)
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
        action="append",
        default=None,
        help="with --multirun: metric column(s) to keep; the first one is plotted",
    )
    args = ap.parse_args(argv)
    root = _root(args.root)
    if args.multirun:
        try:
            s = aggregate_multirun(args.multirun, metrics=args.metric)
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
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
