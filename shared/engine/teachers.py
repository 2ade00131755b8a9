"""Teachers of the distillation pipelines: trained once per (recipe, seed), cached, or loaded from a file.

One EDM teacher serves knowledge distillation, progressive distillation and consistency distillation. Papers
never import each other, so each pipeline gets its teacher from :func:`teacher_for_seed` — the same recipe (the
experiment's ``module``/``model``/``data``/``trainer``) and seed give bit-identical teachers on CPU, and a
teacher cache under ``<paths.output_dir>/teacher_cache/<key>`` lets the second and third pipelines load instead
of re-training. The key (:func:`teacher_key`) hashes the recipe, the seed and the source of every project module
the training imports — found by following the imports of the recipe's ``_target_`` classes and of the training
entry point (:func:`source_digest`), not from a hand-kept list. ``claim.teacher_ckpt`` (a path, ``{seed}``
substituted) reuses a checkpoint file instead.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.methods.registry import module_from_checkpoint, upgrade_config

log = logging.getLogger(__name__)
_ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = ("shared", "papers")


def _module_file(name: str) -> Path | None:
    base = _ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(path: Path) -> set[str]:
    """Project modules a source file imports (at top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)   # ``from pkg import submodule``
    return {m for m in out if m.split(".")[0] in _PACKAGES}


def import_closure(roots: Iterable[str]) -> list[Path]:
    """Source files of the project modules ``roots`` import, transitively (packages' ``__init__`` included)."""
    files: dict[str, Path] = {}
    stack = [r for r in roots if r.split(".")[0] in _PACKAGES]
    while stack:
        name = stack.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__ and a/b/__init__ too
            sub = ".".join(parts[:k])
            if sub in files:
                continue
            f = _module_file(sub)
            if f is None:
                continue
            files[sub] = f
            stack.extend(_imports(f))
    return sorted(set(files.values()))


def config_targets(node) -> list[str]:
    """The modules of every ``_target_`` (and latent ``base``) in a config."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("_target_", "base") and isinstance(v, str) and "." in v:
                out.append(v.rpartition(".")[0])
            else:
                out.extend(config_targets(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(config_targets(v))
    return out


def source_digest(roots: Iterable[str]) -> str:
    """Hash of the source of every project module ``roots`` import (see :func:`import_closure`)."""
    h = hashlib.sha256()
    for f in import_closure(roots):
        h.update(str(f.relative_to(_ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def save_module(module, path: str | Path) -> Path:
    """A minimal checkpoint (weights + resolved run config) that ``module_from_checkpoint`` rebuilds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": module.state_dict(), "run_config": module.run_config,
                "schedule": module.schedule.describe()}, tmp)
    tmp.replace(path)
    return path


def teacher_key(cfg: DictConfig, seed: int) -> str:
    """Hash of everything that determines the trained teacher."""
    from shared.engine.claims import variant_config
    sub = variant_config(cfg, None, seed)
    parts = {k: upgrade_config(OmegaConf.to_container(sub[k], resolve=True)) if sub.get(k) is not None else None
             for k in ("model", "module", "data")}  # a stage with its network under ``module`` has model: null
    parts["max_steps"] = int(sub.trainer.max_steps)
    parts["seed"] = int(seed)
    parts["code"] = source_digest([*config_targets(parts), "shared.engine.run"])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_for_seed(cfg: DictConfig, seed: int):
    """Return ``(teacher_module, ckpt_path, how)``: loaded from ``claim.teacher_ckpt``, from the cache, or trained
    with ``fit_variant`` (the experiment's ``module``/``trainer`` config) and cached."""
    from shared.engine.claims import fit_variant, note_reused

    c = cfg.claim
    if c.get("teacher_ckpt"):
        path = str(c.teacher_ckpt).format(seed=seed)
        return module_from_checkpoint(path), path, "teacher_ckpt"
    own = Path(cfg.run_dir) / f"teacher_seed{seed}" / "teacher.ckpt"
    if own.is_file():   # a re-run in this claim's folder: the teacher it trained (the students' checkpoints name it)
        note_reused(f"teacher_own:seed{seed}")
        return module_from_checkpoint(own), str(own), "own"
    if not c.get("teacher_cache", True) or cfg.trainer.get("fast_dev_run"):   # never cache a 1-step smoke teacher
        module = fit_variant(cfg, f"teacher_seed{seed}", seed=seed)
        return module, str(save_module(module, own)), "trained"
    cache = Path(cfg.paths.output_dir) / "teacher_cache" / teacher_key(cfg, seed) / "teacher.ckpt"
    # one trainer per key: a second process that needs the same teacher (two claims run side by side) waits for the
    # first and loads its file instead of training a duplicate
    with cache_lock(cache.parent):
        if cache.is_file():
            log.info("teacher seed %s: cached %s", seed, cache)
            note_reused(f"teacher_cache:seed{seed}")  # this run's wall time excludes the teacher's training
            return module_from_checkpoint(cache), str(cache), "cache"
        module = fit_variant(cfg, f"teacher_seed{seed}", seed=seed)
        path = save_module(module, own)
        save_module(module, cache)
    return module, str(path), "trained"


