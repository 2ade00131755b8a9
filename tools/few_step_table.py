"""``make few_step_table``: FD_judge against NFE for every few-step method of the seminar, from committed results.

Reads ``papers/*/results/*.json`` (the evidence files claim checks write) and collects

* ``metrics["fd_vs_nfe"][method][str(nfe)] = {"mean", "std", ...}`` — the convention of the few-step papers
  (knowledge / progressive distillation, consistency models, the rectified-flow family);
* DDPM (``metrics["fd_judge_simple"]`` at the claim's NFE) and DDIM (``metrics["fd_judge"]["eta=0.0"]``)
  from their own claim files when they exist.

Writes one markdown table (``papers/README_few_step.md``) and one plot (``papers/few_step_fd_vs_nfe.png``),
and prints the table. Lower FD_judge is better; the real-vs-real floor is shown for scale. The training budget of each
source (teacher / student steps, batch) is stated next to it, since the methods cannot all share one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _budget(rec: dict) -> str:
    b = rec.get("budget") or {}
    if b:
        keep = {k: v for k, v in b.items() if isinstance(v, (int, float, str)) and k != "teachers"}
        return ", ".join(f"{k}={v}" for k, v in keep.items())
    cfg = rec.get("config") or {}
    steps = (cfg.get("trainer") or {}).get("max_steps")
    batch = (cfg.get("data") or {}).get("batch_size")
    return f"train_steps={steps}, batch_size={batch}" if steps else ""


def _disagrees(have: dict, per_nfe: dict) -> bool:
    """Whether ``per_nfe`` (a results file's curve) differs from the collected curve ``have`` at a shared NFE."""
    for nfe, s in per_nfe.items():
        if isinstance(s, dict) and "mean" in s and str(nfe).isdigit() and int(nfe) in have:
            if abs(have[int(nfe)][0] - float(s["mean"])) > 1e-6 * max(1.0, abs(have[int(nfe)][0])):
                return True
    return False


def collect(root: Path = ROOT) -> tuple[dict, dict, list]:
    """``(curves, sources, floors)``: curves[method][nfe] = (mean, std, n_seeds); sources[method] = (file, budget)."""
    curves: dict = {}
    sources: dict = {}
    floors: list = []
    disagreements: list = []
    for path in sorted((root / "papers").glob("*/results/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        m = rec.get("metrics") or {}
        rel = str(path.relative_to(root))
        if isinstance(m.get("fd_judge_real_floor"), (int, float)):
            floors.append(float(m["fd_judge_real_floor"]))
        found: dict = {}
        if isinstance(m.get("fd_vs_nfe"), dict):
            found = m["fd_vs_nfe"]
        elif rec.get("paper") == "ddpm" and isinstance(m.get("fd_judge_simple"), dict):
            found = {"DDPM (ancestral)": {str(rec.get("nfe", 1000)): m["fd_judge_simple"]}}
        elif rec.get("paper") == "ddim" and isinstance(m.get("fd_judge"), dict) and "eta=0.0" in m["fd_judge"]:
            found = {"DDIM (eta=0, DDPM model)": m["fd_judge"]["eta=0.0"]}
        for method, per_nfe in found.items():
            if not isinstance(per_nfe, dict):
                continue
            if method in sources and rel not in sources[method][0] and _disagrees(curves.get(method, {}), per_nfe) \
                    and any(s.startswith(f"papers/{path.parent.parent.name}/") for s in sources[method][0].split(", ")):
                # a second protocol of the same paper (e.g. a follow-up at another budget): its own row
                method = f"{method} [{rec.get('claim') or path.stem}]"
            if method in sources and rel not in sources[method][0]:
                # the same method in a second file (e.g. the shared EDM teacher's DDIM in three papers): merge
                # the NFEs it adds; where both have an NFE keep the first and record any disagreement
                sources[method] = (sources[method][0] + f", {rel}", sources[method][1])
            elif method not in sources:
                sources[method] = (rel, _budget(rec))
            for nfe, s in per_nfe.items():
                if not (isinstance(s, dict) and "mean" in s):
                    continue
                if not str(nfe).isdigit():  # e.g. rectified flow's "adaptive" (RK45) entry carries its own NFE
                    if "nfe" not in s:
                        continue
                    nfe = int(round(float(s["nfe"] if not isinstance(s["nfe"], dict) else s["nfe"]["mean"])))
                val = (float(s["mean"]), float(s.get("std", 0.0)), len(s.get("per_seed", [])) or None)
                have = curves.setdefault(method, {}).get(int(nfe))
                if have is None:
                    curves[method][int(nfe)] = val
                elif abs(have[0] - val[0]) > 1e-6 * max(1.0, abs(have[0])):
                    disagreements.append(f"{method} at NFE {nfe}: {have[0]:.4g} vs {val[0]:.4g} ({rel})")
    if disagreements:
        sources["_disagreements"] = ("; ".join(disagreements), "")
    return curves, sources, floors


def markdown(curves: dict, sources: dict, floors: list, spread: dict | None = None) -> str:
    nfes = sorted({n for c in curves.values() for n in c})
    lines = ["# Few-step sampling: FD_judge against NFE (8x8 digits)", "",
             "Generated by `make few_step_table` (`python -m tools.few_step_table`) from the committed "
             "`papers/*/results/*.json`; mean ± std over the seeds each claim ran. FD_judge is the Fréchet distance of "
             "the digits judge's features (not FID); lower is better.", ""]
    if floors:
        lines.append(f"Real-vs-real floor (two held-out halves): {min(floors):.2f}.")
        lines.append("")
    if spread:
        lines.append(f"That floor is one split of the held-out digits; over {spread['draws']} random disjoint "
                     f"splits of the same size (n = {spread['n']}) it is {spread['mean']:.2f} ± {spread['std']:.2f} "
                     f"(5-95 %: {spread['q05']:.2f}-{spread['q95']:.2f}; `shared.metrics.judge.real_floor_spread`). "
                     "A model's FD_judge carries the same finite-sample error, so values inside that band — below "
                     "the committed 1.43 too — mean \"indistinguishable from real digits at this sample size\", "
                     "not \"better than real data\". The band is drawn in the plot.")
        lines.append("")
    if not curves:
        return "\n".join(lines + ["No results with `fd_vs_nfe` found yet."]) + "\n"
    lines.append("| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    lines.append("|---|" + "---|" * len(nfes))
    for method in sorted(curves, key=lambda k: min(curves[k])):
        cells = []
        for n in nfes:
            v = curves[method].get(n)
            cells.append(f"{v[0]:.2f} ± {v[1]:.2f}" if v else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if "_disagreements" in sources:
        lines += ["", f"Note: the same method and NFE differ between files: {sources['_disagreements'][0]}"]
    lines += ["", "| method | source | training budget |", "|---|---|---|"]
    for method in sorted(curves, key=lambda k: min(curves[k])):
        src, budget = sources[method]
        lines.append(f"| {method} | `{src}` | {budget} |")
    return "\n".join(lines) + "\n"


def _style(methods: list[str]) -> dict:
    """A distinct colour per method (tab20), and per paper one marker and line style, so 19 curves stay apart."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    markers, lines = "osD^v<>Ph*X", ["-", "--", "-.", ":"]
    out = {}
    for i, m in enumerate(methods):
        out[m] = {"color": cmap(i % 20), "marker": markers[i % len(markers)], "ls": lines[(i // 10) % len(lines)]}
    return out


def plot(curves: dict, floors: list, path: Path, spread: dict | None = None) -> None:
    """FD_judge against NFE, one curve per method (distinct colour and marker), the legend beside the axes;
    the real-vs-real floor as a line and, with ``spread``, its sampling spread (5-95 % of random splits) as a band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(curves, key=lambda k: min(v[0] for v in curves[k].values()))
    style = _style(methods)
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for method in methods:
        pts = sorted(curves[method].items())
        xs, ys, es = [p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts]
        st = style[method]
        ax.errorbar(xs, ys, yerr=es, marker=st["marker"], ls=st["ls"], color=st["color"], capsize=3, ms=5, lw=1.3,
                    label=method)
    if spread:
        ax.axhspan(spread["q05"], spread["q95"], color="gray", alpha=0.15,
                   label=f"real vs real, random splits (5-95 %, n={spread['n']})")
    if floors:
        ax.axhline(min(floors), color="gray", ls="--", lw=1, label="real vs real (committed split)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel("FD_judge (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--out", default=None, help="markdown path (default papers/README_few_step.md)")
    ap.add_argument("--plot", default=None, help="plot path (default papers/few_step_fd_vs_nfe.png)")
    ap.add_argument("--no-spread", action="store_true", help="skip measuring the floor's sampling spread")
    args = ap.parse_args(argv)
    root = Path(args.root)
    curves, sources, floors = collect(root)
    spread = None
    if floors and not args.no_spread:
        from shared.metrics.judge import real_floor_spread

        spread = real_floor_spread()
    md = markdown(curves, sources, floors, spread)
    png = Path(args.plot) if args.plot else root / "papers" / "few_step_fd_vs_nfe.png"
    if curves:
        plot(curves, floors, png, spread)
        md += f"\n![FD_judge vs NFE]({png.name})\n"
    out = Path(args.out) if args.out else root / "papers" / "README_few_step.md"
    out.write_text(md)
    print(md)
    print(f"wrote {out}" + (f" and {png}" if curves else ""))
    return md


if __name__ == "__main__":
    main()
