"""``make demo`` act for VDM: a tiny factorised 3D U-Net on moving digits (8 frames at 16x16), trained for
about a minute with joint image-video batches, then unconditional samples and a video extension (frames
5-8 given frames 1-4) by the replacement method and by reconstruction guidance, written as GIFs."""
from __future__ import annotations

from pathlib import Path

import torch

from shared.diffusion.conditioning import frames_mask
from shared.engine.video_io import save_video_grid
from shared.metrics.video import psnr


def demo_act(out: Path, fast: bool) -> list[tuple[str, str]]:
    from papers.vdm.claim import real_videos
    from shared.engine.compose import compose as _compose
    from shared.engine.run import fit

    steps = 3 if fast else 150
    cfg = _compose(["experiment=vdm/moving_digits_claim", "pipeline=null", f"trainer.max_steps={steps}",
                    "data.extra_images=4", "logger=none", "callbacks.samples=null"])
    module, _, _ = fit(cfg, run_dir=out / "vdm_model")
    module.eval()
    n, sampler = (4, {"steps": 4}) if fast else (16, {"steps": 24})
    g = torch.Generator().manual_seed(0)
    x = module.sample(n, sampler=sampler, generator=g)
    save_video_grid(x, out / "vdm_samples.gif", nrow=8, fps=4, scale=3)
    ctx, _ = real_videos(cfg, n, seed=3000)
    known = frames_mask(ctx.shape, [0, 1, 2, 3])
    rows = [("training steps (joint, +4 images per video)", str(steps))]
    for method in ("replacement", "reconstruction"):
        xe = module.extend(ctx, known, method=method, w_r=float(cfg.claim.w_r), sampler=sampler,
                           generator=torch.Generator().manual_seed(1))
        save_video_grid(torch.cat([ctx, xe]), out / f"vdm_extension_{method}.gif", nrow=n, fps=4, scale=3)
        score = psnr(xe[:, :, 4:], ctx[:, :, 4:])
        rows.append((f"extension frames 5-8, {method}", f"PSNR vs truth {score:5.2f} dB"))
    return rows
