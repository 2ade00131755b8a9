"""AnimateDiff claim check on the Sprites world (``experiments/animatediff/sprites_claim.yaml``), pixel space, the
sprite identity as the "text" prompt.

Why a second world: on MovingDigits (``claim.py``) the motion module barely changed the network and the judge could
not tell its videos from per-frame sampling. Sprites (`shared.data.sprite_worlds`) have four identities of strong
colour and shape that a 0.2M-parameter image model draws well, moving in straight lines, so a closed-form judge
(`shared.metrics.sprite_judge`) reads exactly whether a video keeps its identity and moves coherently; and the
personalisation has a clear subject: a **new identity** (``claim.new_identity``, e.g. a magenta diamond) that no base
training frame and no motion-module training clip shows — the DreamBooth subject the motion module must animate
without having seen it.

Stages per seed (``claim.stages``, each trained by :func:`shared.engine.claims.fit_variant` and exported by
:meth:`AnimateDiff.export_weights`; ``claim.stop_after: image`` ends after the base — the protocol run):

1. ``image``: the base, class-conditional on the base identities (label dropout: the null label is the "empty
   prompt").
2. ``motion``: the base frozen, motion modules trained on clips of every direction but ``held_out_direction``.
3. ``personalize_full`` / ``personalize_lora``: the base fine-tuned on frames of the new identity with the null label.
4. ``motion_lora``: MotionLoRA on ``motion_lora_clips`` clips of the held-out direction.

Scores with the empty prompt (``claim.sampler``, ``num_samples`` each): for each personalised model, stills, videos
sampled frame by frame (independent noise per frame) and videos with the motion module plugged in — the judge's
``domain_accuracy`` (share of valid frames showing the new identity), ``identity_consistent``, ``motion_coherent``,
``coherent``; MotionLoRA: the judge's ``direction_accuracy`` for the held-out direction of base + motion-module videos
before and after. ``separation``: the judge on real clips with and without each property.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from papers.animatediff.claim import METHODS, build, draw, train_stage
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import finish, summarise, world_items
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import SpriteJudge, claim_judge, separation


def judge_of(cfg: DictConfig) -> SpriteJudge:
    return claim_judge(cfg, [cfg.claim.new_identity])


def prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in scores.items()}


def seed_job(cfg: DictConfig, seed: int, judge: SpriteJudge) -> tuple[dict, dict]:
    c = cfg.claim
    T, S = int(cfg.data.frames), int(cfg.data.size)
    n, out, gifs = int(c.num_samples), {}, {}
    base_ids = list(cfg.data.train.identities)
    new_idx = len(base_ids)
    sseed = int(c.sample_seed) + 100 * int(seed)
    base_w = train_stage(cfg, "image", f"image_seed{seed}", seed)

    def still(net):  # a still image repeated over T
        return draw(cfg, net, n, (3, S, S), sseed)[:, :, None].expand(-1, -1, T, -1, -1).contiguous()

    def per_frame(net):  # independent noise per frame
        x = draw(cfg, net, n * T, (3, S, S), sseed + 1)
        return x.view(n, T, 3, S, S).transpose(1, 2).contiguous()

    base = build(cfg, stage="image", image_weights=str(base_w))
    base_pf = per_frame(base)
    out.update(prefixed("base_image", judge.scores(base_pf)))      # the image model's floor, frame by frame
    gifs["base_per_frame"] = base_pf
    if str(c.get("stop_after") or "") == "image":
        return out, gifs

    held = int(c.held_out_direction)
    motion_dirs = [d for d in range(8) if d != held]
    mm_w = train_stage(cfg, "motion", f"motion_seed{seed}", seed,
                       {"model.image_weights": str(base_w), "data.train.directions": motion_dirs})

    def animate(**fields):
        net = build(cfg, stage="animate", image_weights=str(base_w), motion_weights=str(mm_w), **fields)
        return draw(cfg, net, n, (3, T, S, S), sseed + 2)

    base_vid = animate()
    out.update(prefixed("base_mm", judge.scores(base_vid)))
    gifs["base_mm"] = base_vid
    for method in METHODS:
        tag = f"personalize_{method}_seed{seed}"
        w = train_stage(cfg, f"personalize_{method}", tag, seed,
                        {"model.image_weights": str(base_w), "data.train.identities": [str(c.new_identity)]})
        personal = {"kind": method, "path": str(w)}
        img = build(cfg, stage="image", image_weights=str(base_w), personal=personal)
        vid, pf = animate(personal=personal), per_frame(img)
        out.update(prefixed(f"{method}_still", judge.scores(still(img), domain=[new_idx])))
        out.update(prefixed(f"{method}_perframe", judge.scores(pf, domain=[new_idx])))
        out.update(prefixed(f"{method}_mm", judge.scores(vid, domain=[new_idx])))
        gifs[f"{method}_perframe"], gifs[f"{method}_mm"] = pf, vid
    ml_w = train_stage(cfg, "motion_lora", f"motion_lora_seed{seed}", seed,
                       {"model.image_weights": str(base_w), "model.motion_weights": str(mm_w),
                        "data.train.directions": [held], "data.train.n": int(c.motion_lora_clips)})
    ml_vid = animate(motion_lora_weights=str(ml_w))
    target = torch.full((n,), held, dtype=torch.long)
    out["motion_acc_before"] = judge.scores(base_vid, direction=target)["direction_accuracy"]
    out["motion_acc_after"] = judge.scores(ml_vid, direction=target)["direction_accuracy"]
    out.update(prefixed("motion_lora", judge.scores(ml_vid)))
    gifs["motion_lora"] = ml_vid
    mean = lambda key: sum(out[f"{m}_{key}"] for m in METHODS) / len(METHODS)  # noqa: E731
    for key in ("still_domain_accuracy", "perframe_domain_accuracy", "mm_domain_accuracy",
                "perframe_identity_consistent", "mm_identity_consistent", "perframe_motion_coherent",
                "mm_motion_coherent", "perframe_coherent", "mm_coherent", "still_frame_validity"):
        out[f"personal_{key}"] = mean(key)
    return out, gifs


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = judge_of(cfg)
    n, T = int(c.num_samples), int(cfg.data.frames)
    real = world_items(cfg, n, int(c.real_seed), world=Sprites, frames_only=False)
    swapped = world_items(cfg, n, int(c.real_seed), world=Sprites, frames_only=False, identity_swap_at=T // 2)
    metrics: dict = {"separation": separation(judge, real, swapped, seed=int(c.real_seed))}
    per_seed = []
    for i, seed in enumerate(c.seeds):
        ts = time.time()
        res, gifs = seed_job(cfg, int(seed), judge)
        res["seed_wall_time_s"] = time.time() - ts
        per_seed.append(res)
        if i == 0 and int(c.gif_videos) > 0:
            k = int(c.gif_videos)
            labels = [("base_per_frame", "base model,\nframe by frame"), ("base_mm", "base +\nmotion module"),
                      ("full_perframe", f"full fine-tune\n({c.new_identity}),\nframe by frame"),
                      ("full_mm", "full fine-tune +\nmotion module"),
                      ("lora_perframe", "LoRA fine-tune,\nframe by frame"),
                      ("lora_mm", "LoRA fine-tune +\nmotion module"),
                      ("motion_lora", "base + motion module\n+ MotionLoRA (left)")]
            rows = [("real test clips", real[:k])] + [(label, gifs[key][:k]) for key, label in labels if key in gifs]
            save_labelled_rows(rows, Path(cfg.run_dir) / "grid.gif", fps=4, scale=3, frame_counter=True)
    for key in per_seed[0]:
        metrics[key] = summarise([r[key] for r in per_seed])
    record = finish(cfg, metrics, paper="animatediff", claim=str(c.name), t0=t0,
                    extra={"nfe": int(c.sampler.steps), "num_samples": n, "judge": "shared.metrics.sprite_judge"},
                    artifacts=("*.png", "grid.gif"))
    return record
