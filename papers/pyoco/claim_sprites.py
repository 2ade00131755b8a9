"""PYoCo claim check ("Preserve Your Own Correlation", Ge et al., ICCV 2023) on the Sprites world (8 frames at 16x16,
RGB, pixel space; the sprite identity is the prompt), scored by the closed-form sprite judge. Redesign of
``moving_digits_claim`` (``claim.py``), where fine-tuning improved no prior (the tiny image model could not hold a
handwritten digit's identity), so "fewer steps to a given FVD_judge" could not be read there.

Protocol (``cfg.claim``, fixed in ``experiments/pyoco/sprites_claim.yaml`` before the comparison run):

0. judge checks on real test clips, before any model: the sprite judge's separation (real vs identity-swapped,
   shuffled and independent-frame clips, ``shared.engine.claims.sprite_judge_checks``) and ``FVD_judge`` (Sprites,
   ``shared.metrics.sprite_judge.fvd_sprites``) of other real clips (the floor), of shuffled, independent-frame and
   frozen (first frame held) clips against the held-out real clips;
1. per seed, the image model (``claim.image``: the shared recipe ``conf/image_stage/sprites16.yaml``; trained or
   taken from the teacher cache), its EMA weights written to the run folder;
2. for each prior of ``claim.priors`` (``iid``, ``mixed``, ``progressive``; ``claim.prior_configs``): the image
   U-Net inflated with zero-initialised temporal attention, every weight fine-tuned on the same Sprites clips with
   that prior's noise, same steps, batch and optimiser; one run per prior, checkpointed and evaluated at each of
   ``claim.budgets`` (``claim.train_budgets``: the run continued from budget to budget, as an uninterrupted one);
3. at every budget, ``num_videos`` videos for the same labels (identities cycled) and generator seed, ``x_T`` drawn
   from the prior the model is fine-tuned with (PYoCo samples with its prior too): ``FVD_judge`` (Sprites) against
   the held-out real clips and the judge's scores (``shared.metrics.sprite_judge.claim_scores``).

Per-seed keys: ``<score>_<prior>_<budget>`` (``fvd_judge``, ``coherent``, ``frame_validity``, ...). "Reaches a
given FVD_judge in fewer steps": the ``expected:`` block compares each correlated prior at fewer steps with i.i.d.
noise at the last budget, per seed; "the mechanism is there": FVD_judge falls with fine-tuning.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from papers.pyoco.claim import train_budgets
from shared.data.sprite_worlds import Sprites
from shared.engine.claims import run_seeded_claim, seed_job_config, sprite_judge_checks, summarise, world_items
from shared.engine.teachers import image_stage_weights
from shared.engine.video_io import save_labelled_rows
from shared.metrics.sprite_judge import (
    claim_judge,
    claim_scores,
    fvd_sprites,
    independent_frames,
    shuffle_frames,
)

PRIORS = ("iid", "mixed", "progressive")
NAMES = {"iid": "i.i.d. noise", "mixed": "mixed prior", "progressive": "progressive\nprior"}


def real_clips(cfg: DictConfig, seed_key: str = "real_seed") -> torch.Tensor:
    c = cfg.claim
    return world_items(cfg, int(c.num_videos), int(c[seed_key]), world=Sprites, frames_only=False)


def checks(cfg: DictConfig) -> dict:
    """The sprite judge's separation and FVD_judge's: real clips of another seed (the floor), and those clips with
    their frames shuffled, taken from independent clips or frozen at the first frame, against the real clips."""
    judge = claim_judge(cfg)
    out = sprite_judge_checks(cfg, judge)
    real, other = real_clips(cfg), real_clips(cfg, "floor_seed")
    seed = int(cfg.claim.floor_seed)
    frozen = other[:, :, :1].expand_as(other).contiguous()
    out["fvd_judge"] = {"floor": fvd_sprites(judge, other, real),
                        "shuffled": fvd_sprites(judge, shuffle_frames(other, seed), real),
                        "independent": fvd_sprites(judge, independent_frames(other, seed + 1), real),
                        "frozen": fvd_sprites(judge, frozen, real)}
    return out


def seed_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    unknown = [p for p in c.priors if p not in PRIORS or p not in c.prior_configs]
    if unknown:
        raise ValueError(f"claim.priors: unknown prior(s) {unknown}; choose from {list(PRIORS)}")
    judge = claim_judge(cfg)
    image, image_file, out = image_stage_weights(cfg, c.image, seed)
    n = int(c.num_videos)
    labels = torch.arange(n) % len(cfg.data.train.identities)
    real = real_clips(cfg)
    sampler = dict(c.sampler)
    budgets = [int(b) for b in c.budgets]
    gifs = {}
    for prior in c.priors:
        ts, sample_s = time.time(), 0.0
        for budget, module in train_budgets(cfg, prior, image_file, seed):
            g = torch.Generator().manual_seed(int(c.sample_seed) + 1000 * int(seed))
            tv = time.time()
            with torch.no_grad():   # x_T from the module's prior (the one it is fine-tuned with)
                v = module.sample(n, cond={"y": labels}, sampler=sampler, generator=g).clamp(-1, 1)
            sample_s += time.time() - tv
            out[f"fvd_judge_{prior}_{budget}"] = fvd_sprites(judge, v, real)
            out.update(claim_scores(judge, v, labels, key=f"{{metric}}_{prior}_{budget}"))
            if budget in (0, budgets[-1]):
                gifs[(prior, budget)] = v[: int(c.gif_videos)]
        out[f"train_time_s_{prior}"] = time.time() - ts - sample_s
        out[f"train_s_per_step_{prior}"] = out[f"train_time_s_{prior}"] / max(budgets[-1], 1)
        out[f"sample_time_s_{prior}"] = sample_s
    if int(seed) == int(c.seeds[0]) and int(c.gif_videos) > 0:
        rows = [("real test clips", real[: int(c.gif_videos)])]
        rows += [(f"{NAMES[p]}\n{b} steps", v) for (p, b), v in gifs.items()]
        save_labelled_rows(rows, Path(cfg.run_dir) / "iid_vs_correlated_priors.gif", fps=4, scale=3,
                           frame_counter=True)
    return out


def run(cfg: DictConfig) -> dict:
    c = cfg.claim
    budgets = [int(b) for b in c.budgets]

    if len(budgets) < 4 or budgets[0] != 0:
        raise ValueError(f"claim.budgets={budgets}: give 0 and at least three step counts, e.g. [0, k, 2k, 4k] "
                         f"(quarter, half and full budget are the last three)")
    names = {"0": 0, "quarter": budgets[-3], "half": budgets[-2], "full": budgets[-1]}

    def derived(per_seed: list[dict]) -> dict:
        """Per prior: FVD_judge at 0 steps and at the quarter, half and full budget (the last three of
        ``claim.budgets``) under budget-independent names, the FVD_judge gained by fine-tuning (0 steps minus full),
        and FVD_judge at the quarter / half budget minus i.i.d. noise's at the full one (negative: below it)."""
        out = {}
        for prior in c.priors:
            for name, b in names.items():
                out[f"fvd_judge_{prior}_at_{name}"] = summarise([r[f"fvd_judge_{prior}_{b}"] for r in per_seed])
            out[f"fvd_judge_gain_{prior}"] = summarise(
                [r[f"fvd_judge_{prior}_0"] - r[f"fvd_judge_{prior}_{names['full']}"] for r in per_seed])
            if "iid" in c.priors:
                for name in ("quarter", "half"):
                    out[f"fvd_judge_{prior}_at_{name}_minus_iid_at_full"] = summarise(
                        [r[f"fvd_judge_{prior}_{names[name]}"] - r[f"fvd_judge_iid_{names['full']}"]
                         for r in per_seed])
        return out

    return run_seeded_claim(cfg, seed_job, paper="pyoco", checks=checks, derived=derived,
                            extra={"num_videos": int(c.num_videos), "budgets": budgets, "budget_names": names,
                                   "judge": "shared.metrics.sprite_judge (FVD_judge: fvd_sprites)"})
