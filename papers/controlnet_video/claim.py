"""Video ControlNet claim check (issue 21) on the styled-shapes world (8 frames at 16x16, known depth and edges) and
on Puppets (``claim.world: puppets``: pose-skeleton maps as the control, keypoints as the ground truth).

Protocol (``cfg.claim``, fixed in the committed config before the comparison was run).

0. *Judges* (committed, ``shared.metrics.shapes_judge``): the depth estimator and the style features (per-frame
   ``FD_judge``). Recorded first: the control errors of real videos against their own controls vs against another
   video's (do the judges separate "follows the control" from "does not"?).
1. *Autoencoder* (frozen first stage, trained once per run, ``autoencoder_seed``): 16x16x3 frames -> 4x8x8 latents;
   ``claim.latent: false``: none (a pixel-space base).
2. *Base* per seed: an unconditional latent video model (2D U-Net + temporal layers), trained once and then frozen
   (``trainer.max_steps``); every ControlNet of that seed steers the same base.
3. *ControlNets* per seed and control (``claim.use_controls`` of ``claim.controls``: depth, edges; the camera
   claim: Plücker maps): a trainable copy of the base's encoder (image layers; it runs per frame) with zero
   convolutions and the 16 -> 8 px hint encoder (``shared.nn.controlnet``), trained for ``controlnet_steps`` with
   the base frozen (only the copy updates).

Evaluation per seed, ``num_samples`` held-out test videos as control sources, the same initial noise for the base
and every controlled model:

* ``depth_err_*``: RMSE between the judge's depth of the output and the world's depth of the control source (all
  pixels); ``edge_f1_*``: F1 of the judged depth's discontinuities against the source's edges;
* ``fd_frames_*``: per-frame ``FD_judge`` (style features of every frame) to real test frames;
* ``consistency_*``: mean cosine similarity of consecutive frames;
* with ``claim.camera_judge`` (the camera world: ``data.train.camera=true``, Plücker ``camera_map`` control):
  ``pan_acc_*`` / ``zoom_acc_*``, the camera judge's accuracy for the source's pan direction (chance 1/4) and zoom
  (chance 1/2).
* ``claim.world: puppets`` (pose control): ``kp_err_*``, the mean distance (canvas units) between the committed
  avatar judge's keypoints of the output and the source's driving keypoints; ``fd_frames_*`` and the consistency as
  above, with the avatar judge's features. Sources: ``claim.source_world`` (e.g. held-out motions).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import (
    finish,
    fit_first_stage,
    fit_variant,
    summarise_seeds,
    timed_seeds,
    world_items,
)
from shared.engine.video_io import save_labelled_columns
from shared.metrics.avatar_judge import (
    avatar_judge_sha256,
    fd_avatar,
    frame_features,
    keypoint_error,
    load_avatar_judge,
)
from shared.metrics.frechet import gaussian_stats
from shared.metrics.shapes_judge import (
    camera_accuracy,
    depth_edges,
    depth_rmse,
    edge_f1,
    estimate_depth,
    fd_frames,
    load_camera_judge,
    load_shapes_judge,
    shapes_judge_sha256,
    style_features,
)
from shared.metrics.video import frame_consistency
from shared.nn.weights import save_weights


class ShapesJudges:
    """StyledShapes: the committed depth/style judge (+ the camera judge on the camera world)."""

    ratios = ("depth_err",)

    def __init__(self, c: DictConfig):
        self.judge = load_shapes_judge(c.judge_path)
        self.camera = load_camera_judge(c.get("camera_judge_path")) if c.get("camera_judge") else None
        self.keys = ("x", "depth", "edges", "camera_map", "camera_pan", "camera_zoom") if self.camera is not None \
            else ("x", "depth", "edges")
        self.sha256 = shapes_judge_sha256(c.judge_path)

    def errors(self, videos: torch.Tensor, src: dict) -> dict:
        return control_errors(videos, src, self.judge, self.camera)

    def stats(self, videos: torch.Tensor) -> tuple:
        return gaussian_stats(style_features(videos, self.judge))

    def fd(self, videos: torch.Tensor, real_stats: tuple) -> float:
        return fd_frames(videos, real_stats, self.judge)


class PuppetsJudges:
    """Puppets: the committed avatar judge's keypoints (pose control error) and features (per-frame FD_judge)."""

    ratios = ("kp_err",)
    keys = ("x", "keypoints", "pose_map")

    def __init__(self, c: DictConfig):
        self.judge = load_avatar_judge("puppets", c.get("judge_path"))
        self.sha256 = avatar_judge_sha256("puppets", c.get("judge_path"))

    def errors(self, videos: torch.Tensor, src: dict) -> dict:
        return {"kp_err": keypoint_error(videos, src["keypoints"], self.judge)}

    def stats(self, videos: torch.Tensor) -> tuple:
        return gaussian_stats(frame_features(videos, self.judge))

    def fd(self, videos: torch.Tensor, real_stats: tuple) -> float:
        return fd_avatar(videos, real_stats, self.judge)


