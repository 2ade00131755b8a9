"""Library side of the entry points: build data, module and trainer from a composed config and fit.

Kept free of ``@hydra.main`` so pipelines (multi-stage claim checks) and tests call the same code:
``fit(cfg)`` trains one module exactly as ``python -m shared.engine.train`` would.

Run folders and resuming (the guarantees are listed in the top README, "Guarantees"):

* **One folder per run.** Hydra names it ``outputs/<name>/<date_time>-<microseconds>-p<pid>``
  (``${run_stamp:}``), so two runs started in the same second never share a folder, a log or a checkpoint
  path. While a run trains it holds an exclusive lock on ``<run_dir>/.run.lock`` (released by the OS when the
  process dies, ``kill -9`` included); a second process refuses to train in a locked folder.
* **Identity.** A run's identity is its resolved config without the keys that do not change what is trained
  (:data:`VOLATILE_KEYS`: where outputs go, loggers, callbacks, the step budget, progress display, claim
  bookkeeping). ``ckpt_path=last`` resumes the newest run of this name *with the same identity* (same seed, same
  overrides that matter) — the newest one that saved a checkpoint; one that never did restarts in its own
  folder — and refuses in one line when there is none, naming how the newest run of that name differs, or when
  that run is still training (its lock is held). The resumed run continues in its own folder (Hydra's fresh
  folder of the resuming command is folded into it: its ``.hydra`` snapshot goes to
  ``.hydra/resume-<stamp>``, its log is appended to the run's ``train.log``).
* **Honest resumes.** Resuming from a checkpoint whose stored config differs from this one at an identity key is
  refused, naming the keys (``module.optimizer.lr: checkpoint 0.0002, now 0.05``); a budget below the
  checkpoint's step is refused; a larger one is applied (and recorded in ``config.yaml`` and ``run.json``).
* **Clean folders.** A resumed run deletes the ``*.tmp`` files of a save its predecessor was killed in and the
  epoch checkpoint a kill left untracked, so an interrupted-and-resumed run's ``checkpoints/`` holds the same
  files as an uninterrupted one's.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from shared.engine.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    adopt_as_last,
    check_resumable,
    load_checkpoint_file,
    newest_checkpoint,
    remove_partial_writes,
    stale_checkpoints,
)
from shared.engine.cli import UserError
from shared.engine.console import harness_callbacks
from shared.engine.loggers import LoggerRunIds, restore_logger_ids
from shared.engine.results import write_json_atomic
from shared.methods.registry import upgrade_config
from shared.nn.weights import check_state_dict

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".run.lock"
CONFIG_FILE = "config.yaml"

# Config keys that do not change what a run trains: excluded from its identity (see the module docstring).
VOLATILE_KEYS = (
    "run_dir", "ckpt_path", "paths", "hydra", "logger", "callbacks", "compile",
    "pipeline", "claim", "report", "expected", "quick_overrides",
    "trainer.max_steps", "trainer.max_epochs", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "data.num_workers", "data.pin_memory",
)


class ConfigError(UserError):
    """A configuration that cannot run (missing data path, unknown option, value out of range, ...)."""


# --------------------------------------------------------------------------------------------- run folders
_STAMP: str | None = None


def run_stamp() -> str:
    """``<date>_<time>-<microseconds>-p<pid>``: this command's run-folder name (fixed once per command)."""
    global _STAMP
    if _STAMP is None:
        now = _dt.datetime.now()
        _STAMP = now.strftime("%Y-%m-%d_%H-%M-%S") + f"-{now.microsecond:06d}-p{os.getpid()}"
    return _STAMP


def new_run_stamp() -> None:
    """Forget the stamp: the next command in this process gets its own folder."""
    global _STAMP
    _STAMP = None


if not OmegaConf.has_resolver("run_stamp"):
    OmegaConf.register_new_resolver("run_stamp", run_stamp)


