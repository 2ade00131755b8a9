"""VideoFusion claim check (Luo et al., CVPR 2023) on MovingDigits (8 frames at 16x16, pixel space, digit = prompt).

Protocol (``cfg.claim``, fixed in the experiment config before the comparison run). Per seed:

1. the image model (``claim.image``: the shared recipe; trained or from the teacher cache);
2. two video models fine-tuned from it for the same number of steps (``trainer.max_steps``), same data, optimiser
   and batch:

   * ``iid`` — the image U-Net inflated with zero-initialised temporal attention (``conf/model/inflated_tiny``),
     trained and sampled with i.i.d. noise per frame (the standard diffusion process);
   * ``videofusion`` — the decomposed process: noise ``sqrt(lambda) b + sqrt(1 - lambda) r^i``
     (``BaseResidualNoise``, key frame ``ceil(N/2)``), predicted by the base generator (the image model, on the key
     frame) and the residual generator (the inflated copy) (``papers/videofusion/nets.py``);
3. ``num_videos`` videos each (labels cycling through the digits, same generator seed; ``x_T`` from each model's own
   prior) scored by ``FVD_judge`` against held-out real clips, raw-pixel frame consistency, appearance consistency
   (consecutive frames aligned on their ink centroid) and the judge's frame-to-frame digit agreement; the measured
   training seconds per step of both (VideoFusion runs its base generator once more per clip: "equal compute" here is
   equal steps and batch, the time is reported).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.claims import fit_variant, run_seeded_claim, seed_job_config, summarise, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.video_identity import real_vs_swapped, video_scores
from shared.metrics.video_judge import judge_sha256, load_video_judge


def judge_checks(cfg: DictConfig) -> dict:
    c = cfg.claim
    return real_vs_swapped(world_items(cfg, int(c.num_videos), int(c.real_seed)),
                           ("fvd_judge", "ink_consistency", "appearance"), load_video_judge(c.judge_path or None),
                           floor=world_items(cfg, int(c.num_videos), int(c.floor_seed)))


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    judge = load_video_judge(c.judge_path or None)
    run_dir = Path(cfg.run_dir)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    n = int(c.num_videos)
    labels = torch.arange(n) % 10
    real = world_items(cfg, n, int(c.real_seed))
    videos = {}
    for variant in c.variants:
        over = OmegaConf.to_container(c.variant_overrides[variant], resolve=False)
        over["model.weights"] = str(image_file)
        module = fit_variant(cfg, f"{variant}_seed{seed}", over, seed)
        out[f"train_s_per_step_{variant}"] = float(getattr(module, "fit_wall_time_s", float("nan"))) / \
            int(cfg.trainer.max_steps)
        g = torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))
        v = module.sample(n, cond={"y": labels}, sampler=dict(c.sampler), generator=g).clamp(-1, 1)
        videos[variant] = v
        out.update(video_scores(v, ("fvd_judge", "ink_consistency", "appearance", "digit_agreement"), judge,
                                f"{{metric}}_{variant}", real=real))
        out[f"params_{variant}"] = float(sum(p.numel() for p in module.net.parameters()))
    if int(seed) == int(c.seeds[0]):
        k = int(c.gif_videos)
        names = {"iid": "i.i.d. noise\n(baseline)", "videofusion": "VideoFusion\n(base+residual)"}
        save_labelled_rows({names.get(v, v): x[:k] for v, x in videos.items()}, run_dir / "iid_vs_videofusion.gif",
                           fps=4, scale=3)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim

    def ratio(per_seed: list[dict]) -> dict:
        return {"fvd_ratio_videofusion_to_iid": summarise([r["fvd_judge_videofusion"] / r["fvd_judge_iid"]
                                                           for r in per_seed])}

    return run_seeded_claim(cfg, seed_job, paper="videofusion", checks=judge_checks, derived=ratio,
                            extra={"num_videos": int(c.num_videos), "judge_sha256": judge_sha256(c.judge_path)})
