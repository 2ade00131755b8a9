"""``make demo``: the seminar showcase — a few minutes on a laptop CPU, pictures and a short table.

Each act trains a tiny model with the same code as the claim checks (``shared.engine.run.fit``) and shows one
paper's idea; the table printed at the end and ``outputs/demo/<time>/`` hold the results. Acts whose paper is
not in this checkout are skipped with a note.

    python -m tools.demo                 # all acts
    python -m tools.demo --acts ddim     # one act
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def _compose(overrides):
    from shared.engine.compose import compose

    return compose(overrides)


def act_ddim(out: Path, fast: bool) -> list[tuple[str, str]]:
    """DDPM on the 8×8 digits, then DDIM's few-step sampling: eta = 0 versus eta = 1 at S steps."""
    from shared.data.digits import real_splits
    from shared.engine.run import fit
    from shared.engine.video_io import save_image_grid
    from shared.metrics.judge import fd_judge

    steps = 60 if fast else 1200
    cfg = _compose(
        [
            "experiment=ddpm/digits_claim",
            "pipeline=null",
            f"trainer.max_steps={steps}",
            "logger=none",
            "callbacks.samples=null",
            "trainer.enable_progress_bar=true",
        ]
    )
    module, _, _ = fit(cfg, run_dir=out / "ddpm_model")
    module.eval()
    _, real_b = real_splits(size=8)
    rows = []
    n, step_list = (64, (2, 5, 10)) if fast else (270, (5, 20, 100))
    for s in step_list:
        for eta in (0.0, 1.0):
            g = torch.Generator().manual_seed(0)
            x = module.sample(n, sampler={"name": "ddim", "steps": s, "eta": eta}, generator=g)
            rows.append((f"DDIM S={s:<3d} eta={eta:.0f}", f"FD_judge {fd_judge(x, real_b):7.2f}"))
            if eta == 0.0:
                save_image_grid(x[:64], out / f"ddim_S{s}_eta0.png", nrow=8, scale=4)
    rows.append(("interpolation in x_T (video)", str(interpolation_video(module, out, fast))))
    return rows


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (DDIM Sec. 5.3), one output per ``alpha``."""
    a, b = z0.flatten(), z1.flatten()
    theta = torch.arccos((a @ b) / (a.norm() * b.norm()))
    w0, w1 = torch.sin((1 - alpha) * theta) / torch.sin(theta), torch.sin(alpha * theta) / torch.sin(theta)
    return w0[:, None] * a[None] + w1[:, None] * b[None]


def interpolation_video(module, out: Path, fast: bool) -> Path:
    """DDIM (eta = 0) decodes a slerp path in x_T: 16 pairs morph smoothly — a GIF and an MP4 grid."""
    from shared.engine.video_io import save_video_grid

    pairs, frames, steps = (4, 6, 5) if fast else (16, 24, 20)
    g = torch.Generator().manual_seed(1)
    shape = tuple(module.sample_shape)
    z = torch.randn(pairs, 2, *shape, generator=g)
    alpha = torch.linspace(0, 1, frames)
    x_T = torch.cat([slerp(z[i, 0], z[i, 1], alpha).view(frames, *shape) for i in range(pairs)])
    x = module.sample(x_T=x_T, sampler={"name": "ddim", "steps": steps, "eta": 0.0})
    video = x.view(pairs, frames, *shape).transpose(1, 2)  # (B, C, T, H, W)
    video = torch.cat([video, video.flip(2)], dim=2)  # there and back: a seamless loop
    save_video_grid(video, out / "ddim_interpolation.mp4", nrow=4, fps=12, scale=4)
    return save_video_grid(video, out / "ddim_interpolation.gif", nrow=4, fps=12, scale=4)


ACTS = {"ddim": act_ddim}
OPTIONAL_ACTS = {  # act name -> module providing `demo_act(out: Path, fast: bool) -> rows`
    "rectified_flow": "papers.rectified_flow.demo",
    "vdm": "papers.vdm.demo",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description="the seminar showcase")
    ap.add_argument("--acts", nargs="*", default=None, help=f"subset of {list(ACTS) + list(OPTIONAL_ACTS)}")
    ap.add_argument("--fast", action="store_true", help="seconds instead of minutes (smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or f"outputs/demo/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    out.mkdir(parents=True, exist_ok=True)
    names = args.acts or list(ACTS) + list(OPTIONAL_ACTS)
    table: list[tuple[str, str]] = []
    for name in names:
        t0 = time.time()
        if name in ACTS:
            fn = ACTS[name]
        else:
            if name not in OPTIONAL_ACTS:
                raise SystemExit(f"unknown act {name!r}; choose from {list(ACTS) + list(OPTIONAL_ACTS)}")
            try:
                fn = importlib.import_module(OPTIONAL_ACTS[name]).demo_act
            except (
                ModuleNotFoundError
            ) as e:  # the paper (or its demo) is not in this checkout; real bugs raise
                if not OPTIONAL_ACTS[name].startswith(str(e.name)):
                    raise
                print(f"[demo] skipping {name}: not in this checkout")
                continue
        print(f"[demo] act {name} ...", flush=True)
        (out / name).mkdir(exist_ok=True)
        rows = fn(out / name, args.fast)
        table += [(f"{name}: {a}", b) for a, b in rows]
        table.append((f"{name}: wall time", f"{time.time() - t0:.0f} s"))
    width = max(len(a) for a, _ in table) if table else 10
    print("\n" + "=" * (width + 30))
    for a, b in table:
        print(f"{a:<{width}}  {b}")
    print("=" * (width + 30))
    (out / "summary.json").write_text(json.dumps({"rows": table, "fast": args.fast}, indent=1) + "\n")
    print(f"pictures and GIFs: {out.resolve()}")
    print("gallery of every paper (and this demo): make gallery  ->  reports/index.html")


if __name__ == "__main__":
    main()
