"""Budget or capacity? The stage-1 ReferenceNet model of an Animate Anyone claim tracked over training steps.

``python -m papers.animate_anyone.budget_probe [experiment=animate_anyone/puppets_claim_v2] "claim.seeds=[99]"
run_dir=<folder> [++probe.steps=[250,500,1000,1500,2000,3000]] [++probe.embed=true] [other overrides]``

The experiment the README's audit asks for (papers/animate_anyone/README.md, "Audit (2026-12-05 ...)"): for each
seed of ``claim.seeds`` the claim's stage-1 variant ``image`` (denoiser + ReferenceNet + Pose Guider + image
encoder) is trained exactly as the claim trains it — :func:`shared.engine.claims.fit_variant` with the stage's
overrides ``claim.stages.image``, the same data, recipe and seed (and the claim's ``base`` stage first when
``claim.base_seed`` is set) — but to each of ``probe.steps`` in turn, continuing from the previous step's
checkpoint: the engine resumes a variant from its ``last.ckpt`` with a larger ``trainer.max_steps`` and a resumed run
equals an uninterrupted one (the top README, "A killed run resumes exactly"), so the model at step ``s`` is the model
a claim with a stage-1 budget of ``s`` steps would train. At each step, on the claim's held-out evaluation set
(``claim.num_samples`` clips of the held-out identities doing held-out motions, ``claim.real_seed``):

* the claim's frame-by-frame scores of the stage-1 model (:func:`papers.animate_anyone.claim.scores`: the committed
  appearance judge's ``identity_acc`` (12-way) and ``identity_acc_heldout`` (among the held-out identities), PSNR,
  SSIM, feature distance, FVD_judge, keypoint and temporal error), generated with the claim's sampler and sample seed
  (``claim.sample_seed + 100 * seed``) — so at the claim's budget they should be the claim's ``*_refnet_frames``
  figures for that seed (same model, clips and noise, on the same instruction set; checked only in quick mode, where
  the step reached through earlier steps equals one uninterrupted run, tests/test_animate_anyone_probe.py);
* the denoising loss of the EMA network (the one that samples) on every held-out (frame, reference, pose) triple with
  the right reference (``loss_right``) and with the reference of the next clip of another held-out identity
  (``loss_swapped``), at the fixed noise levels ``probe.levels`` (fractions of the schedule's time range, log-SNR
  recorded) with one fixed noise draw per level (``probe.loss_seed``): the module's own loss (prediction target and
  weighting), deterministic. ``loss_gap = loss_swapped - loss_right`` (mean over the levels; per level too) is how
  much the model's denoising uses *this* person's reference.

A late, steep rise of held-out identity and loss gap past the claim's budget says budget; a plateau says capacity.
``++probe.embed=true`` tracks the embedding-only ablation ``image_embed`` at the same steps (same scores; its loss gap
is what the one-token embedding alone carries).

Writes ``<run_dir>/budget_probe.json`` after every step (``complete`` false until the last; per seed, per variant,
per step: the scores, the loss figures, training and evaluation seconds; the real clips' judge yardsticks; this
process's wall time) and the variants' folders ``<run_dir>/probe_<variant>_seed<seed>`` (checkpoints; the EMA weights
at each step as ``export_step<step>.safetensors``; the folders are not the claim's ``image_seed<seed>``, so a probe
never continues a claim run's stage); prints a table. A re-run in the same folder (an interrupted study, or more
steps) reuses the figures its JSON holds for steps already trained (same evaluation settings; marked ``reused``) and
continues each variant from its checkpoint; a step below a variant's trained step without figures is refused.
Development tool: it never writes ``papers/*/results`` (a ``run_dir`` under ``papers/`` is refused), and refuses the
committed experiment's protocol seeds (``claim.seeds`` of the experiment file: choosing a budget by watching them is
what the protocol forbids) unless ``++probe.allow_protocol_seeds=true`` (e.g. to check that the probe's last step
reproduces a published seed). ``quick=true`` shrinks everything as for the claim (the probe trains by
``probe.steps``, not by the quick run's one step; default steps ``[2, 4]``; the protocol-seed refusal is off: quick
numbers mean nothing).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from papers.animate_anyone import claim as C
from shared.diffusion.losses import diffusion_loss
from shared.engine.claims import PROJECT_ROOT, fit_variant, protocol_config, stage_overrides, train_stage
from shared.engine.compose import compose
from shared.metrics.avatar_judge import identity_accuracy, load_avatar_judge, video_features
from shared.metrics.frechet import gaussian_stats

DEFAULT_EXPERIMENT = "animate_anyone/puppets_claim_v2"
PIPELINE = "papers.animate_anyone.claim.run"
DEFAULT_STEPS = (250, 500, 1000, 1500, 2000, 3000)
QUICK_STEPS = (2, 4)
DEFAULT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
SETTINGS = ("steps", "levels", "loss_seed", "embed", "allow_protocol_seeds")
OUT_FILE = "budget_probe.json"


def settings(cfg: DictConfig, protocol_seeds=()) -> dict:
    """``cfg.probe`` checked (one-line ValueErrors naming the value), with the defaults filled in; also checks
    ``run_dir``, the pipeline and the seeds against ``protocol_seeds``."""
    if cfg.get("run_dir") in (None, ""):
        raise ValueError("run_dir is missing: give run_dir=<a folder for the probe's variants and budget_probe.json>")
    run = Path(str(cfg.run_dir)).resolve()
    if run == PROJECT_ROOT / "papers" or (PROJECT_ROOT / "papers") in run.parents:
        raise ValueError(f"run_dir={cfg.run_dir} is under papers/: the probe is a development tool, give a folder "
                         "outside papers/ (e.g. /tmp/aa_budget)")
    if cfg.get("pipeline") != PIPELINE:
        raise ValueError(f"pipeline={cfg.get('pipeline')!r}: the probe runs on an Animate Anyone claim experiment "
                         f"(pipeline {PIPELINE}), e.g. experiment={DEFAULT_EXPERIMENT}")
    raw = OmegaConf.to_container(cfg.probe, resolve=True) if cfg.get("probe") is not None else {}
    if not isinstance(raw, dict):
        raise ValueError(f"probe={raw!r} must be a mapping (++probe.steps=[...], ++probe.embed=true, ...)")
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ValueError(f"probe.{unknown[0]} is not a probe setting; known: {', '.join(SETTINGS)}")
    quick = bool(cfg.get("quick"))
    steps = raw.get("steps", list(QUICK_STEPS if quick else DEFAULT_STEPS))
    if not isinstance(steps, list) or not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                                        for s in steps):
        raise ValueError(f"probe.steps={steps!r} must be a non-empty list of positive integers")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"probe.steps={steps!r} must be strictly increasing (training continues from step to step)")
    levels = raw.get("levels", list(DEFAULT_LEVELS))
    if not isinstance(levels, list) or not levels or any(isinstance(u, bool) or not isinstance(u, (int, float))
                                                         or not 0.0 < float(u) < 1.0 for u in levels):
        raise ValueError(f"probe.levels={levels!r} must be a non-empty list of fractions in (0, 1) of the schedule's "
                         "time range")
    loss_seed = raw.get("loss_seed", 0)
    if isinstance(loss_seed, bool) or not isinstance(loss_seed, int):
        raise ValueError(f"probe.loss_seed={loss_seed!r} must be an integer")
    flags = {}
    for key in ("embed", "allow_protocol_seeds"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            raise ValueError(f"probe.{key}={flags[key]!r} must be true or false")
    seeds = [int(s) for s in cfg.claim.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"claim.seeds={seeds!r} must be a non-empty list of distinct seeds")
    taken = sorted(set(seeds) & {int(s) for s in protocol_seeds})
    if taken and not (quick or flags["allow_protocol_seeds"]):
        raise ValueError(f"claim.seeds={seeds} holds the protocol seed(s) {taken} of the experiment; probe "
                         "development seeds (\"claim.seeds=[99]\"), or pass ++probe.allow_protocol_seeds=true")
    return {"steps": steps, "levels": [float(u) for u in levels], "loss_seed": int(loss_seed),
            "variants": ["image", "image_embed"] if flags["embed"] else ["image"], "seeds": seeds,
            "allow_protocol_seeds": flags["allow_protocol_seeds"]}


def level_times(schedule, levels) -> torch.Tensor:
    """Diffusion times at fractions ``levels`` of the schedule's time range (:meth:`Schedule.time_at`)."""
    return schedule.time_at(torch.tensor([float(v) for v in levels]))


