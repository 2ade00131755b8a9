"""Progressive-distillation claim check (PAPERS.md, ``progressive_distillation``) on the 8x8 digits world.

Per seed: train (or load) the EDM teacher, measure its DDIM FD_judge at ``claim.ddim_steps`` on the nested Karras
grid, then halve ``claim.pd.start_steps`` -> ... -> 1 (each round ``claim.pd.steps_per_round`` updates, student
initialised from the previous round, linear LR decay to 0 within the round as the paper) and measure FD_judge of
every round's student at its own number of steps. Claim: at 8, 4, 2, 1 steps PD is far below DDIM.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from shared.data.digits import real_splits
from shared.engine.claims import finish, fit_variant, module_config, summarise
from shared.engine.teachers import save_module, teacher_with_baseline
from shared.engine.video_io import save_image_grid
from shared.metrics.judge import fd_judge

TEACHER = "DDIM (EDM teacher)"
STUDENT = "PD"


def round_config(cfg: DictConfig, teacher_ckpt: str, teacher_steps: int) -> DictConfig:
    return module_config(cfg, cfg.claim.pd.module, teacher_ckpt=teacher_ckpt, teacher_steps=int(teacher_steps))


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    evaluate = bool(c.get("evaluate", True))   # false at paper scale: FD_judge is the digits world's metric
    real_a, real_b = real_splits(size=int(cfg.data.size)) if evaluate else (None, None)
    n = int(c.num_samples)
    start = int(c.pd.start_steps)
    rounds = []
    s = start // 2
    while s >= 1:
        rounds.append(s)
        s //= 2
    fd = {TEACHER: {int(k): [] for k in c.ddim_steps}, STUDENT: {k: [] for k in rounds}}
    teachers = {}
    for seed in c.seeds:
        teacher, prev = teacher_with_baseline(cfg, seed, teachers, fd[TEACHER], real_b if evaluate else None, (1,))
        if teacher is None:
            continue
        g0 = int(c.sample_seed) + int(seed)
        teacher_steps = start
        for student_steps in rounds:
            tag = f"pd_seed{seed}_{student_steps}step"
            student = fit_variant(cfg, tag, {"module": round_config(cfg, prev, teacher_steps),
                                             "trainer.max_steps": int(c.pd.steps_per_round)}, int(seed))
            if evaluate:
                g = torch.Generator().manual_seed(g0)
                x = student.sample_steps(n, student_steps, generator=g)
                fd[STUDENT][student_steps].append(fd_judge(x, real_b))
                if seed == c.seeds[0]:
                    save_image_grid(x[:64], f"{cfg.run_dir}/pd_{student_steps}step.png", nrow=8)
            prev = str(save_module(student, Path(cfg.run_dir) / tag / "student.ckpt"))
            teacher_steps = student_steps
    if c.get("teachers_only"):
        return {"teachers": teachers}
    budget = {"teacher_train_steps": int(cfg.trainer.max_steps), "start_steps": start,
              "steps_per_round": int(c.pd.steps_per_round), "rounds": len(rounds),
              "distill_train_steps_total": len(rounds) * int(c.pd.steps_per_round),
              "batch_size": int(cfg.data.batch_size), "teachers": teachers}
    if not evaluate:
        return finish(cfg, {"evaluated": False}, paper="progressive_distillation", claim=str(c.name), t0=t0,
                      extra={"budget": budget})
    table = {m: {str(k): summarise(v) for k, v in d.items()} for m, d in fd.items()}
    metrics = {"fd_judge_real_floor": fd_judge(real_a, real_b), "fd_vs_nfe": table}
    for k in rounds:
        if k in fd[TEACHER]:
            metrics[f"ratio_pd_to_ddim_{k}step"] = summarise([a / b for a, b in zip(fd[STUDENT][k], fd[TEACHER][k])])
    return finish(cfg, metrics, paper="progressive_distillation", claim=str(c.name), t0=t0,
                  extra={"num_samples": n, "budget": budget})
