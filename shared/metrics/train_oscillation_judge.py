"""Re-train the oscillating-scenes video judge (``shared.metrics.oscillation_judge``) deterministically on CPU.

    python -m shared.metrics.train_oscillation_judge   # writes shared/metrics/weights/oscillating_scenes_judge.*

Trains the three heads (object types present: binary cross-entropy; dominant motion band and motion-size class:
cross-entropy) on ``OscillatingScenes(split='train')`` clips rendered on the fly (32x32, 150 frames, the world's
defaults; ``--frames`` / ``--size`` change them), with Gaussian pixel noise of a random level so the features stay
meaningful on imperfect samples. The judge never sees a temporally corrupted clip.

Then the check the claims rely on, on held-out ``test`` scenes (another seed): FVD_judge between two disjoint real
sets (the floor) against FVD_judge of real clips vs the *same* clips with their frames shuffled in time
(appearance kept, motion destroyed), frozen (the still repeated: no motion) and played backwards; plus the heads'
test accuracies. Everything goes into a JSON file beside the weights (safetensors, architecture in metadata).
One thread, every random draw from ``--seed``.
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

from shared.data.oscillating_scenes import OBJECTS, OscillatingScenes
from shared.metrics.oscillation_judge import DEFAULT_OSCILLATION_JUDGE_PATH, OscillationJudge
from shared.metrics.train_judge import state_sha256
from shared.metrics.video_judge import fvd_judge

AMPLITUDE_EDGES = (1.5, 2.5, 3.5)  # pixels at 32x32: largest displacement of the clip -> 4 classes


def labels(item: dict, size: int) -> tuple[torch.Tensor, int, int]:
    """(types multi-hot (4,), dominant band index - 1, amplitude class) of a world item."""
    types = torch.zeros(len(OBJECTS))
    types[item["object_type"]] = 1.0
    energy = (item["spectral_volume"][1:] ** 2).sum(dim=(1, 2, 3))  # bands 1..K-1
    band = int(energy.argmax())
    peak = float(item["displacement"].norm(dim=0).amax()) * 32.0 / size
    amp = sum(peak > e for e in AMPLITUDE_EDGES)
    return types, band, amp


def batch(world: OscillatingScenes, start: int, n: int):
    items = [world[(start + i) % len(world)] for i in range(n)]
    lab = [labels(it, world.size) for it in items]
    x = torch.stack([it["x"] for it in items])
    return (x, torch.stack([a for a, _, _ in lab]), torch.tensor([b for _, b, _ in lab]),
            torch.tensor([c for _, _, c in lab]))


def shuffled(videos: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The same clips with their frames in a random order (one permutation per clip)."""
    out = torch.empty_like(videos)
    for i in range(videos.shape[0]):
        out[i] = videos[i][:, torch.randperm(videos.shape[2], generator=generator)]
    return out


def frozen(videos: torch.Tensor) -> torch.Tensor:
    return videos[:, :, :1].expand_as(videos).contiguous()


def train_oscillation_judge(seed: int = 0, steps: int = 400, batch_size: int = 16, lr: float = 3e-3,
                            weight_decay: float = 1e-4, noise: float = 0.2, warmup: int = 30, frames: int = 150,
                            size: int = 32, num_freqs: int = 16, eval_videos: int = 128, log_every: int = 50):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    world = OscillatingScenes(n=steps * batch_size, frames=frames, size=size, num_freqs=num_freqs, split="train",
                              seed=seed)
    judge = OscillationJudge(num_bands=num_freqs - 1, resolution=size)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    judge.train()
    t0 = time.time()
    for step in range(steps):
        x, types, band, amp = batch(world, step * batch_size, batch_size)
        sigma = torch.rand(batch_size, 1, 1, 1, 1, generator=g) * noise
        x = x + sigma * torch.randn(x.shape, generator=g)
        out = judge(x)
        loss = (F.binary_cross_entropy_with_logits(out["types"], types) + F.cross_entropy(out["frequency"], band)
                + F.cross_entropy(out["amplitude"], amp))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    record: dict = {"train_time_s": round(time.time() - t0, 1), "final_train_loss": round(loss.item(), 4)}
    judge.eval()
    test = OscillatingScenes(n=2 * eval_videos, frames=frames, size=size, num_freqs=num_freqs, split="test",
                             seed=seed + 1000)
    xa, ta, ba, aa = batch(test, 0, eval_videos)
    xb, _, _, _ = batch(test, eval_videos, eval_videos)
    with torch.no_grad():
        out = judge(xa)
    record["test_types_accuracy"] = round(float(((out["types"] > 0).float() == ta).float().mean()), 4)
    record["test_frequency_accuracy"] = round(float((out["frequency"].argmax(1) == ba).float().mean()), 4)
    record["test_frequency_within_one_bin"] = round(float(((out["frequency"].argmax(1) - ba).abs() <= 1)
                                                          .float().mean()), 4)
    record["test_amplitude_accuracy"] = round(float((out["amplitude"].argmax(1) == aa).float().mean()), 4)
    floor = fvd_judge(xb, xa, judge)
    checks = {"real_vs_real": floor, "real_vs_shuffled": fvd_judge(shuffled(xb, g), xa, judge),
              "real_vs_frozen": fvd_judge(frozen(xb), xa, judge),
              "real_vs_reversed": fvd_judge(xb.flip(2), xa, judge)}
    record["fvd_judge_test"] = {k: round(v, 4) for k, v in checks.items()}
    record["fvd_judge_ratio_to_floor"] = {k: round(v / max(floor, 1e-12), 2) for k, v in checks.items()}
    record["eval_videos"] = eval_videos
    return judge, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OSCILLATION_JUDGE_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--eval-videos", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="the committed weights use 1")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    judge, record = train_oscillation_judge(seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                                            frames=args.frames, size=args.size, eval_videos=args.eval_videos)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp), metadata=judge.metadata())
    tmp.replace(args.out)
    cmd = "python -m shared.metrics.train_oscillation_judge" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    record = {
        "judge": "OscillatingScenes video judge (shared.metrics.oscillation_judge.OscillationJudge)",
        "metric_name": "FVD_judge", "command": cmd, "seed": args.seed, "steps": args.steps,
        "batch_size": args.batch_size, "frames": args.frames, "size": args.size,
        "train_world": "OscillatingScenes(split='train', seed=seed), the world's default ranges",
        "test_world": "OscillatingScenes(split='test', seed=seed + 1000)",
        "amplitude_edges_px_at_32": list(AMPLITUDE_EDGES), **record,
        "num_parameters": sum(p.numel() for p in judge.parameters()), "architecture": judge.metadata(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "state_sha256": state_sha256(judge.state_dict()), "weights": args.out.name,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
