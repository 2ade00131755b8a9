"""The claim checks: every claim a ``make <paper>`` target runs, re-run and held to its experiment's ``expected:``
block (the paper's direction and threshold, fixed in the config before the first run).

One test per claim (one claim run, so the two workers of ``make claims`` never both run it; grouping the checks of a
claim with ``xdist_group`` does not work with pytest 9, whose node ids pytest-xdist 3.8 can no longer suffix). The
test asserts every check's outcome equals the committed evidence's (``papers/<id>/results/<claim>.json``): a check
that now fails, or one the committed run failed that now passes, fails the test with the check's numbers, so the
evidence and the README get updated instead of silently disagreeing. Checks compare values the run itself produced
(``than:``), never another claim's committed file.

Slow (minutes per claim): marker ``claims``, run by ``make claims`` (two at a time, one thread each; the stages
several claims share first, then the claims longest first by their committed wall times). Claims whose config says
``claim.tier: long`` (up to 30 minutes on one core) carry the marker ``claims_long`` as well and run in ``make
claims-long`` instead. The CPU tier (over an hour on two cores) splits into three parts that also run on their own:
``make claims-image`` (claims on image data: DDPM ... DiT), ``make claims-video`` (video generation and the
temporal-consistency toolbox: claims on video data) and ``make claims-control`` (the conditioned papers: Animate
Anyone, EMO, ControlNet on a video model). The environment variable ``VDP_CLAIMS_SUITE`` (``image`` / ``video`` /
``control``; unset: the whole tier) selects a part at collection, so its stages and its longest-first order are the
part's own. The fast tests at the end — in ``make test`` — check that every check resolves against the committed
results and that the suite holds every claim once.
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


def _tier(experiment: str) -> str:
    return "long" if str(_cfg(experiment).claim.get("tier", "")) == "long" else "cpu"


SUITES = ("image", "video", "control")
SUITE_VARIABLE = "VDP_CLAIMS_SUITE"
# the avatar and control papers (conditioned generation): their own part of the suite
CONTROL_PAPERS = ("animate_anyone", "emo", "controlnet_video", "gen1", "generative_image_dynamics")


def suite_of(experiment: str) -> str:
    """The part of the CPU tier that runs a claim: ``control`` for the avatar and control papers, ``video`` for the
    other claims on video data (their datamodule is the shared VideoDataModule), else ``image``."""
    if experiment.split("/")[0] in CONTROL_PAPERS:
        return "control"
    target = str(_cfg(experiment).data.get("_target_", ""))
    return "video" if target.endswith("video_datamodule.VideoDataModule") else "image"


def selected_suite() -> str | None:
    """The part ``VDP_CLAIMS_SUITE`` selects (None: unset or empty, the whole tier); any other value is refused in
    one line naming the variable and the values it takes."""
    import os

    value = os.environ.get(SUITE_VARIABLE, "").strip()
    if value and value not in SUITES:
        raise pytest.UsageError(f"{SUITE_VARIABLE}={value!r}: expected one of {', '.join(SUITES)} (or unset: the "
                                "whole claim suite)")
    return value or None


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
def stage_suites() -> dict[tuple[str, str], set[str]]:
    """The parts of the CPU tier whose claims use each shared stage (a part's run trains the stages it needs)."""
    return _stage_users()[1]


@functools.cache
def shared_stages() -> dict[tuple[str, str], tuple[str, int, str]]:
    """The cached stages two or more claims of one tier share: ``{(tier, recipe): (experiment, seed, kind)}`` with
    kind ``image`` (a ``claim.image`` stage recipe, e.g. the image U-Net six video papers start from) or ``teacher``
    (the experiment's own recipe, the EDM teacher of KD/PD/CM). Each is trained by its own test before the claims,
    so its seeds train side by side on the two workers instead of inside whichever claim comes first. Recipes are
    compared as configured (cheap, at collection); the test checks the cache file the claims will look for."""
    return _stage_users()[0]


@functools.cache
def _stage_users():
    """``(shared_stages(), stage_suites())``: each shared stage's first user, and the parts its users are in."""
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
            users.setdefault((_tier(exp), sig), []).append((exp, int(seed), kind))
    shared = {k: v for k, v in users.items() if len({e for e, _, _ in v}) >= 2}
    return {k: v[0] for k, v in shared.items()}, {k: {suite_of(e) for e, _, _ in v} for k, v in shared.items()}


def _suite(only: str | None = None):
    """The claim suite as pytest runs it: the shared stages (image stages first, the longer ones), then the claims
    longest first by their committed wall times. pytest-xdist's ``load`` scheduler (``--maxschedchunk 1``) starts each
    of the two workers with two consecutive items and then hands out the next item to whichever worker has one left,
    so items 1 and 2 are swapped: the workers start with items (0, 2) and (1, 3) - the two seeds of the longest stage
    train side by side - and the rest goes longest first to the worker that frees up. ``only``: one part of the CPU
    tier (:func:`suite_of`; its claims and the stages they use, ordered and swapped on their own), the long tier
    left out."""
    out = []
    stages = sorted(shared_stages().items(), key=lambda kv: (kv[1][2] != "image", kv[1][1], kv[1][0]))
    for key, (exp, seed, kind) in stages:
        tier = key[0]
        if only is not None and (tier == "long" or only not in stage_suites()[key]):
            continue
        marks = [pytest.mark.claims_long] if tier == "long" else []
        out.append((tier, pytest.param("stage", exp, seed, kind, id=f"stage-{kind}-{exp}-seed{seed}", marks=marks)))
    for exp in sorted(make_target_claims(), key=lambda e: (-_recorded_cost(e), e)):
        if only is not None and (_tier(exp) == "long" or suite_of(exp) != only):
            continue
        marks = [pytest.mark.claims_long] if _tier(exp) == "long" else []
        out.append((_tier(exp), pytest.param("claim", exp, None, None, id=exp, marks=marks)))
    params = []
    for tier in ("cpu", "long"):   # each tier is its own run (make claims / make claims-long): swap within it
        items = [p for t, p in out if t == tier]
        if len(items) > 3:
            items[1], items[2] = items[2], items[1]
        params += items
    return params


def failing_checks(records: list[dict]) -> set[int]:
    return {i for i, r in enumerate(records) if not r["passed"]}


def changed_checks(records: list[dict], known_failing: set[int]) -> list[str]:
    """One line per check whose outcome differs from the committed run's (``known_failing``: its failing checks)."""
    return [f"check {i} {'now FAILS' if not r['passed'] else 'now PASSES (the committed run failed it)'}: "
            f"{r['check']}: observed {r['observed']} vs {r['threshold']} ({r['source']})"
            for i, r in enumerate(records) if (i in known_failing) == r["passed"]]


@pytest.mark.claims
@pytest.mark.parametrize("job,experiment,seed,kind", _suite(selected_suite()))
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

    block, _ = claim_block(experiment)
    metrics = run_into(experiment, tmp_path)
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


def _is_long(param) -> bool:
    return any(getattr(m, "mark", m).name == "claims_long" for m in param.marks)


def test_the_suite_runs_every_claim_once_after_its_stages():
    """Each make-target claim is one test of its tier; the shared stages come first (but for the swap of items 1
    and 2 that gives the two workers one of the first two stages each)."""
    params = _suite()
    claims = [p.values[1] for p in params if p.values[0] == "claim"]
    assert sorted(claims) == sorted(make_target_claims())
    for tier in ("cpu", "long"):
        jobs = [p.values[0] for p in params if _is_long(p) == (tier == "long")]
        stages = [i for i, j in enumerate(jobs) if j == "stage"]
        if stages:
            assert max(stages) <= len(stages), jobs   # at most one claim moved up by the start-of-run swap


def test_the_three_parts_split_the_cpu_tier_each_with_the_stages_it_uses(monkeypatch):
    """``make claims-image`` + ``claims-video`` + ``claims-control`` run every CPU-tier claim exactly once between
    them, each part with the shared stages its claims use (first, swapped on their own) and nothing of the long tier;
    the MovingDigits image stage belongs to the video part, the EDM teacher to the image part, and the control part
    (Animate Anyone, EMO, ControlNet) has none. A wrong suite name is one line."""
    full = _suite()
    cpu = sorted(p.values[1] for p in full if p.values[0] == "claim" and not _is_long(p))
    seen = []
    for which, kinds in (("image", {"teacher"}), ("video", {"image"}), ("control", set())):
        params = _suite(which)
        assert params and not any(_is_long(p) for p in params), which
        claims = [p.values[1] for p in params if p.values[0] == "claim"]
        assert claims and all(suite_of(e) == which for e in claims), (which, claims)
        seen += claims
        jobs = [p.values[0] for p in params]
        stages = [i for i, j in enumerate(jobs) if j == "stage"]
        assert not stages or max(stages) <= len(stages), (which, jobs)
        assert {p.values[3] for p in params if p.values[0] == "stage"} == kinds, which
    assert sorted(seen) == cpu
    assert [suite_of(e) for e in ("ddpm/digits_claim", "vdm/moving_digits_claim", "emo/talking_faces_claim",
                                  "controlnet_video/styled_shapes_claim")] == ["image", "video", "control", "control"]
    monkeypatch.setenv(SUITE_VARIABLE, "videos")
    with pytest.raises(pytest.UsageError, match=r"VDP_CLAIMS_SUITE='videos': expected one of image, video, control"):
        selected_suite()
    monkeypatch.setenv(SUITE_VARIABLE, "control")
    assert selected_suite() == "control"
    monkeypatch.delenv(SUITE_VARIABLE)
    assert selected_suite() is None


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
