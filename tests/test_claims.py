"""The claim checks: every claim a ``make <paper>`` target runs, re-run and held to its experiment's ``expected:``
block (the paper's direction and threshold, fixed in the config before the first run).

One test per claim (one claim run, so the two workers of ``make claims`` never both run it; grouping the checks of a
claim with ``xdist_group`` does not work with pytest 9, whose node ids pytest-xdist 3.8 can no longer suffix). The
test asserts every check's outcome equals the committed evidence's (``papers/<id>/results/<claim>.json``): a check
that now fails, or one the committed run failed that now passes, fails the test with the check's numbers, so the
evidence and the README get updated instead of silently disagreeing. Checks compare values the run itself produced
(``than:``), never another claim's committed file.

Slow (minutes per claim): marker ``claims``, run in three suites, each two claims at a time with one thread each
(the stages several claims of the suite share first, then the claims longest first by their committed wall times):

* ``make claims`` - the CPU tier (each claim within 10 minutes of one core): the claims that are their papers'
  current evidence, the whole suite within 45 minutes on two cores (measured in docs/PERFORMANCE.md; the recorded
  costs are held to it here, :func:`test_make_claims_fits_its_45_minute_budget_by_the_recorded_costs`).
* ``make claims-long`` - claims whose config says ``claim.tier: long`` (up to 30 minutes on one core), marker
  ``claims_long``.
* ``make claims-superseded`` - first designs a later claim of the same paper re-tests in a redesigned world or
  budget (``claim.superseded_by: <paper>/<claim>``, of either tier), marker ``claims_superseded``. They keep their
  evidence and their README rows (what was tried) and are still re-run against it, apart from the current claims.

The fast tests at the end - in ``make test`` - check that every check resolves against the committed results, that
the three suites hold every claim once, and that each superseded claim names a current claim of its paper.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from conftest import compose
from conftest import run_claim as run_into
from omegaconf import OmegaConf

from shared.engine.expectations import evaluate_expected, parse_expected
from tools.report import SUITE_BUDGET_S, claim_suite
from tools.report import superseded_by as report_superseded_by

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _cfg(experiment: str):
    return compose([f"experiment={experiment}"])


def make_target_claims() -> list[str]:
    """The experiments the Makefile's paper targets run (the claim suite = what ``make <paper>`` publishes)."""
    text = (ROOT / "Makefile").read_text()
    return sorted({m for m in re.findall(r"\$\(TRAIN\)[^\n]*?experiment=(\S+)", text)
                   if _cfg(m).get("pipeline") and _cfg(m).get("expected")})


def claim_block(experiment: str):
    cfg = _cfg(experiment)
    return OmegaConf.to_container(cfg.expected, resolve=True), cfg


def committed_record(experiment: str) -> dict | None:
    """The committed evidence of a claim (``papers/<id>/results/<claim>.json``), or None."""
    block, cfg = claim_block(experiment)
    path = ROOT / "papers" / experiment.split("/")[0] / "results" / f"{cfg.claim.name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def committed(experiment: str) -> dict | None:
    rec = committed_record(experiment)
    return rec["metrics"] if rec is not None else None


def superseded_by(experiment: str) -> str | None:
    """The claim that supersedes ``experiment`` (``claim.superseded_by``), or None for a current claim."""
    return report_superseded_by(experiment, ROOT)


RUNS = ("cpu", "long", "superseded")   # make claims / make claims-long / make claims-superseded
RUN_MARKS = {"cpu": [], "long": [pytest.mark.claims_long], "superseded": [pytest.mark.claims_superseded]}
SUITE_MARGIN = 0.8         # the recorded costs may use 80 % of two cores' 45 minutes (other hosts ran 1.1-1.4x slower)


def run_of(experiment: str) -> str:
    """The suite that runs a claim: ``superseded`` when a later claim supersedes it (either tier), else its tier
    (``tools.report.claim_suite``, the same answer RESULTS.md's per-suite totals use)."""
    paper, claim = experiment.split("/")
    return claim_suite(paper, claim, root=ROOT)


