"""Re-train the MovingDigits video judge (``shared.metrics.video_judge``) deterministically on CPU.

    python -m shared.metrics.train_video_judge     # writes shared/metrics/weights/moving_digits_judge.*

Trains both heads (digit class, initial direction) with cross-entropy on MovingDigits ``train``
videos generated on the fly, each batch in one of the two world protocols the judge serves (3 of 4
batches 16 frames at 32x32, 1 of 4 8 frames at 16x16), with Gaussian pixel noise of a random level
so that the features stay meaningful on imperfect samples. Evaluates on ``test`` videos (held-out
digit images, another seed) of both protocols and records the accuracies and a real-vs-real
``FVD_judge`` floor (two disjoint test sets) in a JSON file beside the weights (safetensors,
architecture in the metadata). Everything random draws from ``--seed``; one thread, so the bytes do
not depend on the machine's core count.
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

from shared.data.video_worlds import MovingDigits
from shared.metrics.train_judge import state_sha256
from shared.metrics.video_judge import (
    DEFAULT_VIDEO_JUDGE_PATH,
    VideoJudge,
    digit_accuracy,
    fvd_judge,
    motion_accuracy,
)

PROTOCOLS = {"t16_s32": dict(frames=16, size=32), "t8_s16": dict(frames=8, size=16)}


def _batch(world: MovingDigits, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [world[(start + i) % len(world)] for i in range(n)]
    return (
        torch.stack([it["x"] for it in items]),
        torch.stack([it["y"] for it in items]),
        torch.stack([it["direction"] for it in items]),
    )


def train_video_judge(
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    noise: float = 0.3,
    warmup: int = 30,
    eval_videos: int = 1000,
    log_every: int = 100,
) -> tuple[VideoJudge, dict]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    worlds = {
        k: MovingDigits(n=steps * batch_size, split="train", seed=seed, **p) for k, p in PROTOCOLS.items()
    }
    judge = VideoJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=weight_decay)
    # Linear warm-up, then cosine decay: without the warm-up the digit head stalls for ~100 steps.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    judge.train()
    t0 = time.time()
    for step in range(steps):
        key = "t8_s16" if step % 4 == 3 else "t16_s32"
        x, y, d = _batch(worlds[key], step * batch_size, batch_size)
        sigma = torch.rand(batch_size, 1, 1, 1, 1, generator=g) * noise
        x = x + sigma * torch.randn(x.shape, generator=g)
        out = judge(x)
        loss = F.cross_entropy(out["digit"], y) + F.cross_entropy(out["direction"], d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    train_time = time.time() - t0
    judge.eval()
    record: dict = {"train_time_s": round(train_time, 1)}
    for key, p in PROTOCOLS.items():
        test = MovingDigits(n=2 * eval_videos, split="test", seed=seed + 1000, **p)
        xa, ya, da = _batch(test, 0, eval_videos)
        xb, _, _ = _batch(test, eval_videos, eval_videos)
        record[key] = {
            "test_digit_accuracy": round(digit_accuracy(xa, ya, judge), 4),
            "test_motion_accuracy": round(motion_accuracy(xa, da, judge), 4),
            "fvd_judge_test_vs_test": round(fvd_judge(xa, xb, judge), 4),
            "eval_videos": eval_videos,
        }
    record["final_train_loss"] = round(loss.item(), 4)
    return judge, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_VIDEO_JUDGE_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-videos", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="the committed weights use 1")
    args = parser.parse_args(argv)
    # One thread: the bytes do not depend on the core count, and tiny convs gain little from more
    # threads on a shared machine (where waiting on a busy second core costs far more).
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    judge, record = train_video_judge(
        seed=args.seed, steps=args.steps, batch_size=args.batch_size, eval_videos=args.eval_videos
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in judge.state_dict().items()}
    tmp = args.out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=judge.metadata())
    tmp.replace(args.out)  # atomic
    cmd = "python -m shared.metrics.train_video_judge" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    record = {
        "judge": "MovingDigits video judge (shared.metrics.video_judge.VideoJudge)",
        "metric_name": "FVD_judge",
        "command": cmd,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "protocols": PROTOCOLS,
        "train_world": "MovingDigits(split='train', seed=seed), num_digits=1, speeds (1, 2)",
        "test_world": "MovingDigits(split='test', seed=seed + 1000): held-out digit images",
        **record,
        "num_parameters": sum(p.numel() for p in judge.parameters()),
        "architecture": judge.metadata(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "state_sha256": state_sha256(judge.state_dict()),
        "weights": args.out.name,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
