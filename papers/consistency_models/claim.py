"""Consistency-models claim check (PAPERS.md, ``consistency_models``) on the 8x8 digits world.

Per seed: train (or load) the EDM teacher and measure its 1- and 2-step DDIM FD_judge; distil it with CD
(``claim.cd``: initialised from the teacher, Heun teacher steps, fixed N and mu) and train CT from scratch without
a teacher (``claim.ct``: N(k), mu(k)); measure 1-step (``[T]``) and 2-step (``[T, claim.mid_sigma]``) multistep
consistency sampling. Claims: CD 1-step well below the teacher's 1-step DDIM; 2-step better than 1-step; CT works
without a teacher (far below 1-step DDIM).

``claim.methods`` names the trained models (default ``[CD, CT]``; each reads its part ``claim.<method lower>``), so
improved consistency training (``claim.ict``: Song & Dhariwal 2023) runs next to the original CT at equal steps;
``claim.teacher: false`` skips the teacher and its DDIM baseline (no method then may need it).
"""
from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

from shared.data.digits import real_splits
from shared.engine.claims import finish, fit_variant, module_config, summarise
from shared.engine.teachers import teacher_with_baseline
from shared.engine.video_io import save_image_grid
from shared.metrics.judge import fd_judge

TEACHER = "DDIM (EDM teacher)"


def variant_module(cfg: DictConfig, part: DictConfig, steps: int, teacher_ckpt: str | None) -> DictConfig:
    return module_config(cfg, part.module, total_steps=int(steps), teacher_ckpt=teacher_ckpt)


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    evaluate = bool(c.get("evaluate", True))   # false at paper scale: FD_judge is the digits world's metric
    real_a, real_b = real_splits(size=int(cfg.data.size)) if evaluate else (None, None)
    n = int(c.num_samples)
    T = float(cfg.edm_schedule.sigma_max)
    times = {1: [T], 2: [T, float(c.mid_sigma)]}
    methods = [str(m) for m in c.get("methods") or ("CD", "CT")]
    use_teacher = bool(c.get("teacher", True))
    if not use_teacher and "CD" in methods:
        raise ValueError("claim.methods includes CD, which distils a teacher: set claim.teacher=true")
    fd = {TEACHER: {int(k): [] for k in c.ddim_steps}, **{m: {1: [], 2: []} for m in methods}}
    teachers = {}
    for seed in c.seeds:
        tpath = None
        if use_teacher:
            teacher, tpath = teacher_with_baseline(cfg, seed, teachers, fd[TEACHER], real_b if evaluate else None)
            if teacher is None:
                continue
        g0 = int(c.sample_seed) + int(seed)
        for method in methods:
            part = c[method.lower()]
            if not part.get("enabled", True):
                continue
            model = fit_variant(cfg, f"{method.lower()}_seed{seed}",
                                {"module": variant_module(cfg, part, int(part.steps),
                                                          tpath if method == "CD" else None),
                                 "trainer.max_steps": int(part.steps)}, int(seed))
            for k, ts in (times.items() if evaluate else []):
                g = torch.Generator().manual_seed(g0)
                x = model.sample(n, sampler={"times": ts}, generator=g)
                fd[method][k].append(fd_judge(x, real_b))
                if seed == c.seeds[0]:
                    save_image_grid(x[:64], f"{cfg.run_dir}/{method.lower()}_{k}step.png", nrow=8)
    if c.get("teachers_only"):
        return {"teachers": teachers}
    budget = {"teacher_train_steps": int(cfg.trainer.max_steps) if use_teacher else 0,
              **{f"{m.lower()}_train_steps": int(c[m.lower()].steps) for m in methods},
              "batch_size": int(cfg.data.batch_size), "teachers": teachers,
              "sample_times": {str(k): v for k, v in times.items()}}
    distances = {m: str(c[m.lower()].module.distance) for m in methods}
    if not evaluate:
        return finish(cfg, {"evaluated": False}, paper="consistency_models", claim=str(c.name), t0=t0,
                      extra={"budget": budget, "distance": distances})
    fd = {m: d for m, d in fd.items() if all(d.values())}
    table = {m: {str(k): summarise(v) for k, v in d.items()} for m, d in fd.items()}
    metrics = {"fd_judge_real_floor": fd_judge(real_a, real_b), "fd_vs_nfe": table}
    ratio = lambda a, b: summarise([x / y for x, y in zip(a, b)])  # noqa: E731
    for m in methods:
        if m in fd:
            if TEACHER in fd:
                metrics[f"ratio_{m.lower()}1_to_ddim1"] = ratio(fd[m][1], fd[TEACHER][1])
            metrics[f"ratio_{m.lower()}2_to_{m.lower()}1"] = ratio(fd[m][2], fd[m][1])
    if "iCT" in fd and "CT" in fd:
        metrics["ratio_ict1_to_ct1"] = ratio(fd["iCT"][1], fd["CT"][1])
    return finish(cfg, metrics, paper="consistency_models", claim=str(c.name), t0=t0,
                  extra={"num_samples": n, "budget": budget, "distance": distances})
