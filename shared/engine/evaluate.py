"""Hydra entry point: evaluate a checkpoint the way its experiment says, written as ``results.json``.

    python -m shared.engine.evaluate ckpt=outputs/.../last.ckpt sampler.steps=10
    python -m shared.engine.evaluate ckpt=dit.ckpt evaluation.reference=VIRTUAL_imagenet256_labeled.npz \\
        evaluation.inception_path=weights/inception/pt_inception-2015-12-05-6726825d.pth

Evaluation follows the experiment: the checkpoint's stored config has an ``evaluation:`` block (the DiT ImageNet
configs: FID/KID/IS of 50,000 samples at guidance 1.5; video configs: FVD/KVD; text-to-video: CLIPSIM and CLIP
frame consistency) and ``evaluation.*`` overrides here merge over it. Without a block, a digits checkpoint gets
``fd_judge`` against the held-out digits (and the real-vs-real floor). Metrics:

* ``fd_judge`` — the digits judge (``shared.metrics.judge``), 1-channel images of the digits' sizes;
* ``fid``, ``kid``, ``is`` — the FID Inception (``evaluation.inception_path``) against ``evaluation.reference``
  (a pytorch-fid stats ``.npz`` or an ADM reference batch, ``shared.metrics.fid.read_reference``);
* ``fvd``, ``kvd`` — I3D (``evaluation.i3d_path``, TorchScript) on 16-frame clips, same reference formats;
* ``clipsim``, ``clip_consistency`` — open_clip (``evaluation.clip.{model,weights_path}``); captions from
  ``evaluation.captions`` (a text file, one per line, cycled over the samples).

Samples are drawn batch by batch (``evaluation.batch_size``) and only their features are kept, so 50,000
ImageNet samples fit in memory; class-conditional models get balanced labels (every class equally often, in a
seeded order), text-conditioned ones the captions. ``evaluation.save_npz=true`` also writes the samples as an
``arr_0`` uint8 ``.npz`` (the format ADM's evaluation suite reads).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.cli import check_count, friendly_errors, hydra_cli
from shared.engine.results import write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE = ("fid", "kid", "is")
VIDEO = ("fvd", "kvd")
CLIP = ("clipsim", "clip_consistency")
KNOWN = ("fd_judge", *IMAGE, *VIDEO, *CLIP)
DEFAULT_NUM_SAMPLES = 270   # the digits claims' protocol: 270 samples against 270 held-out digits


class EvaluationError(ValueError):
    """An evaluation that cannot run (unknown metric, missing captions, ...): a one-line error."""


def evaluation_config(cfg: DictConfig, module) -> dict:
    """The checkpoint's ``evaluation`` block with ``cfg.evaluation`` merged over it (and ``num_samples``)."""
    stored = dict((module.run_config or {}).get("evaluation") or {})
    given = _drop_none(OmegaConf.to_container(cfg.get("evaluation") or OmegaConf.create({}), resolve=True))
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(stored), OmegaConf.create(given)),
                                    resolve=True)
    if cfg.get("num_samples") is not None:
        merged["num_samples"] = check_count(cfg.num_samples, "num_samples", 2)   # a Fréchet distance needs two
    merged.setdefault("num_samples", DEFAULT_NUM_SAMPLES)
    merged.setdefault("batch_size", 250)
    if not merged.get("metrics"):
        merged["metrics"] = ["fd_judge"]
    metrics = [str(m).lower() for m in merged["metrics"]]
    unknown = sorted(set(metrics) - set(KNOWN))
    if unknown:
        raise EvaluationError(f"evaluation.metrics: unknown {unknown}; choose from {list(KNOWN)}")
    merged["metrics"] = metrics
    return merged


def _drop_none(node):
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None and _drop_none(v) != {}}
    return node


def _labels(module, n: int, seed: int):
    classes = getattr(module.net, "num_classes", None)
    if "y" not in getattr(module, "conditions", {}) or not classes:
        return None
    g = torch.Generator().manual_seed(int(seed) + 17)
    return (torch.arange(n) % int(classes))[torch.randperm(n, generator=g)]


