"""Hydra entry point: draw samples from a checkpoint with any sampler.

    python -m shared.engine.sample ckpt=outputs/.../checkpoints/last.ckpt sampler.name=ddim sampler.steps=10

The checkpoint alone rebuilds the module (its stored run config); the grid is written as PNG (images) or
GIF (videos).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from shared.engine.cli import check_count, friendly_errors, hydra_cli
from shared.methods.registry import module_from_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def draw(cfg: DictConfig):
    check_count(cfg.n, "n")
    check_count(cfg.seed, "seed", 0)
    module = module_from_checkpoint(cfg.ckpt)
    override = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    sampler = module.sampler_config(override)   # the checkpoint's sampler with the overrides, validated
    g = torch.Generator().manual_seed(int(cfg.seed))
    cond = {}
    if cfg.get("labels") is not None:
        labels = torch.as_tensor(list(cfg.labels), dtype=torch.long)
        cond = {"y": labels.repeat(int(cfg.n) // len(labels) + 1)[: int(cfg.n)]}
    if cfg.get("captions"):
        caps = [cfg.captions] if isinstance(cfg.captions, str) else list(cfg.captions)
        cond["caption"] = [str(caps[i % len(caps)]) for i in range(int(cfg.n))]
    x = module.sample(int(cfg.n), cond=cond, sampler=override, generator=g, use_ema=bool(cfg.use_ema))
    return module, sampler, x


@hydra.main(config_path="../../conf", config_name="sample", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    with friendly_errors():
        from shared.engine import progress
        from shared.engine.video_io import save_image_grid, save_video_grid

        progress.enable()
        _, sampler, x = draw(cfg)
        ext = "gif" if x.dim() == 5 else "png"
        name = f"{sampler['name']}_{sampler.get('steps')}.{ext}"
        out = Path(cfg.out or Path(cfg.ckpt).parent.parent / "samples" / name)
        out.parent.mkdir(parents=True, exist_ok=True)
        nrow = max(1, int(len(x) ** 0.5))
        (save_video_grid if x.dim() == 5 else save_image_grid)(x, out, nrow=nrow)
        print(f"wrote {out}")


def main():
    from shared.engine.quick import expand_argv

    sys.argv[1:] = expand_argv(sys.argv[1:], "sample")
    return _hydra_main()


main = hydra_cli(main)   # Hydra's own errors (a bad override) are one line too

if __name__ == "__main__":
    main()
