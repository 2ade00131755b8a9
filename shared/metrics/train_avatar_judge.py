"""Re-train an avatar judge (``shared.metrics.avatar_judge``) deterministically on CPU, then check it on held-out
real data before any claim uses it.

    python -m shared.metrics.train_avatar_judge --world puppets         # -> weights/puppets_judge.*
    python -m shared.metrics.train_avatar_judge --world talking_faces   # -> weights/talking_faces_judge.*

Training data: every frame of ``--videos`` clips of the world's ``train`` split (seed 0) over *all* identities
and motions (a judge must name the held-out identities the generators are tested on; it is an instrument, never
a generator's input), with light augmentation (Gaussian pixel noise of a random level up to ``--noise`` and, with
probability 1/2, a 3x3 box blur: generated frames are noisier and softer than renders). Loss: cross-entropy on
the identity + ``--regress_weight`` x the mean squared error of every regression head.

Held-out check (recorded in the JSON beside the weights): the ``test`` split (seed 2000, other items and motion
draws) — identity accuracy; puppets: keypoint error (canvas units); faces: mouth-opening correlation and error,
head-pose error, and the Spearman correlation of judged vs true head speed. Separation checks (what the claims
compare): the same scores against *another* clip's ground truth (swapped identity, another clip's keypoints or
mouth track), which a useful judge must tell apart from the clip's own.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.metrics.avatar_judge import (
    AvatarJudge,
    head_speed,
    identity_accuracy,
    judge_outputs,
    judge_path,
    keypoint_error,
    mouth_opening,
    pearson,
    spearman,
)

HEADS = {"puppets": {"identity": 12, "keypoints": 28}, "talking_faces": {"identity": 12, "mouth_open": 1,
                                                                       "head_pose": 3}}
REGRESS = {"puppets": ("keypoints",), "talking_faces": ("mouth_open", "head_pose")}


def world_clips(world: str, n: int, size: int, frames: int, split: str, seed: int) -> dict[str, torch.Tensor]:
    """``n`` clips of the world over all identities (and motions), stacked per key."""
    if world == "puppets":
        from shared.data.puppets import Puppets

        ds = Puppets(n=n, frames=frames, size=size, split=split, seed=seed, identity_split="all",
                     motion_split="all")
        keys = ("x", "identity", "keypoints")
    else:
        from shared.data.talking_faces import TalkingFaces

        ds = TalkingFaces(n=n, frames=frames, size=size, split=split, seed=seed, identity_split="all")
        keys = ("x", "identity", "mouth_open", "head_pose", "speed")
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in keys}


def frame_targets(world: str, clips: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = clips["x"]
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    tg = {"identity": clips["identity"].repeat_interleave(t)}
    if world == "puppets":
        tg["keypoints"] = clips["keypoints"].reshape(b * t, -1)
    else:
        tg["mouth_open"] = clips["mouth_open"].reshape(b * t, 1)
        tg["head_pose"] = clips["head_pose"].reshape(b * t, 3)
    return frames, tg


def augment(x: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    n = x.shape[0]
    blur = torch.rand(n, generator=g) < 0.5
    if blur.any():
        x = x.clone()
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sigma = torch.rand(n, 1, 1, 1, generator=g) * noise
    return x + sigma * torch.randn(x.shape, generator=g)


@torch.no_grad()
def evaluate(world: str, judge: AvatarJudge, clips: dict) -> dict:
    """Held-out scores and the separation checks (module docstring)."""
    x = clips["x"]
    other = torch.roll(torch.arange(len(x)), 1)  # each clip scored against its neighbour's ground truth
    ident = clips["identity"]
    rec = {"clips": len(x), "frames_per_clip": int(x.shape[2]),
           "identity_accuracy": identity_accuracy(x, ident, judge)}
    swapped = ident[other]
    keep = swapped != ident
    rec["identity_accuracy_swapped_labels"] = identity_accuracy(x[keep], swapped[keep], judge)
    if world == "puppets":
        rec["keypoint_error"] = keypoint_error(x, clips["keypoints"], judge)
        rec["keypoint_error_other_clip"] = keypoint_error(x, clips["keypoints"][other], judge)
        rec["keypoint_error_per_joint"] = judge_outputs(x, judge)["keypoints"].reshape(
            *x.shape[:1], x.shape[2], -1, 2).sub(clips["keypoints"]).norm(dim=-1).mean(dim=(0, 1)).tolist()
    else:
        m = mouth_opening(x, judge)
        gt = clips["mouth_open"]
        rec["mouth_open_mae"] = float((m - gt).abs().mean())
        rec["mouth_corr"] = float(pearson(m, gt).mean())
        rec["mouth_corr_other_clip"] = float(pearson(m, gt[other]).mean())
        pose = judge_outputs(x, judge)["head_pose"]
        rec["head_pose_mae"] = float((pose - clips["head_pose"]).abs().mean())
        sp = head_speed(x, judge)
        true = clips["speed"]
        rec["speed_spearman"] = spearman(sp, true)
        lo, hi = true <= true.quantile(1 / 3), true >= true.quantile(2 / 3)
        rec["judged_speed_slowest_third"] = float(sp[lo].mean())
        rec["judged_speed_fastest_third"] = float(sp[hi].mean())
        rec["true_speed_slowest_third"] = float(true[lo].mean())
        rec["true_speed_fastest_third"] = float(true[hi].mean())
    return rec


def train_avatar_judge(world: str, size: int = 16, frames: int = 8, videos: int = 1200, epochs: int = 12,
                       batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4, noise: float = 0.15,
                       regress_weight: float = 20.0, test_videos: int = 240, seed: int = 0,
                       max_steps: int | None = None, evaluate_test: bool = True) -> tuple[AvatarJudge, dict]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    clips = world_clips(world, videos, size, frames, "train", 0)
    x, tg = frame_targets(world, clips)
    render_s = time.perf_counter() - t0
    judge = AvatarJudge(HEADS[world], feature_dim=64, resolution=size)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = len(x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * per_epoch))
    judge.train()
    step, loss = 0, torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(per_epoch):
            if max_steps is not None and step >= max_steps:
                break
            idx = perm[k * batch_size:(k + 1) * batch_size]
            out = judge(augment(x[idx], g, noise))
            loss = F.cross_entropy(out["identity"], tg["identity"][idx])
            for name in REGRESS[world]:
                loss = loss + regress_weight * F.mse_loss(out[name], tg[name][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    judge.eval().requires_grad_(False)
    judge.calibrate(x)
    record = {"world": world, "size": size, "frames": frames, "train_videos": videos, "train_frames": len(x),
              "epochs": epochs, "steps": step, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "augment": {"noise": noise, "blur_prob": 0.5}, "regress_weight": regress_weight, "seed": seed,
              "final_train_loss": float(loss.detach()), "render_seconds": round(render_s, 1),
              "train_seconds": round(time.perf_counter() - t0 - render_s, 1)}
    if evaluate_test:
        test = world_clips(world, test_videos, size, frames, "test", 2000)
        record["test"] = evaluate(world, judge, test)
    return judge, record


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", choices=sorted(HEADS), required=True)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--videos", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="weights path (.safetensors)")
    args = p.parse_args(argv)
    from shared.metrics.train_judge import state_sha256
    from shared.nn.weights import save_weights

    torch.set_num_threads(1)
    out = args.out or judge_path(args.world)
    judge, record = train_avatar_judge(args.world, size=args.size, videos=args.videos, epochs=args.epochs,
                                       seed=args.seed)
    save_weights(judge, out, metadata=judge.metadata())
    argv_used = argv if argv is not None else sys.argv[1:]
    record.update(command=" ".join(["python -m shared.metrics.train_avatar_judge", *argv_used]),
                  weights=out.name, state_sha256=state_sha256(judge.state_dict()), architecture=judge.metadata(),
                  num_parameters=sum(p.numel() for p in judge.parameters()), torch_version=torch.__version__,
                  num_threads=torch.get_num_threads())
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