def _captions(module, ev: dict, n: int):
    if "caption" not in getattr(module, "conditions", {}) and not set(ev["metrics"]) & {"clipsim"}:
        return None
    path = ev.get("captions")
    if not path:
        raise EvaluationError("evaluation.captions: this evaluation needs captions (a text file, one per line)")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise EvaluationError(f"evaluation.captions: file not found: {path}")
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise EvaluationError(f"evaluation.captions: {path} holds no caption")
    return [lines[i % len(lines)] for i in range(n)]


class _Accumulator:
    """Features of the samples, batch by batch, for every requested metric."""

    def __init__(self, ev: dict):
        self.ev, self.metrics = ev, set(ev["metrics"])
        self.pool, self.logits, self.i3d, self.clipsim, self.consistency, self.keep = [], [], [], [], [], []
        self.inception = self.detector = self.clip = None
        if self.metrics & set(IMAGE):
            from shared.metrics.inception import load_fid_inception

            self.inception = load_fid_inception(ev.get("inception_path"))
        if self.metrics & set(VIDEO):
            from shared.metrics.video import load_i3d

            self.detector = load_i3d(ev.get("i3d_path"))
        if self.metrics & set(CLIP):
            from shared.metrics.clip_score import load_clip

            clip = dict(ev.get("clip") or {})
            self.clip = load_clip(clip.get("model", "ViT-L-14"), clip.get("weights_path"), clip.get("model_config"))

    def add(self, x: torch.Tensor, captions=None) -> None:
        from shared.metrics.clip_score import clip_frame_consistency, clipsim
        from shared.metrics.video import clips16, i3d_features

        if self.inception is not None:
            if x.ndim != 4:
                raise EvaluationError(f"FID/KID/IS evaluate images; the samples have shape {tuple(x.shape)}")
            f, lg = self.inception.features_and_logits(x)
            self.pool.append(f.double().cpu())
            self.logits.append(lg.double().cpu())
        if self.detector is not None:
            if x.ndim != 5:
                raise EvaluationError(f"FVD/KVD evaluate videos; the samples have shape {tuple(x.shape)}")
            clip_frames = int(self.ev.get("clip_frames", 16))
            self.i3d.append(i3d_features(clips16(x, clip_frames), self.detector).double())
        if self.clip is not None:
            if "clipsim" in self.metrics:
                self.clipsim.append(clipsim(x, captions, self.clip, reduction="none"))
            if "clip_consistency" in self.metrics:
                if x.ndim != 5:
                    raise EvaluationError("clip_consistency evaluates videos")
                self.consistency.append(clip_frame_consistency(x, self.clip, reduction="none"))
        if "fd_judge" in self.metrics:
            self.keep.append(x.cpu())

    def result(self, seed: int) -> dict:
        from shared.metrics.fid import image_metrics_from_features
        from shared.metrics.video import video_metrics_from_features

        ev, out = self.ev, {}
        if self.pool:
            wanted = [m for m in IMAGE if m in self.metrics]
            out.update(image_metrics_from_features(torch.cat(self.pool), torch.cat(self.logits),
                                                   self._reference("image"), self.inception, wanted,
                                                   batch_size=int(ev["batch_size"]), seed=seed))
        if self.i3d:
            wanted = [m for m in VIDEO if m in self.metrics]
            out.update(video_metrics_from_features(torch.cat(self.i3d), self._reference("video"), self.detector,
                                                   wanted, clip_frames=int(ev.get("clip_frames", 16)), seed=seed))
        if self.clipsim:
            out["clipsim"] = float(torch.cat(self.clipsim).mean())
        if self.consistency:
            out["clip_consistency"] = float(torch.cat(self.consistency).mean())
        if self.keep:
            out.update(_fd_judge(torch.cat(self.keep)))
        return out

    def _reference(self, kind: str):
        ref = self.ev.get("reference")
        if not ref:
            raise EvaluationError(f"evaluation.reference: {kind} metrics need a reference file (.npz: mu/sigma or "
                                  "arr_0); see docs/DATA_AND_WEIGHTS.md")
        return ref