def _recorded_cost(experiment: str) -> float:
    """Seconds the committed run recorded, less the shared stages it trained (those run as their own tests first):
    the order of the claim groups (longest first keeps the two workers of ``make claims`` evenly loaded)."""
    block, cfg = claim_block(experiment)
    path = ROOT / "papers" / experiment.split("/")[0] / "results" / f"{cfg.claim.name}.json"
    if not path.exists():
        return 600.0
    res = json.loads(path.read_text())
    stage = res["metrics"].get("image_stage_s", {}).get("per_seed", []) if isinstance(res["metrics"], dict) else []
    cached = res["metrics"].get("image_stage_cached", {}).get("per_seed", [])
    trained = sum(float(t) for i, t in enumerate(stage) if not (i < len(cached) and cached[i]))
    return max(float(res.get("wall_time_s") or 0.0) - trained, 0.0)


@functools.cache
def shared_stages() -> dict[tuple[str, str], tuple[str, int, str]]:
    """The cached stages two or more claims of one suite share: ``{(run, recipe): (experiment, seed, kind)}`` with
    kind ``image`` (a ``claim.image`` stage recipe, e.g. the image U-Net six video papers start from) or ``teacher``
    (the experiment's own recipe, the EDM teacher of KD/PD/CM). Each is trained by its own test before the claims,
    so its seeds train side by side on the two workers instead of inside whichever claim comes first. Recipes are
    compared as configured (cheap, at collection); the test checks the cache file the claims will look for."""
    users: dict[tuple[str, str], list] = {}
    for exp in make_target_claims():
        cfg = _cfg(exp)
        c = cfg.claim
        for seed in c.seeds:
            if c.get("image") is not None:
                recipe, kind = OmegaConf.to_container(c.image, resolve=False), "image"
            elif c.get("teacher_cache") and not c.get("teacher_ckpt"):
                recipe = {k: OmegaConf.to_container(cfg[k], resolve=False) for k in ("model", "module", "data")}
                recipe["max_steps"], kind = int(cfg.trainer.max_steps), "teacher"
            else:
                continue
            sig = json.dumps([kind, recipe, int(seed)], sort_keys=True, default=str)
            users.setdefault((run_of(exp), sig), []).append((exp, int(seed), kind))
    return {k: v[0] for k, v in users.items() if len({e for e, _, _ in v}) >= 2}


def _suite():
    """The claim suite as pytest runs it: the shared stages (image stages first, the longer ones), then the claims
    longest first by their committed wall times. pytest-xdist's ``load`` scheduler (``--maxschedchunk 1``) starts each
    of the two workers with two consecutive items and then hands out the next item to whichever worker has one left,
    so items 1 and 2 are swapped: the workers start with items (0, 2) and (1, 3) - the two seeds of the longest stage
    train side by side - and the rest goes longest first to the worker that frees up. Each suite (:data:`RUNS`) is its
    own run, ordered and swapped on its own, its tests marked for it (:data:`RUN_MARKS`)."""
    out = []
    stages = sorted(shared_stages().items(), key=lambda kv: (kv[1][2] != "image", kv[1][1], kv[1][0]))
    for (run, _), (exp, seed, kind) in stages:
        out.append((run, pytest.param("stage", exp, seed, kind, id=f"stage-{kind}-{exp}-seed{seed}",
                                      marks=RUN_MARKS[run])))
    for exp in sorted(make_target_claims(), key=lambda e: (-_recorded_cost(e), e)):
        out.append((run_of(exp), pytest.param("claim", exp, None, None, id=exp, marks=RUN_MARKS[run_of(exp)])))
    params = []
    for run in RUNS:   # each suite is its own run: swap within it
        items = [p for r, p in out if r == run]
        if len(items) > 3:
            items[1], items[2] = items[2], items[1]
        params += items
    return params


def one_process(cfg) -> list[str]:
    """The override that runs a claim's seeds one after another in its own process (``claim.workers=1``) where its
    config trains them in parallel processes: the suite already keeps both cores busy with two claims, and a third
    process would slow both (DiT's guidance claim took 624 s of wall beside VDM's two seed processes, 492 s
    without). Each seed job seeds itself and computes with one thread either way, so the numbers are the same."""
    return ["claim.workers=1"] if int(cfg.claim.get("workers", 1) or 1) > 1 else []


