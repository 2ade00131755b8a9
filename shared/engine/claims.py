"""Helpers for multi-stage claim checks (``pipeline:`` experiments): train variants, gather per-seed
metrics, summarise the spread and write ``results.json`` in the run folder — and, only when publishing, under
``papers/<id>/results``.

Publishing is off unless asked for (``++claim.publish=true``, what the ``make <paper>`` targets pass), and
:func:`check_publish` refuses it, in one line and before anything is trained, when the run is not the
experiment's committed protocol: quick overrides (``quick=true``, ``quick_overrides``, ``claim.smoke``,
``trainer.fast_dev_run``), fewer seeds, a smaller step budget, or any other changed value. Every other command
leaves ``papers/`` untouched.

A pipeline reads its knobs from ``cfg.claim`` (seeds, variants, evaluation protocol) and calls
:func:`fit_variant` for each trained model, so every model is trained by exactly the code of
``python -m shared.engine.train``.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from shared.engine.console import claim_summary
from shared.engine.results import write_results
from shared.engine.run import ConfigError, fit

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Stages this process took from an earlier run's folder instead of computing them (a resumed finished
# variant, a cached JSON): ``finish`` records them, so a results.json's wall time is not mistaken for the
# claim's full cost (RESULTS.md, "Claim-suite wall times"). Stages reused in worker processes are not seen.
_REUSED: list[str] = []

# Run folders whose publishing check passed (check_publish); finish() publishes only these.
_APPROVED: set[str] = set()

# Keys a publishing run may differ from its experiment's protocol in: where outputs go, how they are logged and
# displayed, how many processes share the work, and the publish flag itself.
PUBLISH_FREE_KEYS = ("run_dir", "paths", "hydra", "logger", "claim.publish", "claim.workers",
                     "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.num_workers")


def _flat(node, prefix="", out=None) -> dict:
    out = {} if out is None else out
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node
    return out


def protocol_config(experiment: str) -> DictConfig:
    """The experiment's committed config, composed with no other override."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():   # inside the entry point: Hydra's own search path
        from hydra import compose

        return compose(config_name="train", overrides=[f"experiment={experiment}"])
    from shared.engine.compose import compose as compose_fresh

    return compose_fresh([f"experiment={experiment}"])


def publish_refusal(cfg: DictConfig, protocol: DictConfig, experiment: str) -> str | None:
    """Why ``cfg`` may not publish as ``experiment`` (None if it may)."""
    now = OmegaConf.to_container(cfg, resolve=True)
    ref = OmegaConf.to_container(protocol, resolve=True)
    head = f"claim.publish=true refused (experiment={experiment}): "
    if now.get("trainer", {}).get("fast_dev_run"):
        return head + "trainer.fast_dev_run is a smoke run; published results must run the committed protocol"
    if now.get("quick"):
        return head + "quick=true shrinks every budget; published results must run the committed protocol"
    if (now.get("claim") or {}).get("smoke"):
        return head + "claim.smoke=true shrinks every budget; published results must run the committed protocol"
    seeds_now = list((now.get("claim") or {}).get("seeds") or [])
    seeds_ref = list((ref.get("claim") or {}).get("seeds") or [])
    if len(seeds_now) < len(seeds_ref):
        return head + (f"claim.seeds={seeds_now} has {len(seeds_now)} seed(s), fewer than the protocol's "
                       f"{len(seeds_ref)} ({seeds_ref})")
    a, b = _flat(now), _flat(ref)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in PUBLISH_FREE_KEYS)  # noqa: E731
    diff = [k for k in sorted(set(a) | set(b)) if not free(k) and a.get(k, "<unset>") != b.get(k, "<unset>")]
    if not diff:
        return None
    smoke = {str(o).split("=", 1)[0].lstrip("+~") for o in (ref.get("quick_overrides") or [])}
    first = next((k for k in diff if k in smoke), diff[0])
    kind = "a smoke override" if first in smoke else "not the committed protocol"
    more = f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""
    return head + (f"{first}={a.get(first, '<unset>')!r} is {kind} (the experiment has "
                   f"{b.get(first, '<unset>')!r}){more}; publish without overrides, or change the experiment file")