JUDGES = {"styled_shapes": ShapesJudges, "puppets": PuppetsJudges}


def judges_for(c: DictConfig):
    world = str(c.get("world") or "styled_shapes")
    if world not in JUDGES:
        raise ValueError(f"claim.world={world!r}: expected one of {sorted(JUDGES)}")
    return JUDGES[world](c)


def control_errors(videos: torch.Tensor, src: dict, judge, camera_judge=None) -> dict:
    """The judges' control errors of ``videos`` against the control sources ``src`` (world depth and edges; the
    camera's pan and zoom with a camera judge)."""
    est = estimate_depth(videos, judge)
    out = {"depth_err": depth_rmse(est, src["depth"]), "edge_f1": edge_f1(depth_edges(est), src["edges"])}
    if camera_judge is not None:
        out.update(camera_accuracy(videos, src["camera_pan"], src["camera_zoom"], camera_judge))
    return out


def control_image(key: str, value: torch.Tensor) -> torch.Tensor:
    """A control map as a 1-channel video in [-1, 1] for the GIFs (depth: near bright)."""
    if key == "depth":
        return (1 - 2 * (value - 0.3) / 0.7).clamp(-1, 1)[:, None]
    if key == "pose_map":  # already an RGB skeleton in [-1, 1]
        return value
    if key == "camera_map":  # the Plücker moment (channels 3-5) as RGB: it changes with the camera's position
        m = value[:, 3:6]
        return (m / m.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)).clamp(-1, 1)
    return (2 * value - 1).clamp(-1, 1)[:, None]


def prompt_condition(cfg: DictConfig, drop_prob: float) -> dict:
    """The "prompt" of a prompted base (``claim.prompt``): the world's style label as a class condition — what a
    text prompt gives SD ("a neon scene"), so that what is left to the control is the structure."""
    return {"_target_": "shared.methods.conditions.LabelCondition", "key": str(cfg.claim.prompt.key),
            "drop_prob": float(drop_prob)}


def prompt_classes(cfg: DictConfig) -> int:
    """Number of prompt labels: ``claim.prompt.num_classes``, else the styled-shapes world's styles."""
    n = cfg.claim.prompt.get("num_classes")
    return int(n) if n is not None else len(cfg.data.train.styles)


def base_overrides(cfg: DictConfig, ae_file: Path | None) -> dict:
    """The base video model's overrides: the frozen autoencoder (none in pixel space); with ``claim.prompt`` a
    class-conditional base (``num_classes``: ``prompt_classes``, the label dropped with ``prompt.base_drop_prob``)."""
    out = {"module.latent.autoencoder.weights_path": str(ae_file)} if ae_file is not None else {}
    if cfg.claim.get("prompt") is not None:
        out["model.num_classes"] = prompt_classes(cfg)
        out["module.conditions"] = {"prompt": prompt_condition(cfg, float(cfg.claim.prompt.base_drop_prob))}
    return out


def controlnet_overrides(cfg: DictConfig, name: str, base_file: Path, ae_file: Path | None,
                         scale: float | None) -> dict:
    c = cfg.claim
    ctl = c.controls[name]
    base_model = OmegaConf.to_container(cfg.model, resolve=True)
    if c.get("prompt") is not None:
        base_model["num_classes"] = prompt_classes(cfg)
    encoder = OmegaConf.to_container(ctl.encoder, resolve=True) if ctl.get("encoder") is not None else None
    conditions = {"control": {"_target_": "shared.methods.conditions.TensorCondition",
                              "key": str(ctl.key), "kwarg": "control", "encoder": encoder}}
    if c.get("prompt") is not None:  # the base's prompt stays a condition, dropped at the paper's 50 %
        conditions = {"prompt": prompt_condition(cfg, float(c.prompt.controlnet_drop_prob)), **conditions}
    out = {
        "model": {"_target_": "shared.nn.controlnet.controlled_unet", "base": base_model,
                  "hint_channels": int(ctl.hint_channels), "hint_block": list(c.hint_block),
                  "base_weights": str(base_file)},
        "module.conditions": conditions,
        "module.optimizer.lr": float(c.controlnet_lr), "trainer.max_steps": int(c.controlnet_steps),
    }
    if ae_file is not None:   # the base's frozen first stage and latent scale
        out.update({"module.latent.autoencoder.weights_path": str(ae_file), "module.latent.scale_factor": scale})
    return out


