"""The command-line face of the entry points: a bad input is one line on stderr, never a traceback.

Every ``python -m shared.engine.{train,sample,evaluate}`` runs inside :func:`hydra_cli`, so an error in a
Hydra override, a config value, a path, a data file or a checkpoint ends as

    error: <what was wrong, naming the key, value or file, and what was expected>

with exit status 2 (a user error: :data:`USER_ERRORS`) or 1 (anything else: a bug, said so in the same one
line). Hydra's own composition errors go through the same path (Hydra is told to re-raise them instead of
printing its multi-line report), and a wrapped error (Hydra's ``Error in call to target ...``) is reported by
its root cause, found by following ``__cause__``. Python warnings go to the log (the run folder's
``train.log``), not to stderr, so the error is the only line there.

``VDP_TRACEBACK=1`` re-raises instead: the full traceback, Hydra's included.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys

TRACEBACK_ENV = "VDP_TRACEBACK"


class UserError(ValueError):
    """A bad input the user can fix (a config value, a path, a file); its message names it in one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as bad input (exit status 2)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from shared.methods.base import NonFiniteLossError
    from shared.nn.weights import CheckpointError

    return (UserError, HydraException, OmegaConfBaseException, CheckpointError, NonFiniteLossError, OSError,
            ValueError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and e.args:   # KeyError's str is the repr of the key
        text = f"KeyError: {e.args[0]!r}"
    return text.splitlines()[0].strip() if text else type(e).__name__


def _chain(e: BaseException) -> list[BaseException]:
    out, seen = [e], {id(e)}
    while True:
        nxt = out[-1].__cause__ or (None if out[-1].__suppress_context__ else out[-1].__context__)
        if nxt is None or id(nxt) in seen:
            return out
        out.append(nxt)
        seen.add(id(nxt))


_TARGET = re.compile(r"(?:target|partial\()\s*'?([\w.]+)'?")
_FULL_KEY = re.compile(r"full_key:\s*(\S+)")


def one_line(e: BaseException) -> str:
    """The message of ``e`` in one line: its root cause's first line, prefixed by where Hydra was building
    (``module.net (shared.nn.unet.UNet): ...``) when the error came out of ``instantiate``."""
    from hydra.errors import HydraException, InstantiationException

    chain = _chain(e)
    root = chain[-1]
    msg = _first_line(root)
    override = next((link.override for link in chain if isinstance(getattr(link, "override", None), str)),
                    None)
    if override is not None and override not in msg:   # Hydra's override parser names the input, not the override
        msg = f"cannot parse the override {override!r}: {msg}"
    if len(chain) == 1:
        return msg
    where = []
    for link in chain[:-1]:
        if isinstance(link, InstantiationException):
            text = str(link)
            key, target = _FULL_KEY.search(text), _TARGET.search(text)
            label = key.group(1) if key else None
            if target:
                label = f"{label} ({target.group(1)})" if label else target.group(1)
            if label and label not in where:
                where.append(label)
        elif isinstance(link, HydraException) and not where:
            head = _first_line(link)
            if head and head not in msg:
                where.append(head.rstrip(":."))
    innermost = where[-1] if where else ""
    return f"{innermost}: {msg}" if innermost else msg


@contextlib.contextmanager
def friendly_errors():
    """Turn every exception into ``error: <one line>`` on stderr: exit 2 for bad input, 1 otherwise."""
    try:
        yield
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the top of a command line: one line, whatever it was
        if os.environ.get(TRACEBACK_ENV):
            raise
        chain = _chain(e)
        user = any(isinstance(link, user_errors()) for link in chain) and not _internal(chain)
        msg = one_line(e)
        if user:
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        print(f"error: internal error ({type(chain[-1]).__name__}: {msg}); {TRACEBACK_ENV}=1 shows the traceback",
              file=sys.stderr)
        sys.exit(1)


def _internal(chain: list[BaseException]) -> bool:
    """A root cause that is a programming error whatever wrapped it (a bad input never raises these) — except
    where Hydra was locating a ``_target_`` the config names (a misspelt class: an ImportError/AttributeError)."""
    from omegaconf.errors import OmegaConfBaseException

    root = chain[-1]
    if isinstance(root, (OmegaConfBaseException, ModuleNotFoundError)):   # a config key / a _target_ module
        return False
    if any("Error locating target" in str(link) for link in chain[:-1]):
        return False
    return isinstance(root, (AttributeError, NameError, AssertionError, ImportError))


def check_count(value, key: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else a one-line :class:`UserError` naming ``key``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer() \
        and value >= minimum
    if not ok:
        raise UserError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_argv(args: list[str]) -> None:
    """Overrides Hydra would misread: ``=3`` (no key) parses as a config-group override of an int."""
    for a in args:
        if a.startswith("-") or a.startswith("~"):
            continue
        key = a.split("=", 1)[0].lstrip("+")
        if "=" in a and not key.strip():
            raise UserError(f"override {a!r} has no key; expected key=value")


class _DropHydraJobLine:
    """stderr without the line Hydra writes itself before re-raising a failed job (``Error executing job with
    overrides: [...]``): the error is reported once, by :func:`friendly_errors`."""

    PREFIX = "Error executing job with overrides:"

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if text.startswith(self.PREFIX):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def hydra_cli(hydra_main):
    """Wrap a ``@hydra.main`` function: Hydra re-raises its own errors (``HYDRA_FULL_ERROR``), and everything,
    composition errors included, is reported by :func:`friendly_errors`; warnings go to the log."""

    @functools.wraps(hydra_main)
    def main(*args, **kwargs):
        with friendly_errors():
            check_argv(sys.argv[1:])
        before = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        logging.captureWarnings(True)
        stderr = sys.stderr
        try:
            with friendly_errors():
                sys.stderr = _DropHydraJobLine(stderr)
                try:
                    return hydra_main(*args, **kwargs)
                finally:
                    sys.stderr = stderr
        finally:
            logging.captureWarnings(False)
            if before is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = before

    return main