def check_publish(cfg: DictConfig, experiment: str | None) -> None:
    """Refuse, before anything runs, a publishing run that is not its experiment's committed protocol (call after
    the run folder is set: the approval is for that folder)."""
    claim = cfg.get("claim") or {}
    if not claim.get("publish", False):
        return
    if not experiment:
        raise ConfigError("claim.publish=true needs the experiment entry point: "
                          "python -m shared.engine.train experiment=<paper>/<claim> ++claim.publish=true")
    protocol = protocol_config(experiment)
    with open_dict(protocol):
        protocol.run_dir = cfg.run_dir   # paths derived from the run folder are not a difference
    why = publish_refusal(cfg, protocol, experiment)
    if why:
        raise ConfigError(why)
    from shared.engine.isa import isa_problem

    isa = isa_problem()   # evidence must come out the same on every host: the pinned CPU instruction set
    if isa:
        raise ConfigError(f"claim.publish=true refused: {isa}")
    _APPROVED.add(str(cfg.run_dir))


def variant_config(cfg: DictConfig, overrides: dict | None = None, seed: int | None = None) -> DictConfig:
    """A copy of ``cfg`` with dotted-key ``overrides`` applied (and ``seed``), without the pipeline key."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.pipeline = None
        if seed is not None:
            sub.seed = int(seed)
        for key, value in (overrides or {}).items():
            OmegaConf.update(sub, key, value, merge=False, force_add=True)
    return sub


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def input_fingerprints(overrides: dict | None) -> list[str]:
    """``"<sha256> <path>"`` of every existing weight file an override names (an earlier stage's output: the
    autoencoder, a frozen base, a teacher; not ``ckpt_path``), sorted. A variant's checkpoint stores them, so
    re-running a claim in its old folder after an earlier stage changed (another budget, same path) does not resume
    a later stage trained on the old file."""
    import hashlib

    found: set[str] = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.endswith(WEIGHT_SUFFIXES) and Path(v).is_file():
            found.add(v)

    over = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) \
        else dict(overrides or {})
    over.pop("ckpt_path", None)   # where training continues from, not an input: check_resume vets it
    walk(over)
    out = []
    for path in sorted(found):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append(f"{h.hexdigest()} {path}")
    return out


def fit_variant(cfg: DictConfig, tag: str, overrides: dict | None = None, seed: int | None = None):
    """Train one variant into ``<run_dir>/<tag>``; returns the trained module (in eval mode).

    A claim re-run in the same folder (``hydra.run.dir=<old run>``) resumes each variant from its
    ``last.ckpt`` — a finished variant is not trained again, unless a weight file its overrides name (an earlier
    stage's output) changed since: then the resume is refused naming ``variant_inputs``.
    """
    from shared.engine.checkpoint import newest_checkpoint

    sub = variant_config(cfg, overrides, seed)
    inputs = input_fingerprints(overrides)
    if inputs:  # part of the variant's identity: a resume over a changed input file is refused (check_resume)
        with open_dict(sub):
            sub.variant_inputs = inputs
    last = newest_checkpoint(Path(cfg.run_dir) / tag / "checkpoints")   # last.ckpt, or a newer epoch file
    if last is not None and not sub.get("ckpt_path"):
        with open_dict(sub):
            sub.ckpt_path = str(last)
        _REUSED.append(f"variant:{tag}")
    module, datamodule, trainer = fit(sub, run_dir=Path(cfg.run_dir) / tag)
    module.eval()
    return module


def fit_first_stage(cfg: DictConfig, videos):
    """The latent claims' frozen first stage, trained once per run: ``claim.autoencoder_module`` for
    ``claim.autoencoder_steps`` steps of ``claim.autoencoder_batch_size`` clips (seed ``claim.autoencoder_seed``),
    saved to ``<run_dir>/autoencoder.safetensors``. Returns ``(weights file, reconstructions of videos (B, C, T, H, W)
    frame by frame, seconds to train)`` — the reconstructions give the first stage's floor on the claim's metrics."""
    import torch

    from shared.nn.weights import save_weights

    c = cfg.claim
    ts = time.time()
    ae = fit_variant(cfg, "autoencoder", {"module": OmegaConf.to_container(c.autoencoder_module, resolve=True),
                                          "trainer.max_steps": int(c.autoencoder_steps),
                                          "data.batch_size": int(c.autoencoder_batch_size),
                                          "claim.autoencoder_module": None}, int(c.autoencoder_seed))
    seconds = time.time() - ts
    ae_file = save_weights(ae.net, Path(cfg.run_dir) / "autoencoder.safetensors")
    with torch.no_grad():
        rec = ae.reconstruct(videos.transpose(1, 2).flatten(0, 1))
    return ae_file, rec.reshape(videos.shape[0], -1, *rec.shape[1:]).transpose(1, 2), seconds


def begin_claim() -> None:
    """A claim pipeline starts: forget stages recorded by an earlier claim of this process that never reached
    :func:`finish` (it raised), so this claim's record lists only its own reused stages."""
    _REUSED.clear()


def note_reused(stage: str) -> None:
    """Record that this run took ``stage`` from an earlier run (a cached teacher, ...): see ``_REUSED``."""
    _REUSED.append(stage)


def cached(path: str | Path, compute):
    """``compute()`` once per claim folder: its JSON result is kept at ``path`` and reused on a re-run."""
    path = Path(path)
    if path.exists():
        _REUSED.append(f"cached:{path.name}")
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def summarise(per_seed: list[float]) -> dict:
    """mean, sample std and the per-seed values (NaN-free floats)."""
    vals = [float(v) for v in per_seed]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "per_seed": vals}


