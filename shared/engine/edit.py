"""Hydra entry point: edit a video with a trained video checkpoint by DDIM inversion (``shared.methods.editing``).

    python -m shared.engine.edit ckpt=outputs/<run>/checkpoints/last.ckpt edit_prompt='["a dog is skiing"]'
    python -m shared.engine.edit ckpt=<file.ckpt> video=<folder of frames | video file> prompt="a man is skiing" \\
        edit_prompt='["spider man is skiing on the beach"]' steps=50 guidance_scale=12.5

Tune-A-Video's editing step (Wu et al. 2023, Sec. 4.2): the source video is DDIM-inverted under its own caption
(unguided) with the tuned network, then sampled back from that noise under each edited caption (guided). With
``video=null`` the clip is the one the run trained on (item 0 of the run's ``data.train``: the one video of a
one-shot tuning run, rebuilt from the checkpoint's stored config after the allow-list check) and ``prompt`` its
caption; otherwise ``frames`` frames every ``stride`` from ``start`` of the user's folder or file, resized and
centre-cropped to the run's ``data.size``. Class-conditional checkpoints take ``label`` / ``edit_label`` instead.
Writes ``edit.gif`` (rows: source, reconstruction from the inverted noise, one per edit) and ``inverted.pt``
(``x_T``, the conditions, the steps) into ``out`` (default ``<run>/edits/<time>/``) and prints the
reconstruction's PSNR: how exact the inversion is, the first thing to check before trusting an edit.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from shared.engine.cli import UserError, check_count, friendly_errors, hydra_cli
from shared.methods.registry import module_from_checkpoint, safe_instantiate

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _list(value, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise UserError(f"{key} must be a value or a list, got {value!r}") from None


def _conditions(cfg: DictConfig, item: dict | None) -> tuple[dict, list[tuple[str, dict]]]:
    """The source condition and one ``(label, condition)`` per edit (captions or class labels)."""
    prompts, labels = [str(p) for p in _list(cfg.edit_prompt, "edit_prompt")], _list(cfg.edit_label, "edit_label")
    if bool(prompts) == bool(labels):
        raise UserError("give edit_prompt='[\"...\"]' (a text-conditioned checkpoint) or edit_label=[k] "
                        "(a class-conditional one), not both and not neither")
    if prompts:
        source = cfg.prompt if cfg.prompt is not None else (item or {}).get("caption")
        if not source:
            raise UserError("prompt=\"...\" (the source video's caption) is needed: the clip carries none")
        return {"caption": [str(source)]}, [(p, {"caption": [p]}) for p in prompts]
    source = cfg.label if cfg.label is not None else (item or {}).get("y")
    if source is None:
        raise UserError("label=k (the source video's class) is needed: the clip carries none")
    y = lambda v: torch.as_tensor([int(v)], dtype=torch.long)  # noqa: E731
    return {"y": y(source)}, [(f"label {int(k)}", {"y": y(k)}) for k in labels]


def _source_clip(cfg: DictConfig, run_cfg: dict) -> tuple[torch.Tensor, dict | None]:
    """(1, 3, T, H, W) in [-1, 1] and the dataset item it came from (None for a user's video)."""
    data = run_cfg.get("data") or {}
    if cfg.video is None:
        train = data.get("train")
        if not isinstance(train, dict) or "_target_" not in train:
            raise UserError(f"{cfg.ckpt}: its run config has no data.train to take the clip from; pass video=...")
        item = safe_instantiate(train, where=f"{cfg.ckpt}: data.train")[0]
        return item["x"][None].float(), item
    from shared.data.video_readers import read_clip

    frames = int(cfg.frames if cfg.frames is not None else data.get("frames", 16))
    stride = int(cfg.stride if cfg.stride is not None else data.get("stride", 1) or 1)
    size = cfg.size if cfg.size is not None else data.get("size")
    clip = read_clip(cfg.video, frames, stride, int(cfg.start), None if size is None else int(size))
    return clip[None], None


@torch.no_grad()
def edit(cfg: DictConfig) -> dict:
    """Run the edit; returns ``{"paths": [...], "reconstruction_psnr_db": float, "steps": int}``."""
    from shared.engine import progress
    from shared.engine.video_io import save_labelled_rows
    from shared.methods.editing import invert, regenerate

    progress.enable()
    module = module_from_checkpoint(cfg.ckpt)
    clip, item = _source_clip(cfg, module.run_config or {})
    source, edits = _conditions(cfg, item)
    sampler = module.sampler_config({k: v for k, v in {"name": "ddim", "steps": cfg.steps,
                                                        "guidance_scale": cfg.guidance_scale}.items()
                                     if v is not None})
    steps, scale = check_count(sampler["steps"], "steps"), sampler.get("guidance_scale", 1.0)
    latent = getattr(module, "latent", None)
    x0 = latent.encode(clip) if latent is not None else clip
    want = tuple(module.sample_shape or ())
    if want and tuple(x0.shape[1:]) != want:
        raise UserError(f"the clip is {tuple(x0.shape[1:])} in the model's space, the checkpoint generates {want}: "
                        "set frames=/size= to the run's (data.frames, data.size)")
    decode = latent.decode if latent is not None else (lambda z: z)
    use_ema = bool(cfg.use_ema)
    x_T = invert(module, x0, source, steps, use_ema)
    rows = [("source", clip), ("reconstruction", decode(regenerate(module, x_T, source, steps, 1.0, use_ema)))]
    for label, cond in edits:
        rows.append((label, decode(regenerate(module, x_T, cond, steps, scale, use_ema))))
    rows = [(label, v.clamp(-1, 1)) for label, v in rows]
    out = Path(str(cfg.out)) if cfg.out else Path(cfg.ckpt).parent.parent / "edits" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    gif = save_labelled_rows([(textwrap(label), v) for label, v in rows], out / "edit.gif", fps=float(cfg.fps))
    torch.save({"x_T": x_T, "source": {k: v if isinstance(v, list) else v.tolist() for k, v in source.items()},
                "edits": [label for label, _ in edits], "steps": steps, "guidance_scale": scale},
               out / "inverted.pt")
    mse = float(((rows[1][1] - clip) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()
    return {"paths": [str(gif), str(out / "inverted.pt")], "reconstruction_psnr_db": psnr, "steps": steps}


def textwrap(label: str, width: int = 18) -> str:
    """A row label broken into lines of at most ``width`` characters (the GIF's label strip)."""
    words, lines = label.split(), [""]
    for w in words:
        if lines[-1] and len(lines[-1]) + 1 + len(w) > width:
            lines.append(w)
        else:
            lines[-1] = f"{lines[-1]} {w}".strip()
    return "\n".join(lines)


@hydra.main(config_path="../../conf", config_name="edit", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    with friendly_errors():
        res = edit(cfg)
        for p in res["paths"]:
            print(f"wrote {p}")
        print(f"reconstruction PSNR {res['reconstruction_psnr_db']:.2f} dB (DDIM inversion, {res['steps']} steps)")


def main():
    from shared.engine.quick import expand_argv

    sys.argv[1:] = expand_argv(sys.argv[1:], "edit")
    return _hydra_main()


main = hydra_cli(main)   # Hydra's own errors (a bad override) are one line too

if __name__ == "__main__":
    main()
