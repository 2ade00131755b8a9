"""The claim checks: every claim a ``make <paper>`` target runs, re-run and held to its experiment's ``expected:``
block (the paper's direction and threshold, fixed in the config before the first run).

One test per check. A check the committed evidence (``papers/<id>/results/<claim>.json``) fails is a strict
expected failure, with the committed numbers as the reason: a re-run that suddenly passes is reported (XPASS
fails the suite) so the evidence and the README get updated instead of silently disagreeing. Checks compare
values the run itself produced (``than:``), never another claim's committed file.

Slow (minutes per claim): marker ``claims``, run by ``make claims`` (two claims at a time, one thread each; the stages
several claims share first, then the claims longest first by their committed wall times). Claims
whose config says ``claim.tier: long`` (up to 30 minutes on one core) carry the marker ``claims_long`` as well and
run in ``make claims-long`` instead. The fast test at the end — in ``make test`` — checks that every check resolves
against the committed results.
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


def committed(experiment: str) -> dict | None:
    block, cfg = claim_block(experiment)
    path = ROOT / "papers" / experiment.split("/")[0] / "results" / f"{cfg.claim.name}.json"
    return json.loads(path.read_text())["metrics"] if path.exists() else None


def _tier(experiment: str) -> str:
    return "long" if str(_cfg(experiment).claim.get("tier", "")) == "long" else "cpu"


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
    """The cached stages two or more claims of one tier share: ``{(tier, recipe): (experiment, seed, kind)}`` with
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
            users.setdefault((_tier(exp), sig), []).append((exp, int(seed), kind))
    return {k: v[0] for k, v in users.items() if len({e for e, _, _ in v}) >= 2}


def _stage_params():
    out = []
    stages = sorted(shared_stages().items(), key=lambda kv: (kv[1][2] != "image", kv[1][1], kv[1][0]))  # longest first
    for i, ((tier, _), (exp, seed, kind)) in enumerate(stages):
        marks = [pytest.mark.xdist_group(f"stage-{i}")] + ([pytest.mark.claims_long] if tier == "long" else [])
        out.append(pytest.param(exp, seed, kind, id=f"{tier}-{kind}-{exp}-seed{seed}", marks=marks))
    return out


def _params():
    out = []
    for exp in sorted(make_target_claims(), key=lambda e: (-_recorded_cost(e), e)):
        block, _ = claim_block(exp)
        records = evaluate_expected(block, committed(exp)) if committed(exp) is not None else None
        long_tier = _tier(exp) == "long"
        for i in range(len(parse_expected(block))):
            marks = [pytest.mark.xdist_group(exp)] + ([pytest.mark.claims_long] if long_tier else [])
            if records is not None and not records[i]["passed"]:
                r = records[i]
                marks.append(pytest.mark.xfail(strict=True, reason=f"committed run fails it: observed "
                                                                    f"{r['observed']} vs {r['threshold']}"))
            out.append(pytest.param(exp, i, id=f"{exp}[{i}]", marks=marks))
    return out


@pytest.mark.claims
@pytest.mark.parametrize("experiment,seed,kind", _stage_params())
def test_shared_stage(experiment, seed, kind, tmp_path):
    """A stage several claims load (trained here once, or found in the cache): the cache file the claims look for
    exists afterwards."""
    from conftest import image_stage_key

    from shared.engine.teachers import stage_for_seed, teacher_for_seed, teacher_key

    cfg = compose([f"experiment={experiment}", "logger=none", f"run_dir={tmp_path}"])
    module, path, how = (stage_for_seed(cfg, cfg.claim.image, seed) if kind == "image"
                         else teacher_for_seed(cfg, seed))
    assert module is not None and how in ("trained", "cache"), how
    key = image_stage_key(experiment, seed) if kind == "image" else teacher_key(cfg, seed)
    assert (Path(cfg.paths.output_dir) / "teacher_cache" / key / "teacher.ckpt").is_file()


@pytest.fixture(scope="module")
def claim_runs(tmp_path_factory):
    cache: dict[str, dict] = {}

    def get(experiment: str) -> dict:
        if experiment not in cache:
            cache[experiment] = run_into(experiment, tmp_path_factory.mktemp(experiment.replace("/", "_")))
        return cache[experiment]

    return get


@pytest.mark.claims
@pytest.mark.parametrize("experiment,index", _params())
def test_claim(experiment, index, claim_runs):
    block, _ = claim_block(experiment)
    record = evaluate_expected(block, claim_runs(experiment))[index]
    assert record["passed"], f"{record['check']}: observed {record['observed']} vs {record['threshold']} " \
                             f"({record['source']})"


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