def finish(cfg: DictConfig, metrics: dict, *, paper: str, claim: str, t0: float, extra: dict | None = None,
           copy_to_paper: bool = True, artifacts=("*.png",)) -> dict:
    """Write ``results.json`` in the run folder; when publishing (``claim.publish``, approved by
    :func:`check_publish`), copy it to ``papers/<paper>/results/<claim>.json`` with the run folder's ``artifacts``
    (file patterns) as ``<claim>_<file>``."""
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    seeds = list(cfg.claim.seeds) if "claim" in cfg and "seeds" in cfg.claim else [int(cfg.seed)]
    path = Path(cfg.run_dir) / "results.json"
    extra = dict(extra or {})
    if _REUSED:
        extra.setdefault("reused_stages", sorted(set(_REUSED)))
        _REUSED.clear()
    record = write_results(path, metrics, paper=paper, claim=claim, seeds=seeds, config=cfg_dict,
                           wall_time_s=round(time.time() - t0, 1), extra=extra)
    dest = None
    if copy_to_paper and cfg.claim.get("publish", False):
        if str(cfg.run_dir) not in _APPROVED:
            raise ConfigError(f"not published: claim.publish=true was not checked against the protocol (run the claim "
                              f"through python -m shared.engine.train); the results are in {path}")
        dest = PROJECT_ROOT / "papers" / paper / "results" / f"{claim}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        for pattern in artifacts:
            for f in sorted(Path(cfg.run_dir).glob(pattern)):
                shutil.copyfile(f, dest.parent / f"{claim}_{f.name}")
    claim_summary(record, cfg, dest)   # results, run folder and where they went (shared/engine/console.py)
    return record


def map_seeds(cfg: DictConfig, seed_job) -> list:
    """``seed_job(cfg_dict, seed)`` for every seed of ``claim.seeds``, ``claim.workers`` at a time (the config handed
    over as an unresolved plain container, :func:`seed_job_config` rebuilds it); the per-seed results in order."""
    from shared.engine.parallel import map_jobs

    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    return map_jobs(seed_job, [(cfg_dict, int(s)) for s in cfg.claim.seeds], workers=int(cfg.claim.get("workers", 1)))


def timed_seeds(seeds, job) -> tuple[list[dict], object]:
    """``job(seed) -> (results dict, artefacts)`` for every seed of ``seeds`` in order, each results dict given its
    ``seed_wall_time_s``; returns the per-seed results and the first seed's artefacts (what the GIFs show)."""
    import time

    per_seed, first = [], None
    for i, seed in enumerate(seeds):
        ts = time.time()
        res, art = job(int(seed))
        res["seed_wall_time_s"] = time.time() - ts
        per_seed.append(res)
        if i == 0:
            first = art
    return per_seed, first


