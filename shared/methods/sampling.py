"""Sampler configurations: one validated dict per call, from the module's defaults and the caller's overrides.

A sampler config is ``{"name": ..., "steps": ..., <the named sampler's options>, "guidance_scale": ...}``. The
keys a caller passes must exist for the named sampler (a misspelled ``stepz`` or an unknown name is a one-line
error listing the valid ones, not silently dropped); keys of the module's *defaults* that the chosen sampler
does not take are dropped (a default ``eta`` does not stop a switch to ``ddpm``). Values are checked where they
enter: ``steps`` a positive integer, ``eta`` finite and >= 0, ``guidance_scale`` finite (a number, per-frame
values, or ``[first, last]``).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

from shared.diffusion.guidance import check_guidance_scale

__all__ = ["SamplerConfigError", "resolve_sampler_config", "sampler_options", "split_sampler_config", "run_sampler",
           "COMMON_KEYS", "EXTENSION_METHODS", "set_sampling_observer"]

# keys every sampler config may carry, whatever the sampler: handled by the sampling loop, not the sampler
# (``extension`` / ``w_r``: how the loop completes a sample given its known part, see ``cond={"x_known", "known"}``)
COMMON_KEYS = ("name", "steps", "guidance_scale", "extension", "w_r")
EXTENSION_METHODS = ("replacement", "reconstruction")
# arguments of a sampler function that the loop itself supplies
_SUPPLIED = ("denoise", "denoise_v", "x_T", "schedule", "steps", "generator", "return_trajectory")


class SamplerConfigError(ValueError):
    """A sampler configuration that cannot run (unknown name or key, a value out of range)."""


def sampler_options(fn: Callable) -> set[str]:
    """The options a sampler function takes beyond what the loop supplies."""
    return {k for k in inspect.signature(fn).parameters if k not in _SUPPLIED}


def _check_values(cfg: dict) -> None:
    steps = cfg.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SamplerConfigError(f"sampler.steps must be a positive integer, got {steps!r}")
    if "eta" in cfg:
        eta = cfg["eta"]
        try:
            ok = math.isfinite(float(eta)) and float(eta) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SamplerConfigError(f"sampler.eta must be a finite number >= 0, got {eta!r}")
    if cfg.get("extension", "reconstruction") not in EXTENSION_METHODS:
        raise SamplerConfigError(f"sampler.extension must be one of {EXTENSION_METHODS}, got {cfg['extension']!r}")
    if "w_r" in cfg:
        try:
            ok = math.isfinite(float(cfg["w_r"])) and float(cfg["w_r"]) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SamplerConfigError(f"sampler.w_r must be a finite number >= 0, got {cfg['w_r']!r}")
    if "guidance_scale" in cfg:
        try:
            check_guidance_scale(cfg["guidance_scale"])
        except ValueError as e:
            raise SamplerConfigError(f"sampler.{e}") from None


def resolve_sampler_config(samplers: Mapping[str, Callable], defaults: Mapping, override: Mapping | None) -> dict:
    """Merge ``override`` onto ``defaults`` for the sampler functions ``samplers`` (name -> function)."""
    override = dict(override or {})
    defaults = dict(defaults or {})
    name = override.get("name", defaults.get("name"))
    if name not in samplers:
        raise SamplerConfigError(f"unknown sampler {name!r}; choose one of {sorted(samplers)}")
    allowed = set(COMMON_KEYS) | sampler_options(samplers[name])
    unknown = sorted(set(override) - allowed)
    if unknown:
        raise SamplerConfigError(f"unknown sampler option(s) {unknown} for sampler {name!r}; "
                                 f"valid: {sorted(allowed)}")
    cfg = {k: v for k, v in defaults.items() if k in allowed}
    cfg.update(override)
    cfg["name"] = name
    if isinstance(cfg.get("steps"), float) and float(cfg["steps"]).is_integer():
        cfg["steps"] = int(cfg["steps"])
    cfg.setdefault("guidance_scale", 1.0)
    _check_values(cfg)
    return cfg


def split_sampler_config(cfg: Mapping) -> tuple[str, int | None, dict, dict]:
    """``(name, steps, sampler options, loop options)`` of a resolved config; the loop options are
    ``guidance_scale``, ``extension`` and ``w_r`` (what the sampling loop, not the sampler, uses)."""
    opts = dict(cfg)
    name, steps = opts.pop("name"), opts.pop("steps", None)
    loop = {k: opts.pop(k) for k in ("guidance_scale", "extension", "w_r") if k in opts}
    return name, steps, opts, loop


# An observer sees every sampling run (the harness shows a progress bar over its network evaluations):
# ``observer(sampler_name, steps, batch) -> context manager yielding tick()``, called once per denoiser call.
_OBSERVER: Callable | None = None


def set_sampling_observer(observer: Callable | None) -> Callable | None:
    """Install ``observer`` (or ``None``) for every :func:`run_sampler` call; returns the previous one."""
    global _OBSERVER
    previous, _OBSERVER = _OBSERVER, observer
    return previous


def run_sampler(fn: Callable, denoise: Callable, x_T, schedule, steps: int | None, generator, options: Mapping):
    """Call a sampler function with its validated options (and the generator, if it draws noise)."""
    kw = dict(options)
    if "generator" in inspect.signature(fn).parameters:
        kw["generator"] = generator
    if _OBSERVER is None:
        return fn(denoise, x_T, schedule, steps, **kw)
    name = getattr(fn, "__name__", "sampler").removesuffix("_sample")
    with _OBSERVER(name, steps, int(x_T.shape[0])) as tick:
        def counted(*args, **kwargs):
            out = denoise(*args, **kwargs)
            tick()
            return out

        return fn(counted, x_T, schedule, steps, **kw)