def _fd_judge(x: torch.Tensor) -> dict:
    from shared.data.digits import real_splits
    from shared.metrics.judge import fd_judge

    if x.ndim != 4 or x.shape[1] != 1:
        raise EvaluationError(f"fd_judge evaluates 1-channel digits images; the samples have shape {tuple(x.shape)} "
                              "(set evaluation.metrics for this experiment)")
    real_a, real_b = real_splits(size=int(x.shape[-1]))
    # the floor compares two disjoint held-out halves of the same size as the comparison itself
    return {"fd_judge": fd_judge(x, real_b), "fd_judge_real_floor": fd_judge(real_a, real_b)}


def evaluate(cfg: DictConfig) -> dict:
    from omegaconf import open_dict

    from shared.engine import progress
    from shared.engine.video_io import to_uint8
    from shared.methods.registry import module_from_checkpoint

    t0 = time.time()
    progress.enable()
    module = module_from_checkpoint(cfg.ckpt)
    ev = evaluation_config(cfg, module)
    n = check_count(ev["num_samples"], "evaluation.num_samples", 2)
    bs, seed = check_count(ev["batch_size"], "evaluation.batch_size"), check_count(cfg.seed, "seed", 0)
    override = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    for key, value in (ev.get("sampler") or {}).items():
        override.setdefault(key, value)
    if ev.get("guidance_scale") is not None:
        override.setdefault("guidance_scale", ev["guidance_scale"])
    sampler = module.sampler_config(override)
    labels, captions = _labels(module, n, seed), _captions(module, ev, n)
    acc = _Accumulator(ev)
    saved = []
    g = torch.Generator().manual_seed(seed)
    with progress.phase(f"sampling {n} with {sampler['name']} ({sampler.get('steps')} steps), "
                        f"computing {', '.join(ev['metrics'])}"):
        for i in progress.track(range(0, n, bs), desc="batches"):
            j = min(i + bs, n)
            cond = {}
            if labels is not None:
                cond["y"] = labels[i:j]
            if captions is not None and "caption" in getattr(module, "conditions", {}):
                cond["caption"] = captions[i:j]
            x = module.sample(j - i, cond=cond, sampler=override, generator=g, use_ema=bool(cfg.use_ema))
            acc.add(x, captions[i:j] if captions is not None else None)
            if ev.get("save_npz"):
                saved.append(to_uint8(x).movedim(1, -1).numpy())
    with progress.phase("metrics"):
        metrics = acc.result(seed)
    default = Path(cfg.ckpt).parent.parent / "eval" / f"{sampler['name']}_{sampler.get('steps')}" / "results.json"
    out = Path(cfg.out or default)
    if saved:
        import numpy as np

        np.savez(out.parent / "samples.npz", arr_0=np.concatenate(saved))
    with open_dict(cfg):
        cfg.evaluation = ev
    rec = write_results(out, metrics, claim="evaluate", seeds=[seed], wall_time_s=round(time.time() - t0, 1),
                        extra={"ckpt": str(cfg.ckpt), "sampler": sampler, "num_samples": n,
                               "nfe": sampler.get("steps"), "evaluation": ev,
                               **({"quick": True} if cfg.get("quick") else {})})
    return {**rec, "results_file": str(out)}


@hydra.main(config_path="../../conf", config_name="evaluate", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    with friendly_errors():
        try:
            rec = evaluate(cfg)
        except (EvaluationError, ValueError) as e:   # bad input: one line (VDP_TRACEBACK=1 shows all)
            if os.environ.get("VDP_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in rec["metrics"].items()}
        print(shown)
        print(f"wrote {rec['results_file']}")


def main():
    from shared.engine.quick import expand_argv

    sys.argv[1:] = expand_argv(sys.argv[1:], "evaluate")
    return _hydra_main()


main = hydra_cli(main)   # Hydra's own errors (a bad override) are one line too

if __name__ == "__main__":
    main()
