"""Progress of the phases after training: sampling and evaluation show a bar with an ETA, not silence.

* :func:`enable` installs a sampling observer (:func:`shared.methods.sampling.set_sampling_observer`): every
  sampling run of every module — a claim pipeline's FD grid, ``shared.engine.sample``, a sample-grid callback —
  shows one bar over its network evaluations (``sampling ddim x270: 37/50 NFE [00:04<00:01]``). Bars appear only
  for runs longer than ``delay`` seconds, so a quick run's console stays quiet.
* :func:`phase` prints one line when a named phase starts and one with its wall time when it ends
  (``[eval] FID/KID/IS on 50000 samples ... done in 812.3 s``); :func:`track` is a bar over an iterable for a
  pipeline's own loop (seeds, step counts).

Everything goes to stderr, so stdout keeps results only.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator

from shared.methods.sampling import set_sampling_observer

__all__ = ["enable", "disable", "enabled", "phase", "track"]

DELAY_S = 2.0
_state = {"enabled": False, "delay": DELAY_S}


def _bar(**kwargs):
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(**kwargs)


@contextlib.contextmanager
def _sampling_bar(name: str, steps: int | None, batch: int):
    bar = _bar(total=steps, desc=f"sampling {name} x{batch}", unit="NFE", delay=_state["delay"], leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def enable(delay: float = DELAY_S) -> None:
    """Show a progress bar for every sampling run longer than ``delay`` seconds."""
    _state.update(enabled=True, delay=float(delay))
    set_sampling_observer(_sampling_bar)


def disable() -> None:
    _state["enabled"] = False
    set_sampling_observer(None)


def enabled() -> bool:
    return bool(_state["enabled"])


@contextlib.contextmanager
def phase(name: str, stream=None) -> Iterator[None]:
    """``[phase] <name> ...`` when it starts, ``... done in <s> s`` when it ends (also on error: ``failed``)."""
    stream = stream or sys.stderr
    t0 = time.time()
    print(f"[phase] {name} ...", file=stream, flush=True)
    ok = False
    try:
        yield
        ok = True
    finally:
        print(f"[phase] {name} {'done' if ok else 'failed'} in {time.time() - t0:.1f} s", file=stream, flush=True)


def track(items: Iterable, desc: str, total: int | None = None) -> Iterator:
    """Iterate ``items`` with a progress bar (ETA over the items) once it runs longer than the delay."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    yield from _bar(iterable=items, total=total, desc=desc, delay=_state["delay"], leave=False)
