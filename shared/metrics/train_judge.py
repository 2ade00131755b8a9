"""Re-train the digits judge (``shared.metrics.judge``) deterministically on CPU.

    python -m shared.metrics.train_judge            # writes shared/metrics/weights/digits_judge.*

Trains on the ``seed=0`` digits train split (``shared.data.digits``) with light augmentation:
each batch is shown at a random input size (8, 16 or 32, so the judge's internal resize is
trained on), shifted by up to ~1 native pixel and slightly rescaled, with Gaussian pixel noise of
a random level; then sets the feature normalisation on the clean train split. Reports val and
test accuracy and writes the weights (safetensors, architecture in the metadata) and a JSON
record (accuracies, command, seed, settings, versions, and the sha256 of the tensors, which a
re-run reproduces bit for bit). Everything random draws from ``--seed``; single-threaded so the
bytes do not depend on the machine's core count. Takes about 30 s on one CPU core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.data.digits import DigitsDataset
from shared.metrics.judge import DEFAULT_JUDGE_PATH, DigitsJudge, judge_accuracy


def augment(x8: torch.Tensor, g: torch.Generator, shift: float, scale: float, noise: float) -> torch.Tensor:
    """Random input size, small shift/scale (one affine per image) and pixel noise of 8x8 digits."""
    sizes = (8, 16, 32)
    size = sizes[int(torch.randint(len(sizes), (1,), generator=g))]
    x = x8 if size == 8 else F.interpolate(x8, size=(size, size), mode="bilinear", align_corners=False)
    n = x.shape[0]
    s = 1 + (torch.rand(n, generator=g) * 2 - 1) * scale
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * shift  # normalised coords: 0.25 = one 8x8 pixel
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = s, s, t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1  # pad = -1
    sigma = torch.rand(n, 1, 1, 1, generator=g) * noise
    return x + sigma * torch.randn(x.shape, generator=g)


def train_judge(
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    shift: float = 0.25,
    scale: float = 0.1,
    noise: float = 0.2,
    max_steps: int | None = None,
    evaluate: bool = True,
) -> tuple[DigitsJudge, dict]:
    """Train a judge; ``max_steps`` / ``evaluate=False`` shorten it (tests)."""
    torch.manual_seed(seed)  # initialisation and dropout
    g = torch.Generator().manual_seed(seed)  # order and augmentation
    train = DigitsDataset("train", size=8)
    judge = DigitsJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    judge.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for k in range(steps_per_epoch):
            if max_steps is not None and step >= max_steps:
                break
            step += 1
            idx = perm[k * batch_size : (k + 1) * batch_size]
            x = augment(train.images[idx], g, shift, scale, noise)
            loss = F.cross_entropy(judge(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    judge.eval().requires_grad_(False)
    judge.calibrate(train.images)
    seconds = time.perf_counter() - start
    record = {
        "seed": seed, "epochs": epochs, "steps": step, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay,
        "augment": {"shift": shift, "scale": scale, "noise": noise, "sizes": [8, 16, 32]},
        "final_train_loss": loss.item(), "train_seconds": round(seconds, 1),
    }  # fmt: skip
    if not evaluate:
        return judge, record
    for split in ("val", "test"):
        for size in (8, 16, 32):
            data = DigitsDataset(split, size=size)
            record[f"{split}_accuracy_size{size}"] = judge_accuracy(data.images, data.labels, judge)
    record["val_accuracy"], record["test_accuracy"] = (
        record["val_accuracy_size8"],
        record["test_accuracy_size8"],
    )
    return judge, record


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors (names, dtypes, shapes, bytes): the file's own bytes are not stable
    because safetensors writes the metadata in arbitrary order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", type=Path, default=DEFAULT_JUDGE_PATH, help="weights path (.safetensors)")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    judge, record = train_judge(seed=args.seed, epochs=args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp), metadata=judge.metadata())
    tmp.replace(args.out)
    record.update(
        command=" ".join(
            ["python -m shared.metrics.train_judge", *(argv if argv is not None else sys.argv[1:])]
        ),
        weights=args.out.name,
        state_sha256=state_sha256(judge.state_dict()),
        architecture=judge.metadata(),
        num_parameters=sum(p.numel() for p in judge.parameters()),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
    )
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
