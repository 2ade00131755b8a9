"""Re-train the styled-shapes judges (``shared.metrics.shapes_judge``) deterministically on CPU.

    python -m shared.metrics.train_shapes_judge    # writes shared/metrics/weights/styled_shapes_{judge,content}.*
    python -m shared.metrics.train_shapes_judge --camera   # writes styled_shapes_camera_judge.*

* the evaluation judge: a :class:`StyleNet` (cross-entropy over the 6 styles) and a :class:`DepthNet` (squared error
  of standardised depth, shape pixels weighted ``shape_weight`` x, background included) on single frames of the
  world's ``train`` split at 16x16, seed ``--seed``;
* the content encoder (Gen-1's image embedding at CPU scale): another :class:`StyleNet`, seed ``--seed + 1``, trained
  on other draws of the same split.

Frames are degraded as generated samples are — Gaussian pixel noise of a random level and, for half the batch, a
Gaussian blur of random width — so the judges read imperfect samples. Evaluation on ``test`` videos (another seed):
style accuracy per frame, depth RMSE against the world's depth (all pixels and shape pixels, beside the
mean-depth baseline), and the separations the claims rely on — the depth error between two renderings of the *same*
structure in different styles against the error between *different* structures, the edge F1 of the judged depth's
discontinuities against the world's edges, and a real-vs-real per-frame ``FD_judge`` floor. One thread.

``--camera`` trains the camera judge instead (:class:`CameraNet`: the pan direction and the zoom of
``StyledShapes(camera=True)`` videos with the claim's pan / zoom ranges, a pool of ``--videos`` clips, noise and blur as
above) and records its held-out pan and zoom accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.data.styled_shapes import StyledShapes
from shared.metrics.shapes_judge import (
    DEFAULT_CAMERA_JUDGE_PATH,
    DEFAULT_CONTENT_ENCODER_PATH,
    DEFAULT_SHAPES_JUDGE_PATH,
    CameraNet,
    ShapesJudge,
    StyleNet,
    camera_accuracy,
    camera_net_metadata,
    depth_edges,
    depth_rmse,
    edge_f1,
    estimate_depth,
    fd_frames,
    style_accuracy,
    style_net_metadata,
)
from shared.metrics.train_judge import state_sha256


def world_frames(n: int, size: int, split: str, seed: int) -> dict[str, torch.Tensor]:
    """``n`` single frames (one structure each) with style, depth and mask."""
    ds = StyledShapes(n=n, frames=1, size=size, split=split, seed=seed)
    items = [ds[i] for i in range(n)]
    return {"x": torch.stack([it["x"][:, 0] for it in items]), "style": torch.stack([it["style"] for it in items]),
            "depth": torch.stack([it["depth"][0] for it in items]),
            "mask": torch.stack([it["mask"][0] for it in items])}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (5 taps) of (N, C, H, W) with per-image widths ``sigma`` (N,)."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-0.5 * (r[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 5)
    n, c, h, w = x.shape
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    y = sum(k[:, i, None, None, None] * y[..., :, i:i + w] for i in range(5))
    return sum(k[:, i, None, None, None] * y[..., i:i + h, :] for i in range(5))


def degrade(x: torch.Tensor, g: torch.Generator, noise: float, blur: float) -> torch.Tensor:
    n = x.shape[0]
    sig = torch.rand(n, generator=g) * blur * (torch.rand(n, generator=g) < 0.5)
    x = gaussian_blur(x, sig)
    return x + torch.rand(n, 1, 1, 1, generator=g) * noise * torch.randn(x.shape, generator=g)


def _schedule(opt, steps: int, warmup: int = 30):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))


def train_style(net: StyleNet, data: dict, steps: int, batch: int, seed: int, noise: float, blur: float,
                lr: float = 3e-3) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = _schedule(opt, steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(data["x"]), (batch,), generator=g)
        loss = F.cross_entropy(net(degrade(data["x"][idx], g, noise, blur)), data["style"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return float(loss)


def train_depth(judge: ShapesJudge, data: dict, steps: int, batch: int, seed: int, noise: float, blur: float,
                shape_weight: float, lr: float = 2e-3) -> float:
    g = torch.Generator().manual_seed(seed)
    net = judge.depth
    mean, std = float(data["depth"].mean()), float(data["depth"].std())
    net.depth_mean.fill_(mean)
    net.depth_std.fill_(std)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = _schedule(opt, steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(data["x"]), (batch,), generator=g)
        target = (data["depth"][idx] - mean) / std
        w = 1.0 + (shape_weight - 1.0) * (data["mask"][idx] > 0).float()
        loss = (w * (net.standardised(degrade(data["x"][idx], g, noise, blur)) - target) ** 2).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return float(loss)


@torch.no_grad()
def evaluate(judge: ShapesJudge, content: StyleNet, size: int, frames: int, n: int, seed: int) -> dict:
    ds = StyledShapes(n=2 * n, frames=frames, size=size, split="test", seed=seed, with_styles=True)
    items = [ds[i] for i in range(2 * n)]
    x = torch.stack([it["x"] for it in items[:n]])
    x2 = torch.stack([it["x"] for it in items[n:]])
    styles = torch.stack([it["style"] for it in items[:n]])
    depth = torch.stack([it["depth"] for it in items[:n]])
    mask = torch.stack([it["mask"] for it in items[:n]])
    edges = torch.stack([it["edges"] for it in items[:n]])
    other_style = (styles + 1 + torch.arange(n) % (len(ds.styles) - 1)) % len(ds.styles)
    x_other = torch.stack([it["x_styles"][int(s)] for it, s in zip(items[:n], other_style)])
    est, est_other, est_next = estimate_depth(x, judge), estimate_depth(x_other, judge), estimate_depth(x2, judge)
    shape = mask > 0
    mean_depth = float(judge.depth.depth_mean)
    content.eval()
    pred_content = content(x.transpose(1, 2).reshape(-1, 3, size, size)).argmax(1)
    return {
        "style_accuracy": round(style_accuracy(x, styles, judge), 4),
        "style_accuracy_other_style_renderings": round(style_accuracy(x_other, other_style, judge), 4),
        "content_encoder_style_accuracy": round(float((pred_content == styles.repeat_interleave(frames)).float()
                                                      .mean()), 4),
        "depth_rmse_vs_world": round(depth_rmse(est, depth), 4),
        "depth_rmse_vs_world_shape_pixels": round(float(((est - depth)[shape] ** 2).mean().sqrt()), 4),
        "depth_rmse_mean_baseline": round(depth_rmse(torch.full_like(depth, mean_depth), depth), 4),
        "depth_rmse_mean_baseline_shape_pixels": round(float(((mean_depth - depth)[shape] ** 2).mean().sqrt()), 4),
        "depth_rmse_same_structure_other_style": round(depth_rmse(est_other, est), 4),
        "depth_rmse_other_structure": round(depth_rmse(est_next, est), 4),
        "edge_f1_vs_world": round(edge_f1(depth_edges(est), edges), 4),
        "edge_f1_other_structure": round(edge_f1(depth_edges(est_next), edges), 4),
        "fd_judge_frames_test_vs_test": round(fd_frames(x, x2, judge), 4),
        "eval_videos": n, "frames": frames, "size": size,
    }


def camera_videos(n: int, size: int, split: str, seed: int, pan, zoom) -> dict[str, torch.Tensor]:
    ds = StyledShapes(n=n, frames=8, size=size, split=split, seed=seed, camera=True, pan=tuple(pan), zoom=tuple(zoom))
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "camera_pan", "camera_zoom")}


def train_camera(args) -> None:
    from safetensors.torch import save_file

    t0 = time.time()
    torch.manual_seed(args.seed)
    data = camera_videos(args.videos, args.size, "train", args.seed, args.camera_pan, args.camera_zoom)
    net = CameraNet(resolution=args.size)
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = _schedule(opt, args.camera_steps)
    b = args.batch_size // 2
    for _ in range(args.camera_steps):
        idx = torch.randint(len(data["x"]), (b,), generator=g)
        x = data["x"][idx]
        frames = degrade(x.transpose(1, 2).flatten(0, 1), g, args.noise, args.blur)
        out = net(frames.reshape(b, -1, *frames.shape[1:]).transpose(1, 2))
        loss = F.cross_entropy(out["pan"], data["camera_pan"][idx]) + F.cross_entropy(out["zoom"],
                                                                                      data["camera_zoom"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval().requires_grad_(False)
    train_time = time.time() - t0
    test = camera_videos(args.eval_videos, args.size, "test", args.seed + 1000, args.camera_pan, args.camera_zoom)
    acc = camera_accuracy(test["x"], test["camera_pan"], test["camera_zoom"], net)
    path = args.camera_out
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=camera_net_metadata(net))
    tmp.replace(path)
    record = {"judge": "styled-shapes camera judge (shared.metrics.shapes_judge.CameraNet): pan direction, zoom",
              "command": "python -m shared.metrics.train_shapes_judge " + " ".join(sys.argv[1:]),
              "seed": args.seed, "size": args.size, "videos": args.videos, "steps": args.camera_steps,
              "batch_size": b, "pan": list(args.camera_pan), "zoom": list(args.camera_zoom),
              "train_world": "StyledShapes(camera=True, split='train', frames=8, seed=seed)",
              "test_world": "StyledShapes(camera=True, split='test', frames=8, seed=seed + 1000)",
              "train_time_s": round(train_time, 1), "final_loss": round(float(loss), 4),
              "test": {"pan_accuracy": round(acc["pan_acc"], 4), "zoom_accuracy": round(acc["zoom_acc"], 4),
                       "eval_videos": args.eval_videos, "chance": {"pan": 0.25, "zoom": 0.5}},
              "num_parameters": sum(q.numel() for q in net.parameters()), "architecture": camera_net_metadata(net),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "state_sha256": state_sha256(net.state_dict()), "weights": path.name}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", action="store_true", help="train the camera judge instead")
    p.add_argument("--camera-out", type=Path, default=DEFAULT_CAMERA_JUDGE_PATH)
    p.add_argument("--camera-pan", type=float, nargs=2, default=(0.03, 0.06))
    p.add_argument("--camera-zoom", type=float, nargs=2, default=(0.03, 0.06))
    p.add_argument("--camera-steps", type=int, default=1500)
    p.add_argument("--videos", type=int, default=3000, help="camera judge: training clips")
    p.add_argument("--out", type=Path, default=DEFAULT_SHAPES_JUDGE_PATH)
    p.add_argument("--content-out", type=Path, default=DEFAULT_CONTENT_ENCODER_PATH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--frames", type=int, default=6000, help="training frames (one structure each)")
    p.add_argument("--style-steps", type=int, default=800)
    p.add_argument("--depth-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--blur", type=float, default=1.0)
    p.add_argument("--shape-weight", type=float, default=4.0)
    p.add_argument("--eval-videos", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.camera:
        return train_camera(args)
    from safetensors.torch import save_file

    t0 = time.time()
    torch.manual_seed(args.seed)
    data = world_frames(args.frames, args.size, "train", args.seed)
    judge = ShapesJudge(style={"resolution": args.size}, depth={"resolution": args.size})
    style_loss = train_style(judge.style, data, args.style_steps, args.batch_size, args.seed, args.noise, args.blur)
    depth_loss = train_depth(judge, data, args.depth_steps, args.batch_size, args.seed, args.noise, args.blur,
                             args.shape_weight)
    torch.manual_seed(args.seed + 1)
    content = StyleNet(resolution=args.size)
    content_data = world_frames(args.frames, args.size, "train", args.seed + 1)
    content_loss = train_style(content, content_data, args.style_steps, args.batch_size, args.seed + 1, args.noise,
                               args.blur)
    train_time = time.time() - t0
    judge.eval().requires_grad_(False)
    content.eval().requires_grad_(False)
    record = evaluate(judge, content, args.size, 8, args.eval_videos, args.seed + 1000)
    for net, path, meta in ((judge, args.out, judge.metadata()), (content, args.content_out,
                                                                  style_net_metadata(content))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    cmd = "python -m shared.metrics.train_shapes_judge" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    out = {
        "judge": "styled-shapes judges (shared.metrics.shapes_judge): style classifier + depth estimator; "
                 "content encoder (Gen-1's image embedding at CPU scale)",
        "command": cmd, "seed": args.seed, "size": args.size, "train_frames": args.frames,
        "style_steps": args.style_steps, "depth_steps": args.depth_steps, "batch_size": args.batch_size,
        "noise": args.noise, "blur": args.blur, "shape_weight": args.shape_weight,
        "train_world": "StyledShapes(split='train', frames=1, seed=seed) (content encoder: seed + 1), 6 styles",
        "test_world": "StyledShapes(split='test', frames=8, seed=seed + 1000, with_styles=True)",
        "train_time_s": round(train_time, 1),
        "final_loss": {"style": round(style_loss, 4), "depth": round(depth_loss, 4), "content": round(content_loss, 4)},
        "test": record,
        "num_parameters": {"style": sum(q.numel() for q in judge.style.parameters()),
                           "depth": sum(q.numel() for q in judge.depth.parameters()),
                           "content": sum(q.numel() for q in content.parameters())},
        "architecture": {"judge": judge.metadata(), "content": style_net_metadata(content)},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "state_sha256": {"judge": state_sha256(judge.state_dict()), "content": state_sha256(content.state_dict())},
        "weights": [args.out.name, args.content_out.name],
    }
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