def failing_checks(records: list[dict]) -> set[int]:
    return {i for i, r in enumerate(records) if not r["passed"]}


def changed_checks(records: list[dict], known_failing: set[int]) -> list[str]:
    """One line per check whose outcome differs from the committed run's (``known_failing``: its failing checks)."""
    return [f"check {i} {'now FAILS' if not r['passed'] else 'now PASSES (the committed run failed it)'}: "
            f"{r['check']}: observed {r['observed']} vs {r['threshold']} ({r['source']})"
            for i, r in enumerate(records) if (i in known_failing) == r["passed"]]


@pytest.mark.claims
@pytest.mark.parametrize("job,experiment,seed,kind", _suite())
def test_claim(job, experiment, seed, kind, tmp_path, record_property):
    """A stage: trained once (or found in the cache) - the cache file the claims look for exists afterwards.

    A claim: re-run into ``tmp_path`` (nothing published) and held to its ``expected:`` block. Its outcome must equal
    the committed evidence's check by check: a check that fails now but passed in the committed run fails the test,
    and so does one the committed run fails that now passes (the evidence and README would otherwise silently
    disagree with the code). One test per claim (one claim run), so two workers never run the same claim. How far
    the re-run's numbers are from the committed ones (bit for bit or not) goes into ``outputs/claims/timings.json``
    (``drift``, :func:`shared.engine.results.metric_drift`)."""
    if job == "stage":
        from conftest import image_stage_key

        from shared.engine.teachers import stage_for_seed, teacher_for_seed, teacher_key

        cfg = compose([f"experiment={experiment}", "logger=none", f"run_dir={tmp_path}"])
        module, path, how = (stage_for_seed(cfg, cfg.claim.image, seed) if kind == "image"
                             else teacher_for_seed(cfg, seed))
        assert module is not None and how in ("trained", "cache"), how
        key = image_stage_key(experiment, seed) if kind == "image" else teacher_key(cfg, seed)
        assert (Path(cfg.paths.output_dir) / "teacher_cache" / key / "teacher.ckpt").is_file()
        return
    from shared.engine.results import metric_drift

    block, cfg = claim_block(experiment)
    metrics = run_into(experiment, tmp_path, *one_process(cfg))
    evidence = committed_record(experiment)
    if evidence is not None:   # with the instruction sets: AVX2 vs AVX-512 rounding shows as drift (shared.engine.isa)
        from shared.engine.isa import isa_state

        record_property("drift", {**metric_drift(metrics, evidence["metrics"]),
                                  "evidence_cpu_capability": (evidence.get("compute") or {}).get("cpu_capability"),
                                  "cpu_capability": isa_state()["cpu_capability"]})
    records = evaluate_expected(block, metrics)
    known = failing_checks(evaluate_expected(block, committed(experiment))) if committed(experiment) else set()
    changed = changed_checks(records, known)
    assert not changed, f"{experiment}: " + "; ".join(changed)


# A paper whose claims have not been run yet says so at the top of its README (and nothing else stands in for results).
NOT_RUN = re.compile(r"\*\*Status: (the claim has not|no claim has) been run yet")


def test_every_claim_check_resolves_against_its_committed_results():
    """Each make-target claim has checks and committed evidence, and every check's metric paths exist in it (a
    renamed metric would otherwise only surface after a 10-minute claim run). A claim without evidence is allowed
    only while its paper's README states that the claim has not been run; a README that says so beside committed
    evidence is stale."""
    claims = make_target_claims()
    assert len(claims) >= 15, claims
    for exp in claims:
        block, _ = claim_block(exp)
        assert parse_expected(block), f"{exp}: no checks in its expected: block"
        metrics = committed(exp)
        not_run = NOT_RUN.search((ROOT / "papers" / exp.split("/")[0] / "README.md").read_text())
        if metrics is None:
            assert not_run, f"{exp}: no committed results, and its README does not state that it has not been run"
            continue
        assert not not_run, f"{exp}: committed results, but its README still says the claim has not been run"
        for r in evaluate_expected(block, metrics):
            assert isinstance(r["passed"], bool)


