"""Hydra entry point: FD_judge of a digits checkpoint's samples, written as ``results.json``.

    python -m shared.engine.evaluate ckpt=outputs/.../last.ckpt sampler.name=ddim sampler.steps=10
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from shared.engine.cli import check_count, friendly_errors, hydra_cli
from shared.engine.results import write_results
from shared.engine.sample import draw

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluate(cfg: DictConfig) -> dict:
    from omegaconf import open_dict

    from shared.data.digits import real_splits
    from shared.metrics.judge import fd_judge

    t0 = time.time()
    with open_dict(cfg):
        cfg.n = check_count(cfg.num_samples, "num_samples", 2)   # a Fréchet distance needs two samples
    module, sampler, x = draw(cfg)
    size = int(x.shape[-1])
    real_a, real_b = real_splits(size=size)
    metrics = {"fd_judge": fd_judge(x, real_b), "fd_judge_real_floor": fd_judge(real_a, real_b)}
    default = Path(cfg.ckpt).parent.parent / "eval" / f"{sampler['name']}_{sampler.get('steps')}" / "results.json"
    out = Path(cfg.out or default)
    return write_results(out, metrics, claim="evaluate", seeds=[int(cfg.seed)], wall_time_s=round(time.time() - t0, 1),
                         extra={"ckpt": str(cfg.ckpt), "sampler": sampler, "num_samples": int(cfg.num_samples),
                                "nfe": sampler.get('steps')})


@hydra.main(config_path="../../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig):
    with friendly_errors():
        rec = evaluate(cfg)
        print({k: round(v, 4) for k, v in rec["metrics"].items()})


main = hydra_cli(main)   # Hydra's own errors (a bad override) are one line too

if __name__ == "__main__":
    main()