@contextlib.contextmanager
def cache_lock(folder: Path):
    """An exclusive lock on ``folder`` (created) across processes, held for the ``with`` block: ``flock`` on
    ``folder/.lock``. Where ``fcntl`` does not exist (Windows) the block runs unlocked, as before."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def teacher_with_baseline(cfg: DictConfig, seed: int, teachers: dict, baseline: dict[int, list],
                          reference: torch.Tensor | None, save_steps=()):
    """The per-seed prologue of every distillation pipeline: the teacher of ``seed`` (how it was obtained goes into
    ``teachers``) and, when ``reference`` is given, its DDIM FD_judge at ``claim.ddim_steps`` appended to
    ``baseline[steps]``. Returns ``(teacher, ckpt_path)``, or ``(None, ckpt_path)`` when ``claim.teachers_only``."""
    teacher, path, how = teacher_for_seed(cfg, int(seed))
    teachers[str(seed)] = how
    if cfg.claim.get("teachers_only"):
        return None, path
    if reference is not None:
        for steps, v in teacher_ddim_fd(cfg, teacher, seed, reference, save_steps).items():
            baseline[steps].append(v)
    return teacher, path


def teacher_ddim_fd(cfg: DictConfig, teacher, seed: int, reference: torch.Tensor, save_steps=()) -> dict[int, float]:
    """FD_judge of the teacher's deterministic DDIM samples (on the nested EDM grid) at each of
    ``cfg.claim.ddim_steps``; the baseline every few-step paper's table compares against. Grids of the
    step counts in ``save_steps`` are saved for the first seed."""
    from shared.diffusion.edm import nested_grid
    from shared.engine.video_io import save_image_grid
    from shared.metrics.judge import fd_judge

    c = cfg.claim
    out = {}
    for steps in c.ddim_steps:
        g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
        times = nested_grid(teacher.schedule, int(steps))
        x = teacher.sample(int(c.num_samples), sampler={"name": "ddim", "steps": int(steps), "times": times},
                           generator=g)
        out[int(steps)] = fd_judge(x, reference)
        if int(seed) == int(c.seeds[0]) and int(steps) in save_steps:
            save_image_grid(x[:64], f"{cfg.run_dir}/teacher_ddim_{steps}step.png", nrow=8)
    return out


def stage_for_seed(cfg: DictConfig, stage: DictConfig, seed: int):
    """:func:`teacher_for_seed` of a *stage recipe* instead of the experiment's own model: ``stage`` holds ``model``,
    ``module``, ``data`` (each replacing the experiment's node whole; interpolations resolve in the result, so
    ``net: ${model}`` is the stage's model) and ``max_steps``. The same recipe and seed give the same cached model
    in every experiment that names it (e.g. the image model several video papers start from)."""
    from shared.engine.claims import variant_config

    spec = OmegaConf.to_container(stage, resolve=False)
    missing = [k for k in ("model", "module", "data", "max_steps") if k not in spec]
    if missing:
        raise ValueError(f"a stage recipe needs model, module, data and max_steps; missing {missing}")
    over = {k: spec[k] for k in ("model", "module", "data")}
    over["trainer.max_steps"] = int(spec["max_steps"])
    return teacher_for_seed(variant_config(cfg, over, seed), int(seed))


def image_stage_weights(cfg: DictConfig, stage: DictConfig, seed: int, save: bool = True):
    """:func:`stage_for_seed` of the image stage the video papers start from, timed: ``(module in eval mode, its
    sampling network's weights file or None, {"image_stage_s", "image_stage_cached"})``. With ``save`` the weights go
    to ``<run_dir>/weights_seed<seed>/image_unet.safetensors`` (what an inflated video model loads strictly)."""
    import time

    from shared.nn.weights import save_weights

    t0 = time.time()
    module, _, how = stage_for_seed(cfg, stage, seed)
    module.eval()
    out = {"image_stage_s": time.time() - t0, "image_stage_cached": float(how != "trained")}
    path = None
    if save:
        path = save_weights(module.sampling_net(True),
                            Path(cfg.run_dir) / f"weights_seed{seed}" / "image_unet.safetensors")
    return module, path, out