def _run_of_param(param) -> str:
    import conftest

    return conftest._suite_of_keywords({getattr(m, "mark", m).name for m in param.marks}) or "cpu"


def test_the_suite_of_each_claim_agrees_with_its_composed_config():
    """``run_of`` reads the experiment files as YAML (``tools.report``, which also runs on folders without the
    Hydra config tree); for every make-target claim its answer equals the composed config's ``claim.tier`` /
    ``claim.superseded_by`` (defaults and ``null`` overrides resolved by Hydra)."""
    for exp in make_target_claims():
        c = _cfg(exp).claim
        composed = "superseded" if c.get("superseded_by") else ("long" if str(c.get("tier", "")) == "long" else "cpu")
        assert run_of(exp) == composed, exp
        assert superseded_by(exp) == (str(c.superseded_by) if c.get("superseded_by") else None), exp


def test_the_suite_runs_every_claim_once_after_its_stages():
    """Each make-target claim is one test of one suite (its :func:`run_of`); each suite's shared stages come first
    (but for the swap of items 1 and 2 that gives the two workers one of the first two stages each)."""
    params = _suite()
    claims = [p.values[1] for p in params if p.values[0] == "claim"]
    assert sorted(claims) == sorted(make_target_claims())
    for p in params:
        if p.values[0] == "claim":
            assert _run_of_param(p) == run_of(p.values[1]), p.values[1]
    for run in RUNS:
        jobs = [p.values[0] for p in params if _run_of_param(p) == run]
        assert "claim" in jobs, run
        stages = [i for i, j in enumerate(jobs) if j == "stage"]
        if stages:
            assert max(stages) <= len(stages), jobs   # at most one claim moved up by the start-of-run swap
    # the MovingDigits image stage is shared by superseded first designs only; the EDM teacher by the CPU tier
    kinds = {run: {p.values[3] for p in params if p.values[0] == "stage" and _run_of_param(p) == run} for run in RUNS}
    assert kinds["cpu"] == {"teacher"} and "image" in kinds["superseded"], kinds


def test_a_superseded_claim_names_a_current_claim_of_its_paper():
    """``claim.superseded_by`` names another make-target claim of the same paper that has committed evidence and is
    itself current (a config that extends a superseded one sets ``superseded_by: null``); the first designs the
    Sprites / Puppets / TalkingFaces redesigns replaced are the superseded ones, and VDM's and PVDM's MovingDigits
    claims (their papers' current evidence for checks no redesign re-tests) are not."""
    claims = set(make_target_claims())
    old = {e: superseded_by(e) for e in claims if superseded_by(e)}
    assert len(old) >= 12, old
    for exp, new in old.items():
        assert new in claims, f"{exp}: claim.superseded_by={new!r} is not a make-target claim"
        assert new != exp and new.split("/")[0] == exp.split("/")[0], f"{exp}: superseded_by={new!r}"
        assert superseded_by(new) is None, f"{exp}: superseded by {new}, which is itself superseded"
        assert committed_record(new) is not None, f"{exp}: {new} has no committed evidence"
    for exp in ("vdm/moving_digits_claim", "pvdm/moving_digits_claim", "animate_anyone/puppets_claim_v3",
                "emo/talking_faces_claim_v3", "emo/talking_faces_speed_claim", "ddpm/digits_claim"):
        assert exp not in old, exp
    assert old["animatediff/moving_digits_claim"] == "animatediff/sprites_claim"
    assert old["animate_anyone/puppets_claim_v2"] == "animate_anyone/puppets_claim_v3"


def test_make_claims_fits_its_45_minute_budget_by_the_recorded_costs():
    """The committed runs' recorded wall times of the ``make claims`` suite (claims less the shared stages they
    trained) sum to at most 80 % of two cores' 45 minutes: a claim added to the CPU tier that would push the suite
    over its budget fails here, before anyone times a suite run. The measured run is in docs/PERFORMANCE.md."""
    cpu = [e for e in make_target_claims() if run_of(e) == "cpu"]
    total = sum(_recorded_cost(e) for e in cpu)
    assert cpu and total <= 2 * SUITE_BUDGET_S * SUITE_MARGIN, (
        f"make claims: recorded costs {total / 60:.1f} min of one core > {2 * SUITE_BUDGET_S * SUITE_MARGIN / 60:.0f}")
    assert all(_recorded_cost(e) <= 600.0 for e in cpu), [e for e in cpu if _recorded_cost(e) > 600.0]