def frame_pairs(clips: dict) -> dict:
    """Every frame of the evaluation clips with its pose map, its clip's reference and a swapped reference: that of
    the next clip (cyclically) of another identity. Frames in :func:`papers.animate_anyone.claim.generate`'s order."""
    ident = clips["identity"]
    n = len(ident)
    partner = []
    for i in range(n):
        j = next((k % n for k in range(i + 1, i + n) if ident[k % n] != ident[i]), None)
        if j is None:
            raise ValueError(f"claim.num_samples={n}: the evaluation clips hold one identity, so no swapped reference")
        partner.append(j)
    b, c, t, h, w = clips["x"].shape
    return {"x": clips["x"].permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w),
            "pose_map": clips["pose_map"].permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w),
            "reference": clips["reference"].repeat_interleave(t, dim=0),
            "swapped": clips["reference"][torch.tensor(partner)].repeat_interleave(t, dim=0)}


@torch.no_grad()
def reference_losses(module, pairs: dict, levels, seed: int) -> dict:
    """The module's denoising loss (its prediction target and weighting) of its EMA network on ``pairs`` with the
    right and the swapped reference, at each of ``levels`` with one fixed noise draw per level (``seed``)."""
    net = module.sampling_net(True)
    x0 = pairs["x"]
    g = torch.Generator().manual_seed(int(seed))
    kw = {name: module.condition({"reference": pairs[ref], "pose_map": pairs["pose_map"]}, drop=False)
          for name, ref in (("right", "reference"), ("swapped", "swapped"))}
    out = {"right": [], "swapped": []}
    for t in level_times(module.schedule, levels):
        eps = module.training_noise(x0, g)
        eps = torch.randn(x0.shape, generator=g) if eps is None else eps
        tt = t.expand(x0.shape[0]).clone()
        for name in out:
            out[name].append(float(diffusion_loss(net, x0, module.schedule, module.prediction,
                                                  module.loss_weighting, t=tt, eps=eps, **kw[name])))
    right, swapped = (sum(out[k]) / len(out[k]) for k in ("right", "swapped"))
    return {"loss_right": right, "loss_swapped": swapped, "loss_gap": swapped - right,
            "loss_right_per_level": out["right"], "loss_swapped_per_level": out["swapped"],
            "loss_gap_per_level": [s - r for r, s in zip(out["right"], out["swapped"])]}