def summarise_seeds(per_seed: list[dict], metrics: dict | None = None) -> dict:
    r"""Every key of the per-seed result dicts :func:`summarise`\ d into ``metrics`` (a new dict if None)."""
    metrics = {} if metrics is None else metrics
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    return metrics


def run_seeded_claim(cfg: DictConfig, seed_job, *, paper: str, checks=None, derived=None,
                     extra: dict | None = None, artifacts=("*.png", "*.gif")) -> dict:
    """The body of a per-seed claim's ``run``: ``checks(cfg)`` (the judge checks on real data, before any model) as
    ``metrics["judge_checks"]``, ``seed_job`` on every seed (:func:`map_seeds`), every per-seed key summarised,
    ``derived(per_seed)`` (ratios, gains) added, then :func:`finish` under ``claim.name``."""
    import torch

    t0 = time.time()
    torch.set_num_threads(1)
    metrics: dict = {} if checks is None else {"judge_checks": checks(cfg)}
    per_seed = map_seeds(cfg, seed_job)
    summarise_seeds(per_seed, metrics)
    if derived is not None:
        metrics.update(derived(per_seed))
    return finish(cfg, metrics, paper=paper, claim=str(cfg.claim.name), t0=t0, artifacts=artifacts, extra=extra)


def seed_job_config(cfg_dict: dict) -> DictConfig:
    """The prologue of a per-seed job (possibly in a worker process): one intra-op thread, the config rebuilt from
    the plain container the job was handed."""
    import torch

    torch.set_num_threads(1)
    return OmegaConf.create(cfg_dict)


def world_items(cfg: DictConfig, n: int, seed: int, split: str = "test", keys=("x",), world=None, **kwargs):
    """The first ``n`` items of the claim's world (``cfg.data.train`` with ``seed``/``split``/``n`` replaced, or
    the class ``world`` built with the same arguments plus ``kwargs``), stacked per key; one tensor if one key."""
    import torch
    from hydra.utils import get_class

    spec = OmegaConf.to_container(cfg.data.train, resolve=True)
    cls = world or get_class(spec.pop("_target_"))
    spec.pop("_target_", None)
    spec.update(n=int(n), seed=int(seed), split=split, **kwargs)
    ds = cls(**spec)
    items = [ds[i] for i in range(int(n))]
    out = tuple(torch.stack([it[k] for it in items]) for k in keys)
    return out[0] if len(keys) == 1 else out


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def module_config(cfg: DictConfig, override: DictConfig | dict, **fields) -> DictConfig:
    """The experiment's ``module`` config with a stage's ``override`` merged on top and ``fields`` set
    (``None`` values are skipped) — how distillation pipelines describe their student modules."""
    m = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg.module)), override)
    for key, value in fields.items():
        if value is not None:
            m[key] = value
    return m


def stage_overrides(nested: dict, prefix: str = "") -> dict:
    """A claim stage's nested overrides (``claim.stages.<stage>``) as dotted keys for :func:`fit_variant`; lists and
    a ``conditions`` mapping stay leaves (a stage's conditions replace the module's whole declaration)."""
    out = {}
    for k, v in nested.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and k != "conditions":
            out.update(stage_overrides(v, key))
        else:
            out[key] = v
    return out


def train_stage(cfg: DictConfig, stage: str, tag: str, seed: int, extra: dict | None = None):
    """Train stage ``cfg.claim.stages[stage]`` (plus dotted ``extra`` overrides) into ``<run_dir>/<tag>`` with
    :func:`fit_variant` and export what it trained (``module.export_weights``) to ``<tag>/export.safetensors``, once;
    returns ``(export path, module)``. A re-run in the same folder resumes the variant and keeps its export."""
    path = Path(cfg.run_dir) / tag / "export.safetensors"
    over = stage_overrides(OmegaConf.to_container(cfg.claim.stages[stage], resolve=True))
    over.update(extra or {})
    module = fit_variant(cfg, tag, over, seed)
    if not path.exists():
        module.export_weights(path)
    return path, module


def per_frame_samples(module, labels, frames: int, sampler: dict, generator):
    """The per-frame floor of a video claim: every frame an independent sample of the image ``module`` for its
    video's class ``labels`` (one sampling call for all frames), as (B, C, T, H, W)."""
    import torch

    with torch.no_grad():
        x = module.sample(len(labels) * frames, cond={"y": labels.repeat_interleave(frames)}, sampler=sampler,
                          generator=generator)
    return x.view(len(labels), frames, *x.shape[1:]).transpose(1, 2)


