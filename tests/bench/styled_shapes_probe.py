"""Probes of the styled-shapes world (shared/data/styled_shapes.py): are the styles separable by a small
classifier at 16 and 32 px, and is the structure (depth) recoverable from single frames?

1. Style: a 3-layer CNN trained on single frames (train split) classifies the style of val-split frames;
   once on full frames and once on "objects only" frames (background pixels set to 0), so the style must be
   read from the shapes' palette and texture, not the background.
2. Depth: a small U-Net-like CNN regresses the per-pixel depth from a frame, trained on five styles and
   evaluated on the val split both in those styles and in the held-out sixth (the same val structures, so
   the two baselines coincide). Reported as RMSE on the shape pixels, beside the baseline that predicts the
   mean training shape depth everywhere on the shapes (what knowing *where* the shapes are gives without
   reading their apparent size).

    PYTHONPATH=. python tests/bench/styled_shapes_probe.py [--steps 400] [--depth-steps 600] [--n 3000] \
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.data.styled_shapes import StyledShapes


def frames(n: int, size: int, split: str, styles=None, seed: int = 0) -> dict:
    ds = StyledShapes(n=n, frames=1, size=size, seed=seed, split=split, **({"styles": styles} if styles else {}))
    items = [ds[i] for i in range(n)]
    return {
        "x": torch.stack([it["x"][:, 0] for it in items]),
        "mask": torch.stack([it["mask"][0] for it in items]),
        "depth": torch.stack([it["depth"][0] for it in items]),
        "style": torch.stack([it["style"] for it in items]),
        "names": ds.styles,
    }


def style_net(n_styles: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
        nn.Conv2d(32, 32, 3, 2, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_styles),
    )  # fmt: skip


class DepthNet(nn.Module):
    """A two-level U-Net-lite: the receptive field must cover a whole shape to read its apparent size."""

    def __init__(self, c: int = 32):
        super().__init__()
        act = nn.SiLU()
        self.inp = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), act, nn.Conv2d(c, c, 3, padding=1), act)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), act, nn.Conv2d(2 * c, 2 * c, 3, 2, 1), act)
        self.mid = nn.Sequential(
            *[m for d in (1, 2, 4) for m in (nn.Conv2d(2 * c, 2 * c, 3, padding=d, dilation=d), act)]
        )
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False), nn.Conv2d(2 * c, c, 3, padding=1), act
        )
        self.out = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), act, nn.Conv2d(c, 1, 1))

    def forward(self, x):
        h = self.inp(x)
        return self.out(torch.cat([h, self.up(self.mid(self.down(h)))], 1))


def train(net, x, target, loss_fn, steps, batch=64, lr=2e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        loss = loss_fn(net(x[idx]), *(t[idx] for t in target))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def style_probe(size: int, n: int, steps: int, objects_only: bool) -> float:
    torch.manual_seed(0)
    tr, va = frames(n, size, "train"), frames(n // 3, size, "val")
    if objects_only:
        for d in (tr, va):
            d["x"] = d["x"] * (d["mask"] > 0)[:, None]
    net = train(style_net(len(tr["names"])), tr["x"], (tr["style"],), F.cross_entropy, steps)
    with torch.no_grad():
        return float((net(va["x"]).argmax(1) == va["style"]).float().mean())


def depth_probe(size: int, n: int, steps: int, held_out: str = "sunset") -> dict:
    torch.manual_seed(0)
    styles = ["flat", "pastel", "neon", "earth", "mono", "sunset"]
    seen = [s for s in styles if s != held_out]
    tr = frames(n, size, "train", styles=seen)
    va_seen = frames(n // 3, size, "val", styles=seen)
    va_new = frames(n // 3, size, "val", styles=[held_out])

    obj = tr["mask"] > 0
    mean_depth = float(tr["depth"][obj].mean())
    std_depth = float(tr["depth"][obj].std())

    def loss(pred, depth, mask):
        # Scored on the shape pixels only (the background's depth 1 is trivial), in standardised units.
        m = (mask > 0).float()
        err = (pred[:, 0] - (depth - mean_depth) / std_depth) ** 2
        return (err * m).sum() / m.sum().clamp_min(1)

    net = train(DepthNet(), tr["x"], (tr["depth"], tr["mask"]), loss, steps)
    out = {}
    with torch.no_grad():
        for name, d in (("seen_styles", va_seen), (f"held_out_{held_out}", va_new)):
            m = d["mask"] > 0
            pred = net(d["x"])[:, 0] * std_depth + mean_depth
            out[f"rmse_{name}"] = float(((pred - d["depth"])[m] ** 2).mean().sqrt())
            out[f"baseline_rmse_{name}"] = float(((mean_depth - d["depth"])[m] ** 2).mean().sqrt())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400, help="style classifier steps")
    ap.add_argument("--depth-steps", type=int, default=600)
    ap.add_argument("--n", type=int, default=3000, help="training frames per probe")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = {"style_accuracy": {}, "depth": {}}
    for size in (16, 32):
        for objects_only in (False, True):
            key = f"{size}px_{'objects_only' if objects_only else 'full_frame'}"
            res["style_accuracy"][key] = style_probe(size, args.n, args.steps, objects_only)
            print(key, res["style_accuracy"][key], flush=True)
        res["depth"][f"{size}px"] = depth_probe(size, args.n, args.depth_steps)
        print(size, res["depth"][f"{size}px"], flush=True)
    res["seconds"] = time.perf_counter() - t0
    res["config"] = {"steps": args.steps, "depth_steps": args.depth_steps, "n": args.n}
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