def trained_step(tag_dir: Path) -> int:
    """The step a variant's folder was trained to (0 without a checkpoint)."""
    from shared.engine.checkpoint import load_checkpoint_file, newest_checkpoint

    last = newest_checkpoint(tag_dir / "checkpoints")
    return 0 if last is None else int(load_checkpoint_file(last).get("global_step", 0))


def train_to(cfg: DictConfig, variant: str, tag: str, seed: int, step: int, extra: dict):
    """The claim's stage ``variant`` for ``seed`` trained (or continued) to ``step`` in ``<run_dir>/<tag>``; its EMA
    weights exported to ``<tag>/export_step<step>.safetensors``. Returns the module (eval mode)."""
    over = stage_overrides(OmegaConf.to_container(cfg.claim.stages[variant], resolve=True))
    cfg = cfg.copy()
    with open_dict(cfg):   # the probe's own settings are not the variant's: more steps later still resume it
        cfg.pop("probe", None)
    over.update(extra)
    over["trainer.max_steps"] = int(step)
    if cfg.trainer.get("fast_dev_run"):   # quick mode's one-step stages: the probe trains by probe.steps
        over["trainer.fast_dev_run"] = False
    module = fit_variant(cfg, tag, over, seed)
    module.export_weights(Path(cfg.run_dir) / tag / f"export_step{int(step):07d}.safetensors")
    return module