def test_the_suite_runs_each_claim_in_one_process():
    """Claims whose configs train their seeds in parallel processes run them one after another in the suite."""
    assert one_process(_cfg("vdm/moving_digits_claim")) == ["claim.workers=1"]
    assert one_process(_cfg("rectified_flow/toy2d_claim")) == ["claim.workers=1"]
    assert one_process(_cfg("ddpm/digits_claim")) == [] and one_process(_cfg("pvdm/moving_digits_claim")) == []


def test_a_changed_check_outcome_is_named_both_ways():
    rec = [{"check": "a < b", "passed": True, "observed": 1, "threshold": 2, "source": "x"},
           {"check": "c > d", "passed": False, "observed": 0, "threshold": 1, "source": "y"}]
    assert changed_checks(rec, {1}) == []
    out = changed_checks(rec, {0})
    assert len(out) == 2 and "check 0 now PASSES" in out[0] and "check 1 now FAILS" in out[1]


def test_metric_drift_counts_identical_numbers_and_leaves_out_timings():
    from shared.engine.results import metric_drift

    committed_ = {"fd": {"mean": 2.0, "per_seed": [1.0, 3.0]}, "wall_time_s": 10.0, "ok": True, "nan": float("nan")}
    same = metric_drift(json.loads(json.dumps(committed_)) | {"nan": float("nan")}, committed_)
    assert same == {"compared": 4, "identical": 4, "max_rel": 0.0, "worst": None}
    moved = metric_drift({"fd": {"mean": 2.0, "per_seed": [1.0, 4.0]}, "wall_time_s": 99.0, "nan": 1.0}, committed_)
    assert moved["compared"] == 4 and moved["identical"] == 2 and moved["worst"] == "nan"
    assert metric_drift({"fd": {"mean": 3.0}}, {"fd": {"mean": 2.0}})["max_rel"] == 1 / 3


def test_a_timing_record_is_named_by_the_suite_its_claims_belong_to(monkeypatch):
    """``outputs/claims/timings.json`` for ``make claims``, ``timings_long.json`` / ``timings_superseded.json`` for
    the other suites (by the claim tests' marks), ``timings_mixed.json`` for a run that spans suites."""
    import conftest

    assert conftest._suite_of_keywords({"claims": 1}) == ""
    assert conftest._suite_of_keywords({"claims": 1, "claims_long": 1}) == "long"
    assert conftest._suite_of_keywords({"claims": 1, "claims_superseded": 1}) == "superseded"
    monkeypatch.setattr(conftest, "_CLAIM_SUITES", {"a": "", "b": ""})
    assert conftest._run_suite() is None and conftest._timings_name(conftest._run_suite()) == "timings.json"
    monkeypatch.setattr(conftest, "_CLAIM_SUITES", {"a": "superseded"})
    assert conftest._timings_name(conftest._run_suite()) == "timings_superseded.json"
    monkeypatch.setattr(conftest, "_CLAIM_SUITES", {"a": "", "b": "long"})
    assert conftest._run_suite() == "mixed"


def test_the_readme_lists_the_superseded_claims_and_the_cpu_tier_it_counts():
    """The top README's **Claim suites.** paragraph names every superseded claim (and nothing else after
    ``make claims-superseded``) and counts the claims ``make claims`` runs."""
    text = (ROOT / "README.md").read_text()
    para = text[text.index("**Claim suites.**"):]
    para = para[:para.index("\n\n")]
    listed = re.findall(r"`([a-z0-9_]+/[a-z0-9_]+)`", para[para.index("`make claims-superseded`"):])
    assert sorted(listed) == sorted(e for e in make_target_claims() if superseded_by(e)), listed
    cpu = [e for e in make_target_claims() if run_of(e) == "cpu"]
    assert f"re-runs the CPU tier's current claims against their committed evidence ({len(cpu)} claims" in \
        " ".join(para.split()), len(cpu)