def seed_job(cfg: DictConfig, seed: int, judges, src: dict, real_stats: tuple, ae_file: Path | None
             ) -> tuple[dict, dict]:
    c = cfg.claim
    run_dir = Path(cfg.run_dir)
    out: dict = {}
    ts = time.time()
    base = fit_variant(cfg, f"base_seed{seed}", base_overrides(cfg, ae_file), seed)
    out["base_train_time_s"] = time.time() - ts
    base_file = save_weights(base.sampling_net(True), run_dir / f"base_seed{seed}" / "base_unet.safetensors")
    scale = base.latent.scale_factor if ae_file is not None else None
    n = int(c.num_samples)
    x_T = torch.randn((n, *base.sample_shape), generator=torch.Generator().manual_seed(int(c.sample_seed) + seed))
    sampler = OmegaConf.to_container(c.sampler, resolve=True)

    prompt = {str(c.prompt.key): src[str(c.prompt.key)]} if c.get("prompt") is not None else {}

    def draw(module, cond=None):   # every model gets the source's prompt (a prompted base), if any
        return module.sample(x_T=x_T.clone(), cond={**prompt, **(cond or {})}, sampler=sampler,
                             generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)

    samples = {"base": draw(base)}
    for name in c.use_controls:
        ts = time.time()
        module = fit_variant(cfg, f"controlnet_{name}_seed{seed}",
                             controlnet_overrides(cfg, name, base_file, ae_file, scale), seed)
        out[f"controlnet_train_time_s_{name}"] = time.time() - ts
        trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
        out[f"controlnet_trainable_params_{name}"] = float(trainable)
        key = str(c.controls[name].key)
        samples[name] = draw(module, {key: src[key]})
    for name, x in samples.items():
        for k, v in judges.errors(x, src).items():
            out[f"{k}_{name}"] = v
        out[f"fd_frames_{name}"] = judges.fd(x, real_stats)
        out[f"consistency_{name}"] = frame_consistency(x)
    for name in c.use_controls:
        for k in judges.ratios:
            out[f"ratio_{k}_{name}_to_base"] = out[f"{k}_{name}"] / out[f"{k}_base"]
        out[f"ratio_fd_frames_{name}_to_base"] = out[f"fd_frames_{name}"] / out["fd_frames_base"]
    return out, samples


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judges = judges_for(c)
    n = int(c.num_samples)
    keys = judges.keys
    if c.get("prompt") is not None:
        keys += (str(c.prompt.key),)
    source_world = OmegaConf.to_container(c.source_world, resolve=True) if c.get("source_world") else {}
    items = dict(zip(keys, world_items(cfg, 2 * n, int(c.real_seed), keys=keys, **source_world)))
    src = {k: v[:n] for k, v in items.items()}
    ref = world_items(cfg, n, int(c.floor_seed), **source_world)
    real_stats = judges.stats(ref)
    own, swapped = judges.errors(src["x"], src), judges.errors(items["x"][n:], src)
    metrics: dict = {   # the judges' separations on real videos (before any model)
        **{f"judge_{k}_real_own_control": v for k, v in own.items()},
        **{f"judge_{k}_real_other_control": v for k, v in swapped.items()},
        "fd_frames_real_floor": judges.fd(src["x"], real_stats), "consistency_real": frame_consistency(src["x"]),
    }
    ae_file = None
    if c.get("latent", True):   # latent space: the frozen first stage, trained once per run
        ae_file, rec, metrics["autoencoder_time_s"] = fit_first_stage(cfg, src["x"])
        for k in judges.ratios:   # the first stage's floor: the control error of mere reconstructions
            metrics[f"judge_{k}_reconstructions"] = judges.errors(rec, src)[k]
        metrics["fd_frames_reconstructions"] = judges.fd(rec, real_stats)
    per_seed, gifs = timed_seeds(c.seeds, lambda s: seed_job(cfg, s, judges, src, real_stats, ae_file))
    summarise_seeds(per_seed, metrics)
    k = int(c.gif_videos)
    if k > 0:
        cols = [("source", src["x"][:k]), ("uncontrolled", gifs["base"][:k])]
        for name in c.use_controls:
            key = str(c.controls[name].key)
            cols += [(key, control_image(key, src[key][:k])), (f"{name} out", gifs[name][:k])]
        save_labelled_columns(cols, Path(cfg.run_dir) / "input_control_output.gif", fps=4, scale=4)
    record = finish(cfg, metrics, paper="controlnet_video", claim=str(c.name), t0=t0, artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_samples": n,
                           "judge_sha256": judges.sha256})
    return record