COLUMNS = (("seed", "seed", "{}"), ("variant", "variant", "{}"), ("step", "step", "{}"),
           ("identity_acc", "id12", "{:.3f}"), ("identity_acc_heldout", "id_held", "{:.3f}"),
           ("psnr", "psnr", "{:.2f}"), ("fvd_judge", "fvd_j", "{:.1f}"), ("loss_right", "loss_ok", "{:.4f}"),
           ("loss_swapped", "loss_sw", "{:.4f}"), ("loss_gap", "gap", "{:+.4f}"), ("train_s", "train_s", "{:.0f}"),
           ("eval_s", "eval_s", "{:.0f}"))


def table(record: dict) -> str:
    rows = [[head for _, head, _ in COLUMNS]]
    for seed, variants in record["per_seed"].items():
        for variant, points in variants.items():
            for p in points:
                row = {"seed": seed, "variant": variant, **p}
                rows.append([fmt.format(row[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def evaluation_key(cfg: DictConfig, s: dict) -> dict:
    """What a step's figures depend on besides the trained model: figures of an earlier run in the folder are reused
    only under the same key (the model itself is vetted by the engine's resume check)."""
    c = cfg.claim
    return {"experiment_name": str(cfg.get("name")), "quick": bool(cfg.get("quick")), "num_clips": int(c.num_samples),
            "real_seed": int(c.real_seed), "sample_seed": int(c.sample_seed),
            "sampler": OmegaConf.to_container(c.sampler, resolve=True), "judge_path": c.get("judge_path"),
            "levels": s["levels"], "loss_seed": s["loss_seed"]}


def earlier_points(run: Path, key: dict) -> dict:
    """``{(seed, variant): {step: figures}}`` of the folder's ``budget_probe.json`` if it was written under ``key``."""
    path = run / OUT_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("evaluation") != key:
        return {}
    return {(int(seed), variant): {int(p["step"]): p for p in points}
            for seed, variants in old.get("per_seed", {}).items() for variant, points in variants.items()}


def probe(cfg: DictConfig, protocol_seeds=(), echo=print) -> dict:
    """Run the study (module docstring) and write ``<run_dir>/budget_probe.json`` (after every step, ``complete``
    false until the last); returns what it wrote last."""
    t0 = time.time()
    s = settings(cfg, protocol_seeds)
    torch.set_num_threads(1)
    run = Path(str(cfg.run_dir))
    key = evaluation_key(cfg, s)
    before = earlier_points(run, key)
    reuse: dict = {}
    for seed in s["seeds"]:
        for variant in s["variants"]:
            tag = run / f"probe_{variant}_seed{seed}"
            done, old = trained_step(tag), before.get((seed, variant), {})
            reuse[(seed, variant)] = {st: old[st] for st in s["steps"] if st <= done and st in old}
            lost = [st for st in s["steps"] if st < done and st not in old]
            if lost:
                raise ValueError(f"{tag} is already trained to step {done}, past probe.steps {lost} (no figures "
                                 f"for them in its {OUT_FILE}); give a new run_dir or steps from {done} on")
    c = cfg.claim
    judge = load_avatar_judge("puppets", c.judge_path)
    n = int(c.num_samples)
    clips = C.eval_clips(cfg, n, int(c.real_seed))
    real_stats = gaussian_stats(video_features(clips["x"], judge))
    held = C.heldout_identities(cfg)
    pairs = frame_pairs(clips)
    sampler = OmegaConf.to_container(c.sampler, resolve=True)
    schedule = instantiate(cfg.module.schedule)
    times = level_times(schedule, s["levels"])
    record = {
        "experiment_name": str(cfg.get("name")), "claim": str(c.name), "quick": bool(cfg.get("quick")),
        "complete": False, "seeds": s["seeds"], "steps": s["steps"], "variants": s["variants"],
        "claim_budget": {v: int(c.stages[v].trainer.max_steps) for v in s["variants"]},
        "num_clips": n, "num_frames": int(pairs["x"].shape[0]), "evaluation": key,
        "noise_levels": {"fraction": s["levels"], "t": [float(t) for t in times],
                         "logsnr": [float(schedule.logsnr(t)) for t in times], "loss_seed": s["loss_seed"],
                         "prediction": str(cfg.module.prediction), "weighting": str(cfg.module.loss_weighting),
                         "ema": True},
        "chance": {"identity_acc": 1.0 / int(cfg.data.train.num_identities), "identity_acc_heldout": 1.0 / len(held)},
        "real": {"identity_acc": identity_accuracy(clips["x"], clips["identity"], judge),
                 "identity_acc_heldout": identity_accuracy(clips["x"], clips["identity"], judge, candidates=held)},
        "per_seed": {}, "wall_time_s": 0.0,
    }
    from shared.engine.results import provenance, write_json_atomic

    path = run / OUT_FILE
    extra = {}
    if c.get("base_seed") is not None:   # the claim's "pretrained" base, as the claim trains it
        base_w, _ = train_stage(cfg, "base", "base", int(c.base_seed))
        extra["model.base_weights"] = str(base_w)
    for seed in s["seeds"]:
        for variant in s["variants"]:
            tag, points = f"probe_{variant}_seed{seed}", []
            record["per_seed"].setdefault(str(seed), {})[variant] = points
            for step in s["steps"]:
                if step in reuse[(seed, variant)]:
                    points.append({**reuse[(seed, variant)][step], "reused": True})
                    continue
                ts = time.time()
                module = train_to(cfg, variant, tag, seed, step, extra)
                te = time.time()
                gen = C.generate(module, clips, sampler, int(c.sample_seed) + 100 * seed, per_frame=True)
                point = {"step": int(step), **C.scores(gen, clips, judge, real_stats, held),
                         **reference_losses(module, pairs, s["levels"], s["loss_seed"]),
                         "train_s": te - ts, "eval_s": time.time() - te}
                points.append(point)
                echo(f"budget_probe: seed {seed} {variant} step {step}: identity {point['identity_acc']:.3f} "
                     f"(held-out {point['identity_acc_heldout']:.3f}), loss gap {point['loss_gap']:+.4f}")
                record.update(wall_time_s=round(time.time() - t0, 1), **provenance())
                write_json_atomic(path, record, indent=1)
    record.update(complete=True, wall_time_s=round(time.time() - t0, 1), **provenance())
    write_json_atomic(path, record, indent=1)
    echo(table(record))
    echo(f"budget_probe: wrote {path} ({record['wall_time_s']:.0f} s)")
    return record


def main(argv: list[str] | None = None) -> dict:
    from shared.engine.results import remember_git_state

    remember_git_state()   # the record names the revision the study started from (its code), not the tree's at the end
    args = list(sys.argv[1:] if argv is None else argv)
    exp = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("experiment=")]
    experiment = exp[-1] if exp else DEFAULT_EXPERIMENT
    if not exp:
        args.insert(0, f"experiment={experiment}")
    cfg = compose(args + ["logger=none"])
    protocol_seeds = OmegaConf.select(protocol_config(experiment), "claim.seeds", default=None) or []
    return probe(cfg, protocol_seeds=[int(x) for x in protocol_seeds])


if __name__ == "__main__":
    main()

