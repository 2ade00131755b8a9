"""A claim's pre-registered directions, written once: the experiment's ``expected:`` block.

Each entry compares a metric of ``results.json`` with a constant or with another metric of the same run::

    expected:
      - {metric: fd_judge_simple.max, op: "<", than: fd_judge_vlb.min, source: "Ho et al. 2020, Table 2"}
      - {metric: fd_vs_nfe.2rf.1.per_seed, op: "<", than: fd_vs_nfe.1rf.1.per_seed, scale: 0.5}
      - {metric: best_conditioning, op: "==", value: adaln_zero}

* ``metric`` / ``than`` are dotted paths into the metrics (keys may contain dots: ``fd_judge.eta=0.0.10`` is matched
  greedily); a summary ``{mean, std, per_seed, ...}`` stands for its ``mean`` unless the path picks ``per_seed``,
  ``min`` or ``max``;
* the right-hand side is ``value``, or ``scale * than + offset``;
* lists are compared element by element (per seed: the check must hold on every seed), a list against a number
  element-wise;
* ``direction: less_than | greater_than`` with ``value`` is the older spelling of ``op``;
* an entry without ``op``/``direction`` (the paper's number at paper scale) is a reference, not a check.

:func:`evaluate_expected` returns one record per check (observed values, threshold, pass/fail); the claim tests
assert them and :func:`shared.engine.claims.finish` stores them in ``results.json`` next to the metrics.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["lookup", "parse_expected", "evaluate_expected", "failed_checks", "ExpectedError"]

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
DIRECTIONS = {"less_than": "<", "greater_than": ">", "at_most": "<=", "at_least": ">=", "equals": "=="}


class ExpectedError(ValueError):
    """A malformed ``expected:`` entry or a metric path that the results do not have."""


def lookup(metrics: Mapping, dotted: str) -> Any:
    """Follow a dotted path; keys may themselves contain dots (``fd_judge.eta=0.0.10``), so match greedily."""
    node, rest = metrics, str(dotted)
    while rest:
        if not isinstance(node, Mapping):
            raise KeyError(dotted)
        for k in sorted(node, key=lambda k: len(str(k)), reverse=True):
            k = str(k)
            if rest == k or rest.startswith(k + "."):
                node, rest = node[k], rest[len(k) + 1:]
                break
        else:
            raise KeyError(dotted)
    return node


def _value(metrics: Mapping, path: str) -> Any:
    try:
        v = lookup(metrics, path)
    except KeyError:
        raise ExpectedError(f"expected: the results have no metric {path!r}") from None
    if isinstance(v, Mapping) and "mean" in v:
        return v["mean"]
    return v


def parse_expected(block: Any) -> list[dict]:
    """The checks of an ``expected:`` block (a mapping or a list of mappings); references are dropped."""
    if block is None:
        return []
    entries = [block] if isinstance(block, Mapping) else list(block)
    checks = []
    for e in entries:
        e = dict(e)
        op = e.get("op") or DIRECTIONS.get(str(e.get("direction", "")))
        if op is None:
            if "direction" in e:
                raise ExpectedError(f"expected: unknown direction {e['direction']!r}; use op: one of {sorted(OPS)}")
            continue   # the paper's number for reference, not a check
        if op not in OPS:
            raise ExpectedError(f"expected: unknown op {op!r}; choose one of {sorted(OPS)}")
        if "metric" not in e or ("value" not in e and "than" not in e):
            raise ExpectedError(f"expected: a check needs metric and value or than, got {e}")
        checks.append({**e, "op": op})
    return checks


def _compare(a, op: str, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not all(map(math.isfinite, (a, b))):
        return False
    return bool(OPS[op](a, b))


def evaluate_expected(block: Any, metrics: Mapping) -> list[dict]:
    """One record per check: ``{check, observed, threshold, passed, source}``."""
    out = []
    for c in parse_expected(block):
        left = _value(metrics, c["metric"])
        if "than" in c:
            right = _value(metrics, c["than"])
            scale, offset = float(c.get("scale", 1.0)), float(c.get("offset", 0.0))
            if isinstance(right, Sequence) and not isinstance(right, str):
                right = [v * scale + offset for v in right]
            else:
                right = right * scale + offset
        else:
            right = c["value"]
        lseq = isinstance(left, Sequence) and not isinstance(left, str)
        rseq = isinstance(right, Sequence) and not isinstance(right, str)
        if lseq and rseq:
            if len(left) != len(right):
                raise ExpectedError(f"expected: {c['metric']} has {len(left)} values, {c['than']} {len(right)}")
            passed = all(_compare(a, c["op"], b) for a, b in zip(left, right))
        elif lseq:
            passed = bool(left) and all(_compare(a, c["op"], right) for a in left)
        else:
            passed = _compare(left, c["op"], right)
        rhs = c.get("than", c.get("value"))
        if "than" in c and float(c.get("scale", 1.0)) != 1.0:
            rhs = f"{c['scale']} * {rhs}"
        if "than" in c and float(c.get("offset", 0.0)):
            rhs = f"{rhs} + {c['offset']}"
        out.append({"check": f"{c['metric']} {c['op']} {rhs}", "observed": left, "threshold": right,
                    "passed": passed, "source": c.get("source", "")})
    return out


def failed_checks(block: Any, metrics: Mapping) -> list[str]:
    """Human-readable lines of the checks that did not hold."""
    return [f"{r['check']}: observed {r['observed']} vs {r['threshold']}"
            for r in evaluate_expected(block, metrics) if not r["passed"]]