def _rank_zero() -> bool:
    return rank_zero_only.rank == 0 and int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def set_run_dir(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    if run_dir is None:
        run_dir = cfg.get("run_dir")
    if run_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig
            run_dir = HydraConfig.get().runtime.output_dir
        except ValueError:
            run_dir = Path(str(cfg.get("paths", {}).get("output_dir", "outputs"))) / str(cfg.get("name", "run")) \
                / run_stamp()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Path(run_dir)


_LOCKS: dict[str, int] = {}


def _lock_path(run_dir) -> str:
    return str(Path(run_dir).resolve() / LOCK_FILE)


def lock_holder(run_dir) -> int | None:
    """The pid training in ``run_dir`` now (its lock is held), else None."""
    path = _lock_path(run_dir)
    if path in _LOCKS:
        return os.getpid()
    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(Path(path).read_text().strip() or 0) or -1
            except (OSError, ValueError):
                return -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold ``<run_dir>/.run.lock`` exclusively while training (module docstring); re-entrant in one process."""
    path = _lock_path(run_dir)
    if path in _LOCKS or not _rank_zero():
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = lock_holder(run_dir)
        raise ConfigError(f"run folder {run_dir} is in use by another process (pid {holder}); "
                          "wait for it, or start a new run") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _LOCKS[path] = fd
    try:
        yield
    finally:
        _LOCKS.pop(path, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------- validation
def check_paths(cfg: DictConfig) -> None:
    """Fail before training on a data/weights path that does not exist (one line, naming the key)."""
    def walk(node, prefix):
        if isinstance(node, DictConfig):
            for k in node.keys():
                key = f"{prefix}.{k}" if prefix else str(k)
                if OmegaConf.is_missing(node, k):
                    if key.startswith(("data", "module", "model")):
                        raise ConfigError(f"required config value {key} is not set (pass {key}=...)")
                    continue
                try:
                    v = node[k]
                except Exception:  # an interpolation that cannot resolve yet: instantiate will say why
                    continue
                if isinstance(v, str) and k in ("root", "path", "csv_path", "video_root", "weights_path",
                                                "split_file") and v and not Path(v).exists():
                    raise ConfigError(f"{key}: path does not exist: {v}")
                if isinstance(v, DictConfig):
                    walk(v, key)
    walk(cfg.get("data"), "data")


def _number(key: str, value, *, integer=False, low=None, high=None, low_open=False, high_open=False,
            allow=(), expected: str = "") -> None:
    if value in allow and not isinstance(value, bool):
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and integer:
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) \
            and (high is None or (v < high if high_open else v <= high))
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _optimizer_nodes(node, prefix):
    if isinstance(node, Mapping):
        target = str(node.get("_target_", ""))
        if target.startswith("torch.optim.") and ".lr_scheduler." not in target:
            yield prefix, node
        for k, v in node.items():
            yield from _optimizer_nodes(v, f"{prefix}.{k}")


def check_values(cfg: DictConfig) -> None:
    """Range, type and finiteness checks of the run-level values, naming the key (before anything is built).
    Component values (a module's ``ema_decay``, a network's ``norm_groups``, a datamodule's ``batch_size``) are
    checked by the constructors they enter."""
    try:
        seed = cfg.get("seed")
    except Exception as e:  # noqa: BLE001 - an unresolvable interpolation
        raise ConfigError(f"seed: {e}") from None
    _number("seed", seed, integer=True, low=0, expected="a non-negative integer")
    t = cfg.get("trainer") or {}
    ms = t.get("max_steps", -1)
    _number("trainer.max_steps", ms, integer=True, low=1, allow=(-1,),
            expected="a positive integer (or -1 with trainer.max_epochs set)")
    me = t.get("max_epochs", None)
    if me is not None:
        _number("trainer.max_epochs", me, integer=True, low=1, allow=(-1,), expected="a positive integer or -1")
    if int(ms) == -1 and (me is None or int(me) == -1):
        raise ConfigError("trainer.max_steps=-1 and trainer.max_epochs=-1 would train forever; set one of them")
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        if t.get(key) is not None:
            _number(f"trainer.{key}", t.get(key), integer=True, low=1, expected="a positive integer")
    if t.get("gradient_clip_val") is not None:
        _number("trainer.gradient_clip_val", t.get("gradient_clip_val"), low=0, expected="a finite number >= 0")
    if t.get("fast_dev_run") not in (None, True, False) and not isinstance(t.get("fast_dev_run"), int):
        raise ConfigError(f"trainer.fast_dev_run must be true, false or a number of batches, "
                          f"got {t.get('fast_dev_run')!r}")
    module = cfg.get("module")
    if isinstance(module, DictConfig):
        try:
            container = OmegaConf.to_container(module, resolve=True)
        except Exception:  # noqa: BLE001 - instantiate reports unresolvable values with their key
            container = {}
        for key, node in _optimizer_nodes(container, "module"):
            if "lr" in node:
                _number(f"{key}.lr", node["lr"], low=0, low_open=True, expected="a finite number > 0")
            for k in ("weight_decay", "momentum"):
                if k in node:
                    _number(f"{key}.{k}", node[k], low=0, expected="a finite number >= 0")
            if "eps" in node:
                _number(f"{key}.eps", node["eps"], low=0, low_open=True, expected="a finite number > 0")
            if "betas" in node:
                betas = node["betas"]
                if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
                    raise ConfigError(f"{key}.betas must be two numbers in [0, 1), got {betas!r}")
                for b in betas:
                    _number(f"{key}.betas", b, low=0, high=1, high_open=True, expected="two numbers in [0, 1)")


# --------------------------------------------------------------------------------------------- identity
def _flatten(node, prefix="", out=None) -> dict:
    out = {} if out is None else out
    if isinstance(node, Mapping):
        if not node and prefix:
            out[prefix] = {}
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node
    return out


def _volatile(key: str) -> bool:
    return any(key == v or key.startswith(v + ".") for v in VOLATILE_KEYS)


def identity_items(config: Mapping) -> dict:
    """The identity of a resolved run config: its flattened keys except :data:`VOLATILE_KEYS`."""
    flat = _flatten(upgrade_config(dict(config)))
    return {k: v for k, v in flat.items() if not _volatile(k)}


def identity_hash(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(identity_items(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(now: Mapping, then: Mapping) -> list[tuple[str, object, object]]:
    """``[(key, then_value, now_value)]`` for identity keys that differ (missing on one side: ``<unset>``)."""
    a, b = identity_items(now), identity_items(then)
    unset = "<unset>"
    return [(k, b.get(k, unset), a.get(k, unset)) for k in sorted(set(a) | set(b))
            if a.get(k, unset) != b.get(k, unset)]


def describe_diff(diff, limit: int = 3) -> str:
    shown = ", ".join(f"{k}: checkpoint {t!r}, now {n!r}" for k, t, n in diff[:limit])
    return shown + (f" (+{len(diff) - limit} more)" if len(diff) > limit else "")


def _resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# --------------------------------------------------------------------------------------------- resuming
def _run_folder_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint file lives in (``<run>/checkpoints/x.ckpt``), if it is one."""
    parent = ckpt.resolve().parent
    run = parent.parent
    if parent.name == "checkpoints" and ((run / CONFIG_FILE).is_file() or (run / RUN_FILE).is_file()):
        return run
    return None


def _candidate_runs(cfg: DictConfig, run_dir: Path) -> list[Path]:
    """Earlier run folders of this name: ``<output_dir>/<name>/*``, a sweep's ``<output_dir>/multirun/<name>/*/*``
    and the folders beside the current one (an explicit ``run_dir``)."""
    out_dir = Path(str(OmegaConf.select(cfg, "paths.output_dir", default="outputs")))
    name = str(cfg.get("name", "default"))
    here = run_dir.resolve()
    found = {}
    for root, pattern in ((out_dir / name, "*"), (out_dir / "multirun" / name, "*/*"), (run_dir.parent, "*")):
        for d in root.glob(pattern):
            if d.is_dir() and (d / CONFIG_FILE).is_file() and d.resolve() != here:
                found.setdefault(str(d.resolve()), d)
    return list(found.values())


def _folder_config(d: Path) -> dict | None:
    try:
        return OmegaConf.to_container(OmegaConf.load(d / CONFIG_FILE), resolve=False)
    except Exception:  # noqa: BLE001 - an unreadable snapshot is not a run to resume
        return None


def _activity(d: Path) -> int:
    ck = newest_checkpoint(d / "checkpoints")
    return (ck or d / CONFIG_FILE).stat().st_mtime_ns


def find_last(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, Path]:
    """``ckpt_path=last``: ``(checkpoint or None, folder to continue in)`` (module docstring)."""
    own = newest_checkpoint(run_dir / "checkpoints")
    if own is not None:
        return own, run_dir
    mine = _resolved(cfg)
    ident = identity_hash(mine)
    runs = _candidate_runs(cfg, run_dir)
    same, other = [], []
    for d in runs:
        c = _folder_config(d)
        if c is None:
            continue
        (same if identity_hash(c) == ident else other).append((d, c))
    name = cfg.get("name")
    if not same:
        if not other:
            where = Path(str(OmegaConf.select(cfg, "paths.output_dir", default="outputs"))) / str(name)
            raise CheckpointError(f"ckpt_path=last: no earlier run named {name!r} under {where}")
        d, c = max(other, key=lambda dc: _activity(dc[0]))
        diff = config_diff(mine, c)
        shown = ", ".join(f"{k}: {t!r} there, {n!r} now" for k, t, n in diff[:3])
        raise CheckpointError(f"ckpt_path=last: no earlier run named {name!r} has this configuration "
                              f"({len(other)} differ; the newest, {d}, in {shown}); refusing to resume another run")
    with_ckpt = [(d, c) for d, c in same if newest_checkpoint(d / "checkpoints") is not None]
    d, _ = max(with_ckpt or same, key=lambda dc: _activity(dc[0]))
    holder = lock_holder(d)
    if holder is not None:
        raise CheckpointError(f"ckpt_path=last: the newest run with this configuration, {d}, is still training "
                              f"(pid {holder}); refusing to resume it twice")
    ck = newest_checkpoint(d / "checkpoints")
    if ck is None:
        log.info("ckpt_path=last: %s has not saved a checkpoint yet; restarting it from step 0", d)
    return ck, d


def _adopt_folder(cfg: DictConfig, fresh: Path, target: Path) -> None:
    """Continue in ``target`` instead of the fresh folder this command was given (module docstring)."""
    with open_dict(cfg):
        cfg.run_dir = str(target)
    if fresh.resolve() == target.resolve() or not _rank_zero():
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and Path(os.path.realpath(h.baseFilename)).parent == fresh.resolve():
            new_path = target / Path(h.baseFilename).name
            h.flush()
            with contextlib.suppress(OSError):
                with open(new_path, "a") as dst:
                    dst.write(Path(h.baseFilename).read_text())
            new = logging.FileHandler(new_path, mode="a")
            new.setLevel(h.level)
            new.setFormatter(h.formatter)
            root.removeHandler(h)
            h.close()
            root.addHandler(new)
            Path(h.baseFilename).unlink(missing_ok=True)
    snap = fresh / ".hydra"
    if snap.is_dir():
        dest = target / ".hydra" / f"resume-{run_stamp()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(snap), str(dest))
    with contextlib.suppress(OSError):
        fresh.rmdir()   # only if nothing else was written there
    log.info("resuming in the run's own folder %s", target)


_LOADED: dict[str, tuple[int, dict]] = {}   # checkpoint read by prepare_resume, handed to fit (read once)


def _read_for_resume(path: Path) -> dict:
    key, mtime = str(path.resolve()), path.stat().st_mtime_ns
    hit = _LOADED.get(key)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    saved = load_checkpoint_file(path)
    _LOADED.clear()
    _LOADED[key] = (mtime, saved)
    return saved


def prepare_resume(cfg: DictConfig) -> Path | None:
    """Resolve ``cfg.ckpt_path`` (``last`` or a file) to a file and the folder to continue in, check that the
    checkpoint may be resumed by this config (:func:`check_resume`), and only then set ``cfg.ckpt_path`` and
    ``cfg.run_dir`` (continuing in the checkpoint's run folder). Idempotent. Returns the checkpoint or None."""
    run_dir = Path(cfg.run_dir)
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        found, target = find_last(cfg, run_dir)
    else:
        found = Path(str(ckpt))
        if found.is_dir():
            raise CheckpointError(f"ckpt_path: {ckpt} is a folder; pass a .ckpt file (or ckpt_path=last)")
        if not found.is_file():
            raise CheckpointError(f"ckpt_path: checkpoint not found: {ckpt}")
        target = _run_folder_of(found) or run_dir
    if found is not None:
        saved = _read_for_resume(found)
        check_resume(cfg, saved, found)
    if target.resolve() != run_dir.resolve() and _rank_zero():
        holder = lock_holder(target)
        if holder is not None:
            raise CheckpointError(f"{target} is still training (pid {holder}); refusing to resume it twice")
    _adopt_folder(cfg, run_dir, target)
    with open_dict(cfg):
        cfg.ckpt_path = None if found is None else str(found.resolve())
    return found


def check_resume(cfg: DictConfig, saved: dict, ckpt) -> None:
    """Refuse a resume that would not honestly continue ``saved`` (module docstring)."""
    check_resumable(saved, ckpt)
    restore_logger_ids(OmegaConf.create({}), saved, where=str(ckpt))   # stored logger versions are plain names
    then = saved.get("run_config")
    if not isinstance(then, Mapping):
        raise CheckpointError(f"{ckpt} carries no run config, so it cannot be checked against this one; "
                              "it was not written by shared.engine.train")
    diff = config_diff(_resolved(cfg), then)
    if diff:
        raise ConfigError(f"resuming {ckpt}: this config differs from the checkpoint's at {describe_diff(diff)}; "
                          "resume with the checkpoint's values, or start a new run without ckpt_path")
    step, max_steps = int(saved["global_step"]), int(cfg.trainer.max_steps)
    if max_steps != -1 and max_steps < step:
        raise ConfigError(f"resuming {ckpt}: trainer.max_steps={max_steps} is below the checkpoint's step {step}; "
                          f"nothing would be trained (pass trainer.max_steps >= {step})")


def _write_run_file(run_dir: Path, cfg: DictConfig, ckpt, saved: dict | None) -> None:
    path = run_dir / RUN_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    now = _dt.datetime.now().isoformat(timespec="seconds")
    if not record:
        record = {"name": cfg.get("name"), "seed": int(cfg.seed), "identity": identity_hash(_resolved(cfg)),
                  "started": now, "pid": os.getpid(), "resumes": []}
    if ckpt is not None:
        then = (saved or {}).get("run_config") or {}
        budget = {k: {"checkpoint": OmegaConf.select(OmegaConf.create(then), k, default=None),
                      "now": OmegaConf.select(cfg, k, default=None)} for k in ("trainer.max_steps",)}
        record.setdefault("resumes", []).append({"at": now, "pid": os.getpid(), "from": str(ckpt),
                                                 "step": int((saved or {}).get("global_step", 0)),
                                                 "budget": budget})
    write_json_atomic(path, record)


# --------------------------------------------------------------------------------------------- building
def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks=()) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [*extra_callbacks, LoggerRunIds()]   # the loggers' run ids go into every checkpoint
    callbacks += harness_callbacks(cfg)               # step progress bar, quiet console (shared/engine/console.py)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("_target_", None)
    if isinstance(trainer_cfg.get("strategy"), dict):   # a strategy object (FSDP settings), not just a name
        trainer_cfg["strategy"] = instantiate(cfg.trainer.strategy)
    try:
        return pl.Trainer(**trainer_cfg, default_root_dir=str(run_dir), callbacks=callbacks,
                          logger=loggers or False, plugins=[AtomicCheckpointIO()])
    except TypeError as e:
        raise ConfigError(f"trainer: {e}") from None
    except Exception as e:  # noqa: BLE001 - Lightning's MisconfigurationException and friends: a bad trainer.* value
        if type(e).__name__ in ("MisconfigurationException", "ValueError", "RuntimeError"):
            raise ConfigError(f"trainer: {str(e).strip().splitlines()[0]}") from None
        raise


def preflight(datamodule, module) -> None:
    """Checks that need the built objects, before any step: the module's own sampler config (used by sample grids
    and every later ``sample``), and that a training item fits the network (channels, and the spatial size the
    module samples at). A corrupt dataset fails here too, on its first item."""
    if callable(getattr(module, "sampler_config", None)):
        try:
            module.sampler_config()
        except ValueError as e:
            raise ConfigError(f"module.sampler: {e}") from None
    train = getattr(datamodule, "train_set", None)
    if train is None or len(train) == 0 or getattr(module, "latent", None) is not None:
        return
    item = train[0]
    x = item.get("x") if isinstance(item, dict) else None
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        return
    shape = tuple(int(d) for d in x.shape)
    net_ch = getattr(getattr(module, "net", None), "in_channels", None)
    if isinstance(net_ch, int) and net_ch != shape[0]:
        raise ConfigError(f"model.in_channels={net_ch} but the training items have {shape[0]} channel(s) "
                          f"(shape {shape}); set model.in_channels (and module.sample_shape) to match the data")
    want = getattr(module, "sample_shape", None)
    if want and len(want) == len(shape) and (want[0] != shape[0] or tuple(want[-2:]) != shape[-2:]):
        raise ConfigError(f"module.sample_shape={list(want)} does not match the training items {list(shape)} "
                          "(channels and height x width); set data.size / module.sample_shape consistently")


def build(cfg: DictConfig):
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    preflight(datamodule, module)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("compile") and torch.cuda.is_available():
        module.net = torch.compile(module.net)
    return datamodule, module


def check_config(cfg: DictConfig) -> None:
    """Everything checkable before building: values and paths."""
    check_values(cfg)
    check_paths(cfg)


def _prune_after_resume(cfg: DictConfig, run_dir: Path, ckpt, saved: dict) -> None:
    ckpt_dir = run_dir / "checkpoints"
    node = OmegaConf.select(cfg, "callbacks.checkpoint", default=None)
    keeps_one = node is not None and int(node.get("save_top_k", 1)) == 1 and node.get("monitor") is None
    if keeps_one and Path(ckpt).resolve().parent == ckpt_dir.resolve():
        for p in stale_checkpoints(ckpt_dir, Path(ckpt), saved):
            log.info("removing %s: an epoch checkpoint a killed run left untracked", p.name)
            p.unlink(missing_ok=True)


def fit(cfg: DictConfig, run_dir=None, extra_callbacks=()):
    """Train the module a config describes; returns ``(module, datamodule, trainer)``."""
    set_run_dir(cfg, run_dir)
    check_config(cfg)
    prepare_resume(cfg)
    run_dir = Path(cfg.run_dir)
    with run_lock(run_dir):
        ckpt = cfg.get("ckpt_path") or None
        saved = None
        if _rank_zero():
            remove_partial_writes(run_dir / "checkpoints")
            for name in (CONFIG_FILE, RUN_FILE):   # a kill while writing the run's own files
                (run_dir / (name + ".tmp")).unlink(missing_ok=True)
            if ckpt is not None and Path(ckpt).resolve().parent == (run_dir / "checkpoints").resolve() \
                    and Path(ckpt).resolve() == (newest_checkpoint(run_dir / "checkpoints") or Path()).resolve():
                ckpt = str(adopt_as_last(Path(ckpt)))
                with open_dict(cfg):
                    cfg.ckpt_path = ckpt
        if ckpt is None and _rank_zero() and newest_checkpoint(run_dir / "checkpoints") is not None:
            raise ConfigError(f"run folder {run_dir} already holds a run's checkpoints; resume it with ckpt_path=last, "
                              "or train into a new folder")
        if ckpt is not None:  # fail in one line, naming keys, before Lightning's long load error
            saved = _read_for_resume(Path(ckpt))
            check_resume(cfg, saved, ckpt)
            restore_logger_ids(cfg, saved, where=str(ckpt))   # wandb continues the same run, TB/CSV the same version
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        datamodule, module = build(cfg)
        if saved is not None:
            check_state_dict(module, saved["state_dict"], what=str(ckpt))
        trainer = build_trainer(cfg, run_dir, extra_callbacks)
        if _rank_zero():   # DDP ranks > 0 re-run this script: one config snapshot per run
            if saved is not None:
                _prune_after_resume(cfg, run_dir, ckpt, saved)
            tmp = run_dir / (CONFIG_FILE + ".tmp")   # atomically: a kill here must not leave a truncated snapshot
            OmegaConf.save(cfg, tmp, resolve=True)
            os.replace(tmp, run_dir / CONFIG_FILE)
            _write_run_file(run_dir, cfg, ckpt, saved)
        t0 = time.time()
        _LOADED.clear()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        module.fit_wall_time_s = time.time() - t0
    return module, datamodule, trainer


# kept for callers of the old name
def resolve_ckpt(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path`` resolved to a file (see :func:`prepare_resume`); may move ``cfg.run_dir``."""
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    found = prepare_resume(cfg)
    return None if found is None else str(found)
