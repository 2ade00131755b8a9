"""Long videos at paper scale (``experiments/long_video/animatediff_sd15_freenoise.yaml``): AnimateDiff (Stable
Diffusion 1.5's U-Net, VAE and CLIP text encoder from a local folder + a released motion module) generates videos
several times its 16-frame training length for a list of prompts, training-free, by one of the claim's methods
(``generate.method``):

* ``freenoise`` — FreeNoise's rescheduled initial noise and pyramid-weighted window fusion at every DDIM step;
* ``fusion_iid`` — the same window fusion from i.i.d. noise (FreeNoise's ablation);
* ``naive`` — independent 16-frame clips side by side;
* ``autoregressive`` — LVDM-style extension: each new window completes the last ``context`` frames of the video so
  far (the module's ``sample(cond={"x_known", "known"})``, replacement or reconstruction guidance).

Classifier-free guidance runs inside each window's denoiser call (``module.denoiser(cond, guidance_scale)``: the
conditional and empty-caption passes as one batch), so the fused denoiser fuses guided predictions. Writes
``videos.pt`` (decoded, (N, 3, T, H, W) in [-1, 1]) and a GIF per prompt into the run folder; returns
``{"videos": path, "prompts": [...], "method": ..., "latents": (N, C, T, h, w)}``. Nothing is published."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from shared.diffusion.long_video import (
    autoregressive_extend,
    concatenate_windows,
    freenoise_noise,
    fused_window_denoiser,
)
from shared.engine.video_io import save_video_grid
from shared.methods.sampling import run_sampler, split_sampler_config

METHODS = ("freenoise", "fusion_iid", "naive", "autoregressive")


def long_latents(module, prompts: list[str], g: DictConfig) -> torch.Tensor:
    """Latent videos (N, C, total, h, w) of ``g.method`` (module docstring); ``g.window`` is the model's clip
    length (``module.sample_shape[1]``)."""
    method = str(g.method)
    if method not in METHODS:
        raise ValueError(f"generate.method must be one of {METHODS}, got {method!r}")
    window, total, stride = int(g.window), int(g.total_frames), int(g.stride)
    shape = tuple(module.sample_shape)
    if len(shape) != 4 or shape[1] != window:
        raise ValueError(f"module.sample_shape {list(shape)} must be (C, window={window}, h, w)")
    n = len(prompts)
    cond = {"caption": prompts}
    sampler = {"name": "ddim", "steps": int(g.steps), "eta": float(g.eta), "guidance_scale": float(g.guidance_scale)}
    long_shape = (n, shape[0], total, *shape[2:])
    latent = {"decode": False} if hasattr(module, "latent") else {}   # every method stays in latent space

    def sample(**kw) -> torch.Tensor:
        return module.sample(n, sampler=kw.pop("sampler", sampler), **latent, **kw)

    def gen(k: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(int(g.seed) + 1000 * k)

    if method == "naive":
        return concatenate_windows(lambda k: sample(cond=cond, generator=gen(k)), total, window)
    if method == "autoregressive":
        first = sample(cond=cond, generator=gen())
        ext = {**sampler, "extension": str(g.extension), "w_r": float(g.w_r)}
        calls = iter(range(1, 10_000))

        def complete(x_known, known):
            return sample(cond={**cond, "x_known": x_known, "known": known}, sampler=ext, generator=gen(next(calls)))

        return autoregressive_extend(complete, first, total, int(g.context))
    name, steps, options, _ = split_sampler_config(module.sampler_config(sampler))   # what module.sample runs
    den = fused_window_denoiser(module.denoiser(True, cond, float(g.guidance_scale)), window, stride,
                                str(g.weighting))
    g0 = gen()
    x_T = (freenoise_noise(long_shape, window, stride, generator=g0) if method == "freenoise"
           else torch.randn(long_shape, generator=g0)).to(module.device)
    return run_sampler(module.samplers()[name], den, x_T, module.schedule, steps, g0, options)


@torch.no_grad()
def run(cfg: DictConfig) -> dict:
    g = cfg.generate
    module = instantiate(cfg.module).eval()
    prompts = list(g.prompts)
    z = long_latents(module, prompts, g)
    videos = module.latent.decode(z).clamp(-1, 1) if hasattr(module, "latent") else z.clamp(-1, 1)
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(videos, out / "videos.pt")
    for i in range(len(prompts)):
        save_video_grid(videos[i:i + 1], out / f"video_{i}.gif", nrow=1, fps=int(g.fps))
    return {"videos": str(out / "videos.pt"), "prompts": prompts, "method": str(g.method),
            "latents": tuple(z.shape)}
