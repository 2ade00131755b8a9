"""Text2Video-Zero at paper scale: a text-to-image latent diffusion model (Stable Diffusion 1.5 from a local folder:
U-Net, VAE, CLIP text encoder) generates videos for a list of prompts, training-free
(``experiments/text2video_zero/sd15.yaml``). Writes ``videos.pt`` (decoded, (N, 3, T, H, W) in [-1, 1]) and a GIF per
prompt into the run folder; returns ``{"videos": path, "prompts": [...]}``."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from papers.text2video_zero.module import text2video_zero
from shared.engine.video_io import save_video_grid


@torch.no_grad()
def run(cfg: DictConfig) -> dict:
    g = cfg.generate
    module = instantiate(cfg.module).eval()
    prompts = list(g.prompts)
    n = len(prompts)
    velocity = torch.tensor([list(g.motion_velocity)] * n, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(g.seed))
    z = text2video_zero(module, {"caption": prompts}, velocity, int(g.frames), int(g.steps), int(g.t1), int(g.t0),
                        gen, guidance_scale=float(g.guidance_scale), motion=bool(g.motion),
                        cross_frame=bool(g.cross_frame))
    videos = module.latent.decode(z).clamp(-1, 1) if hasattr(module, "latent") else z.clamp(-1, 1)
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(videos, out / "videos.pt")
    for i in range(n):
        save_video_grid(videos[i:i + 1], out / f"video_{i}.gif", nrow=1, fps=4)
    return {"videos": str(out / "videos.pt"), "prompts": prompts}