def variant_videos(image, models: dict, labels, frames: int, sampler: dict, generator) -> dict:
    """Videos of the image-to-video fine-tuning claims, one class label per video: ``per_frame`` (the image
    ``module`` frame by frame, :func:`per_frame_samples`) and each fine-tuned model of ``models`` (``x_T`` from its own
    noise prior); ``generator()`` returns a fresh, equally seeded generator for every draw."""
    import torch

    videos = {"per_frame": per_frame_samples(image, labels, frames, sampler, generator())}
    with torch.no_grad():
        for variant, module in models.items():
            videos[variant] = module.sample(len(labels), cond={"y": labels}, sampler=sampler, generator=generator())
    return videos


def forward_seconds(nets: dict, shape, repeats: int) -> dict[str, float]:
    """Median seconds of one forward pass ``net(x, t, y=y)`` of each of ``nets`` on the same (B, C, T, H, W) batch
    (class 0, t = 500), the nets interleaved in alternating order; round 0 warms up."""
    import statistics

    import torch

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(shape, generator=g), torch.full((shape[0],), 500.0)
    y = torch.zeros(shape[0], dtype=torch.long)
    times = {k: [] for k in nets}
    with torch.no_grad():
        for r in range(int(repeats) + 1):
            for k in (list(nets) if r % 2 == 0 else list(reversed(nets))):
                ts = time.perf_counter()
                nets[k](x, t, y=y)
                if r:
                    times[k].append(time.perf_counter() - ts)
    return {k: statistics.median(v) for k, v in times.items()}


def sprite_judge_checks(cfg, judge=None, direction: bool = False) -> dict:
    """The judge on a Sprites claim's real test clips and their controls, before any model (``claim.num_videos``
    clips of seed ``claim.real_seed``): ``shared.metrics.sprite_judge.separation`` of real vs identity-swapped (from
    frame T/2 on), shuffled and independent-frame clips, with the appearance consistency of real and swapped clips
    and, with ``direction``, the direction the judge reads on the real ones. ``judge``: default
    ``claim_judge(cfg)``."""
    from shared.data.sprite_worlds import Sprites
    from shared.metrics.sprite_judge import claim_judge, separation
    from shared.metrics.video_identity import appearance_consistency

    c, judge = cfg.claim, judge if judge is not None else claim_judge(cfg)
    n, T = int(c.num_videos), int(cfg.data.frames)
    real, directions = world_items(cfg, n, int(c.real_seed), keys=("x", "direction"), world=Sprites,
                                   frames_only=False)
    swapped = world_items(cfg, n, int(c.real_seed), world=Sprites, frames_only=False, identity_swap_at=T // 2)
    out = separation(judge, real, swapped, seed=int(c.real_seed))
    if direction:
        out["real"]["direction_accuracy"] = judge.scores(real, direction=directions)["direction_accuracy"]
    for variant, x in (("real", real), ("swapped", swapped)):
        out[variant]["appearance"] = appearance_consistency(x)
    return out


def fit_from_image(cfg: DictConfig, image_file, seed: int, out: dict) -> dict:
    """Each of ``claim.variants`` fine-tuned from the image stage's weights ``image_file`` by :func:`fit_variant`
    (tag ``<variant>_seed<seed>``, the variant's ``claim.variant_overrides`` applied): ``{variant: module}``.
    Records ``train_time_s_<variant>`` and ``train_s_per_step_<variant>`` in ``out``."""
    c, models = cfg.claim, {}
    for variant in c.variants:
        over = OmegaConf.to_container(c.variant_overrides[variant], resolve=False) \
            if variant in (c.get("variant_overrides") or {}) else {}
        ts = time.time()
        models[variant] = fit_variant(cfg, f"{variant}_seed{seed}", {**over, "model.weights": str(image_file)}, seed)
        out[f"train_time_s_{variant}"] = time.time() - ts
        out[f"train_s_per_step_{variant}"] = out[f"train_time_s_{variant}"] / int(cfg.trainer.max_steps)
    return models
