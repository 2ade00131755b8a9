"""Hydra entry point: sample from RELEASED weights, loaded from local paths (nothing downloads).

    python -m shared.engine.generate task=dit weights=weights/DiT-XL-2-256x256.pt vae=weights/sd-vae-ft-ema
    python -m shared.engine.generate task=text2image sd=weights/stable-diffusion-v1-5 prompt="a photo of a cat"
    python -m shared.engine.generate task=text2video sd=weights/stable-diffusion-v1-5 \\
        motion_module=weights/animatediff/mm_sd_v15_v2.ckpt prompt="a corgi running on the beach" out=corgi.mp4
    python -m shared.engine.generate task=invert sd=weights/stable-diffusion-v1-5 image=cat.png prompt="a cat"

* ``dit`` — class-conditional DiT-XL/2 (Peebles & Xie 2023) at 256 or 512 (``image_size``) from the official
  checkpoint file (facebookresearch/DiT ``DiT-XL-2-256x256.pt``), decoded by the SD VAE (``vae``: the diffusers
  folder ``sd-vae-ft-ema`` or ``-mse``), 250 DDPM steps with the learned variance, classifier-free guidance on the
  eps channels (``guidance_scale``; the official sample script's default 4.0, the paper's FID at 1.5). The
  network and sampler are those of ``experiment=dit/imagenet{256,512}_xl2`` (``papers/dit``).
* ``text2image`` — Stable Diffusion 1.5 from a diffusers folder (``unet/``, ``text_encoder/``, ``vae/``): DDIM at
  ``steps`` with classifier-free guidance, SD's scaled-linear schedule.
* ``text2video`` — the same SD-1.5 with an AnimateDiff motion module (``mm_sd_v15.ckpt`` v1 or
  ``mm_sd_v15_v2.ckpt`` v2, detected from its keys: v2 adds the mid-block module and 32 positions), the network of
  ``experiment=animatediff/webvid_sd15`` at stage ``animate``; writes a GIF or MP4 (``out``'s extension).
* ``invert`` — DDIM inversion (Song et al. 2021, Sec. 4.3 / 5.4) of a user image with SD-1.5: the image's latent
  is run backwards to ``x_T`` under ``prompt`` (guidance 1), then forwards again; writes the inverted noise
  (``.pt``), the reconstruction beside the input, its PSNR, and with ``edit_prompt`` the image regenerated from
  the same ``x_T`` under another prompt.

Each missing file is a one-line error naming the expected file and where it comes from
(``docs/DATA_AND_WEIGHTS.md``). ``overrides`` (a list) goes to the composed experiment config (tests shrink the
networks with it).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from shared.engine.cli import friendly_errors

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("dit", "text2image", "text2video", "invert")
GUIDE = "docs/DATA_AND_WEIGHTS.md"


class WeightsError(FileNotFoundError):
    """A released-weights file that is not where the command says: one line naming it and its source."""


def _need_file(path, what: str, source: str) -> Path:
    p = Path(str(path)).expanduser() if path else None
    if p is None or not p.is_file():
        raise WeightsError(f"{what} not found at '{path}': expected {source} ({GUIDE})")
    return p


def _need_sd(path) -> Path:
    p = Path(str(path)).expanduser() if path else None
    need = ("unet/config.json", "text_encoder/config.json", "vae/config.json")
    if p is None or not all((p / n).is_file() for n in need):
        raise WeightsError(f"Stable Diffusion 1.5 folder not found at '{path}': expected a diffusers folder with "
                           "unet/, text_encoder/ and vae/ (config.json + *.safetensors each), e.g. "
                           f"stable-diffusion-v1-5/stable-diffusion-v1-5 on Hugging Face ({GUIDE})")
    return p


def _vae_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"no VAE weights in '{folder}': expected diffusion_pytorch_model.safetensors ({GUIDE})")


def _compose(overrides):
    from shared.engine.compose import compose

    return compose(list(overrides))


def _sd_overrides(sd: Path, cfg: DictConfig) -> list[str]:
    return [f"model.image.weights={sd}", f"module.text_encoder.weights={sd}",
            f"module.latent.autoencoder.weights_path={_vae_file(sd / 'vae')}", "model.image.use_checkpoint=false"]


def motion_module_version(path) -> int:
    """2 for a v2 motion module (``mm_sd_v15_v2``: a mid-block module), else 1."""
    from shared.nn.motion_module import load_official_checkpoint

    return 2 if any("mid_block" in k for k in load_official_checkpoint(path)) else 1


def build(cfg: DictConfig):
    """The module of ``cfg.task`` with its released weights, and the default sampler settings."""
    from hydra.utils import instantiate

    extra = list(cfg.get("overrides") or [])
    task = cfg.task
    if task == "dit":
        ckpt = _need_file(cfg.weights, "DiT checkpoint",
                          f"DiT-XL-2-{cfg.image_size}x{cfg.image_size}.pt of facebookresearch/DiT "
                          f"(dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{cfg.image_size}x{cfg.image_size}.pt)")
        vae = Path(str(cfg.vae)).expanduser() if cfg.vae else None
        if vae is None or not (vae / "config.json").is_file():
            raise WeightsError(f"SD VAE folder not found at '{cfg.vae}': expected a diffusers folder sd-vae-ft-ema "
                               f"(or sd-vae-ft-mse) with config.json + diffusion_pytorch_model.safetensors, "
                               f"stabilityai/sd-vae-ft-ema on Hugging Face ({GUIDE})")
        if int(cfg.image_size) not in (256, 512):
            raise ValueError(f"image_size must be 256 or 512 (the released DiT-XL/2 models), got {cfg.image_size}")
        over = [f"experiment=dit/imagenet{cfg.image_size}_xl2",
                f"module.latent.autoencoder.weights_path={_vae_file(vae)}", *extra]
        module = instantiate(_compose(over).module)
        from shared.nn.transformer import load_official_state_dict

        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        try:
            load_official_state_dict(module.net, state)
        except RuntimeError as e:
            raise ValueError(f"{ckpt}: {str(e)[:300]}") from None
        return module.eval(), {"name": "ddpm", "steps": 250, "guidance_scale": 4.0}
    if task in ("text2image", "invert", "text2video"):
        sd = _need_sd(cfg.sd)
        h, w = int(cfg.height), int(cfg.width)
        over = ["experiment=animatediff/webvid_sd15", *_sd_overrides(sd, cfg)]
        if task == "text2video":
            mm = _need_file(cfg.motion_module, "AnimateDiff motion module",
                            "mm_sd_v15.ckpt (v1) or mm_sd_v15_v2.ckpt (v2) of guoyww/animatediff on Hugging Face")
            over += ["model.stage=animate", f"model.motion_weights={mm}"]
            if motion_module_version(mm) == 2:
                over += ["model.where=[input,middle,output]", "model.motion_module.max_len=32"]
        else:
            over += ["model.stage=image", "module.base=shared.methods.diffusion_module.DiffusionModule",
                     "module.schedule.betas=scaled_linear"]
        composed = _compose([*over, *extra])
        ae = composed.module.latent.autoencoder
        factor, ch = 2 ** (len(ae.block_out_channels) - 1), int(ae.latent_channels)   # SD's VAE: 8, 4
        if h % factor or w % factor:
            raise ValueError(f"height and width must be multiples of {factor} (the VAE's factor), got {h}x{w}")
        frames = [int(cfg.frames)] if task == "text2video" else []
        composed.module.sample_shape = [ch, *frames, h // factor, w // factor]
        module = instantiate(composed.module)
        return module.eval(), {"name": "ddim", "steps": 25 if task == "text2video" else 50, "eta": 0.0,
                               "guidance_scale": 7.5}
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")


def _sampler(cfg: DictConfig, defaults: dict) -> dict:
    s = dict(defaults)
    if cfg.get("steps") is not None:
        s["steps"] = int(cfg.steps)
    if cfg.get("guidance_scale") is not None:
        s["guidance_scale"] = float(cfg.guidance_scale)
    return s


def _out(cfg: DictConfig, name: str) -> Path:
    if cfg.get("out"):
        return Path(str(cfg.out))
    from hydra.core.hydra_config import HydraConfig

    try:
        folder = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        folder = Path("outputs") / "generate" / time.strftime("%Y-%m-%d_%H-%M-%S")
    return folder / name


def _prompts(cfg: DictConfig, n: int) -> list[str]:
    if not cfg.get("prompt"):
        raise ValueError(f"task={cfg.task} needs prompt=\"...\"")
    p = [cfg.prompt] if isinstance(cfg.prompt, str) else [str(x) for x in cfg.prompt]
    return [p[i % len(p)] for i in range(n)]


@torch.no_grad()
def generate(cfg: DictConfig) -> dict:
    """Run ``cfg.task``; returns ``{"paths": [...], ...}``."""
    from shared.engine import progress
    from shared.engine.video_io import save_image_grid, save_video_grid

    progress.enable()
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {cfg.task!r}")
    if cfg.task == "invert":   # fail before loading any weights
        _need_file(cfg.image, "input image", "a PNG/JPEG of yours to invert")
        _prompts(cfg, 1)
    module, defaults = build(cfg)
    sampler = _sampler(cfg, defaults)
    g = torch.Generator().manual_seed(int(cfg.seed))
    if cfg.task == "dit":
        labels = torch.as_tensor(list(cfg.labels), dtype=torch.long)
        n = int(cfg.n or len(labels))
        x = module.sample(n, cond={"y": labels.repeat(n // len(labels) + 1)[:n]}, sampler=sampler, generator=g,
                          use_ema=False)
        path = save_image_grid(x, _out(cfg, "dit.png"), nrow=max(1, int(len(x) ** 0.5)))
        return {"paths": [str(path)], "sampler": sampler}
    if cfg.task == "invert":
        return _invert(cfg, module, sampler)
    n = int(cfg.n or 1)
    x = module.sample(n, cond={"caption": _prompts(cfg, n)}, sampler=sampler, generator=g, use_ema=False)
    if cfg.task == "text2image":
        path = save_image_grid(x, _out(cfg, "text2image.png"), nrow=max(1, int(n**0.5)))
    else:
        out = _out(cfg, "text2video.gif")
        if out.suffix.lower() not in (".gif", ".mp4"):
            raise ValueError(f"out must end in .gif or .mp4 for text2video, got {out}")
        path = save_video_grid(x, out, nrow=max(1, int(n**0.5)), fps=float(cfg.fps))
    return {"paths": [str(path)], "sampler": sampler}


def _invert(cfg: DictConfig, module, sampler: dict) -> dict:
    from PIL import Image

    from shared.engine.video_io import save_image_grid
    from shared.methods.editing import invert, regenerate

    src = _need_file(cfg.image, "input image", "a PNG/JPEG of yours to invert")
    h, w = int(cfg.height), int(cfg.width)
    img = Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC)
    x = torch.as_tensor(list(img.getdata()), dtype=torch.float32).view(h, w, 3).permute(2, 0, 1)[None] / 127.5 - 1
    z0 = module.latent.encode(x)
    prompt = _prompts(cfg, 1)
    steps = int(sampler["steps"])
    x_T = invert(module, z0, {"caption": prompt}, steps, use_ema=False)
    rec = module.latent.decode(regenerate(module, x_T, {"caption": prompt}, steps, use_ema=False))
    out = _out(cfg, "inversion.png")
    torch.save({"x_T": x_T, "prompt": prompt[0], "steps": steps}, out.with_suffix(".pt"))
    row = [x, rec.clamp(-1, 1)]
    if cfg.get("edit_prompt"):
        row.append(module.latent.decode(regenerate(module, x_T, {"caption": [str(cfg.edit_prompt)]}, steps,
                                                   float(sampler["guidance_scale"]), use_ema=False)).clamp(-1, 1))
    path = save_image_grid(torch.cat(row), out, nrow=len(row))
    mse = float(((rec.clamp(-1, 1) - x) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()
    return {"paths": [str(path), str(out.with_suffix(".pt"))], "reconstruction_psnr_db": psnr, "sampler": sampler}


@hydra.main(config_path="../../conf", config_name="generate", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    with friendly_errors():
        try:
            res = generate(cfg)
        except (WeightsError, ValueError) as e:
            if os.environ.get("VDP_TRACEBACK"):
                raise
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            sys.exit(2)
        for p in res["paths"]:
            print(f"wrote {p}")
        if "reconstruction_psnr_db" in res:
            print(f"reconstruction PSNR {res['reconstruction_psnr_db']:.2f} dB")


def main():
    return _hydra_main()


if __name__ == "__main__":
    main()


