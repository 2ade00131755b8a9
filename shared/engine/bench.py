"""``make bench``: time our shared networks against diffusers' at the same configuration.

For each network family (2D U-Net, DiT, factorised 3D video U-Net) both implementations are built at the
same configuration (channels, depth, heads, resolution, frames) with random weights — nothing downloads —
and the script

* prints the parameter counts side by side and whether they agree within 5 % (:func:`param_match`);
* times, **interleaved** (ours, theirs, theirs, ours, ... so both see the same machine load), after warm-up,
  a *training step* (forward + MSE backward + Adam step) and a *sampling step* (forward under
  ``torch.no_grad``), and reports medians and the median ratio ours / theirs;
* measures the *peak memory* of one training / sampling step in a **fresh subprocess per measurement**:
  the Linux peak resident set size (``VmHWM`` in ``/proc/self/status``) is reset through
  ``/proc/self/clear_refs`` after the model, optimiser and batch are built and one warm-up step has run,
  and the peak increase over the resident size at that point during a second step is reported. The
  subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so
  glibc returns freed tensor buffers to the OS instead of caching them, making RSS follow live tensor bytes.
  What it measures: the steady-state working memory of one step — activations + gradients + optimiser
  temporaries (train), activations (sample) — as the OS sees them; ratio ours / theirs;
* writes everything, with provenance (date, machine, torch version, git revision), to
  ``outputs/bench/bench.json``.

CPU threads are set explicitly (``--threads``, default 1). Usage::

    python -m shared.engine.bench                      # all families, small configs, 1 thread
    python -m shared.engine.bench --cases unet2d --size ddpm --repeats 5
    python -m shared.engine.bench --threads 2 --out outputs/bench/bench_2threads.json

GPU (TODO, not run here): ``python -m shared.engine.bench --device cuda`` times the same steps on the GPU
(fp32); bf16 autocast and ``torch.compile`` variants are the next step (see README "Performance").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAM_TOLERANCE = 0.05


# ----------------------------------------------------------------------------------------------- helpers
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_match(ours: int | nn.Module, theirs: int | nn.Module, tol: float = PARAM_TOLERANCE) -> dict:
    """Parameter counts side by side: ``{"ours", "theirs", "ratio", "rel_diff", "within_tol"}``.

    ``rel_diff = |ours - theirs| / theirs``; ``within_tol`` is ``rel_diff <= tol``.
    """
    a = count_params(ours) if isinstance(ours, nn.Module) else int(ours)
    b = count_params(theirs) if isinstance(theirs, nn.Module) else int(theirs)
    if b <= 0:
        raise ValueError("the reference model has no parameters")
    rel = abs(a - b) / b
    return {"ours": a, "theirs": b, "ratio": a / b, "rel_diff": rel, "within_tol": rel <= tol}


@dataclass
class Side:
    """One implementation at one configuration: the module and how to call it on a batch."""

    model: nn.Module
    forward: Callable[[nn.Module, dict], torch.Tensor]


@dataclass
class Case:
    name: str
    config: dict
    ours: Callable[[], Side]
    theirs: Callable[[], Side]
    batch: Callable[[], dict]
    note: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- cases
def _unet2d_case(size: str) -> Case:
    from shared.nn.unet import UNet

    cfgs = {
        "tiny": dict(base=16, mult=(1, 2), blocks=1, attn=(8,), res=16, batch=2, in_ch=3, groups=8),
        "small": dict(base=64, mult=(1, 2, 2), blocks=2, attn=(16,), res=32, batch=8, in_ch=3, groups=32),
        "ddpm": dict(base=128, mult=(1, 2, 2, 2), blocks=2, attn=(16,), res=32, batch=8, in_ch=3, groups=32),
    }
    c = cfgs[size]
    chans = tuple(c["base"] * m for m in c["mult"])

    def ours():
        net = UNet(
            in_channels=c["in_ch"],
            image_size=c["res"],
            base_channels=c["base"],
            channel_mult=c["mult"],
            num_res_blocks=c["blocks"],
            attention_resolutions=c["attn"],
            num_heads=1,
            norm_groups=c["groups"],
        )
        return Side(net, lambda m, b: m(b["x"], b["t"]))

    def theirs():
        from diffusers import UNet2DModel

        res, down, up = c["res"], [], []
        for _ in chans:
            down.append("AttnDownBlock2D" if res in c["attn"] else "DownBlock2D")
            res //= 2
        up = ["AttnUpBlock2D" if d == "AttnDownBlock2D" else "UpBlock2D" for d in reversed(down)]
        # one attention head of width = channels at the attention level (DDPM); attention_head_dim is global
        head = max(chans)
        net = UNet2DModel(
            sample_size=c["res"],
            in_channels=c["in_ch"],
            out_channels=c["in_ch"],
            block_out_channels=chans,
            layers_per_block=c["blocks"],
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            attention_head_dim=head,
            norm_num_groups=c["groups"],
            norm_eps=1e-6,
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
        )
        return Side(net, lambda m, b: m(b["x"], b["t"]).sample)

    def batch():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(c["batch"], c["in_ch"], c["res"], c["res"], generator=g),
            "t": torch.randint(0, 1000, (c["batch"],), generator=g).float(),
        }

    return Case(
        f"unet2d[{size}]",
        {**c, "channels": chans},
        ours,
        theirs,
        batch,
        note="our UNet vs diffusers UNet2DModel (DDPM layout, 1 attention head)",
    )


def _dit_case(size: str) -> Case:
    from shared.nn.transformer import DiT

    cfgs = {
        "tiny": dict(hidden=64, depth=2, heads=2, res=8, patch=2, in_ch=4, classes=10, batch=2),
        "small": dict(
            hidden=384, depth=12, heads=6, res=32, patch=2, in_ch=4, classes=1000, batch=8
        ),  # DiT-S/2
        "ddpm": dict(hidden=384, depth=12, heads=6, res=32, patch=2, in_ch=4, classes=1000, batch=8),
    }
    c = cfgs[size]

    def ours():
        net = DiT(
            input_size=c["res"],
            patch_size=c["patch"],
            in_channels=c["in_ch"],
            hidden_size=c["hidden"],
            depth=c["depth"],
            num_heads=c["heads"],
            num_classes=c["classes"],
            learn_sigma=True,
        )
        return Side(net, lambda m, b: m(b["x"], b["t"], b["y"]))

    def theirs():
        from diffusers import DiTTransformer2DModel

        net = DiTTransformer2DModel(
            num_attention_heads=c["heads"],
            attention_head_dim=c["hidden"] // c["heads"],
            in_channels=c["in_ch"],
            out_channels=2 * c["in_ch"],
            num_layers=c["depth"],
            sample_size=c["res"],
            patch_size=c["patch"],
            num_embeds_ada_norm=c["classes"],
            norm_eps=1e-6,
        )
        return Side(net, lambda m, b: m(b["x"], timestep=b["t"], class_labels=b["y"]).sample)

    def batch():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(c["batch"], c["in_ch"], c["res"], c["res"], generator=g),
            "t": torch.randint(0, 1000, (c["batch"],), generator=g),
            "y": torch.randint(0, c["classes"], (c["batch"],), generator=g),
        }

    return Case(
        f"dit[{size}]",
        c,
        ours,
        theirs,
        batch,
        note="our DiT vs diffusers DiTTransformer2DModel (adaLN-Zero, learned sigma). diffusers keeps a "
        "copy of the timestep+label embedder in every block (its checkpoint converter duplicates "
        "them), hence more parameters at the same architecture",
    )


def _unet3d_case(size: str) -> Case:
    from shared.nn.video import vdm_temporal, video_unet

    small = dict(base=64, mult=(1, 2, 2), blocks=2, attn=(16,), res=32, frames=8, batch=1, in_ch=4, groups=32,
                 head=64, ctx_dim=128, ctx_len=1)
    cfgs = {
        "tiny": dict(small, base=16, mult=(1, 2), blocks=1, attn=(8,), res=16, frames=4, groups=8, head=16,
                     ctx_dim=16),
        "small": small,
        "ddpm": dict(small, batch=2),
    }
    c = cfgs[size]
    chans = tuple(c["base"] * m for m in c["mult"])

    def ours():
        # closest to UNet3DConditionModel: a temporal block after *every* residual stage (theirs has a
        # temporal conv after every resnet), made of temporal attention + temporal conv
        def temporal(ch):
            return vdm_temporal(ch, head_channels=c["head"], norm_groups=c["groups"], conv_kernel=3)

        net = video_unet(
            temporal=temporal,
            insert="resblock",
            in_channels=c["in_ch"],
            image_size=c["res"],
            base_channels=c["base"],
            channel_mult=c["mult"],
            num_res_blocks=c["blocks"],
            attention_resolutions=c["attn"],
            head_channels=c["head"],
            norm_groups=c["groups"],
        )
        return Side(net, lambda m, b: m(b["x"], b["t"]))

    def theirs():
        from diffusers import UNet3DConditionModel

        res, down = c["res"], []
        for _ in chans:
            down.append("CrossAttnDownBlock3D" if res in c["attn"] else "DownBlock3D")
            res //= 2
        up = ["CrossAttnUpBlock3D" if d == "CrossAttnDownBlock3D" else "UpBlock3D" for d in reversed(down)]
        net = UNet3DConditionModel(
            sample_size=c["res"],
            in_channels=c["in_ch"],
            out_channels=c["in_ch"],
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=chans,
            layers_per_block=c["blocks"],
            norm_num_groups=c["groups"],
            norm_eps=1e-6,
            cross_attention_dim=c["ctx_dim"],
            attention_head_dim=c["head"],
        )
        return Side(net, lambda m, b: m(b["x"], b["t"], encoder_hidden_states=b["ctx"]).sample)

    def batch():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(c["batch"], c["in_ch"], c["frames"], c["res"], c["res"], generator=g),
            "t": torch.randint(0, 1000, (c["batch"],), generator=g).float(),
            "ctx": torch.randn(c["batch"], c["ctx_len"], c["ctx_dim"], generator=g),
        }

    return Case(
        f"unet3d[{size}]",
        {**c, "channels": chans},
        ours,
        theirs,
        batch,
        note="our factorised video U-Net (temporal attention + temporal conv after every residual stage) "
        "vs diffusers UNet3DConditionModel (ModelScope: 4-layer temporal conv after every resnet, "
        "spatial transformers with cross-attention + GEGLU FF, temporal transformers). Not the same "
        "architecture: parameter counts differ by far more than 5 %; the ratio compares the closest "
        "configurations, not equal work",
    )


def _motion_case(size: str) -> Case:
    """AnimateDiff's motion-module U-Net: a 2D U-Net (no spatial attention in the down/up levels, the middle
    block's attention only) with a motion module after every resnet and in the middle, 2D weights frozen
    (the paper trains the motion modules alone) vs diffusers ``UNetMotionModel`` with ``DownBlockMotion`` /
    ``UpBlockMotion`` levels (``freeze_unet2d_params``). Theirs keeps a cross-attention spatial transformer in
    the middle block (SD's layout) where ours has self-attention: the remaining parameter gap."""
    from shared.nn.motion_module import from_image_model
    from shared.nn.unet import UNet

    cfgs = {
        "tiny": dict(base=32, mult=(1, 2), blocks=1, res=16, frames=4, batch=1, in_ch=4, groups=8, heads=8,
                     ctx_dim=32),
        "small": dict(base=64, mult=(1, 2, 2), blocks=2, res=32, frames=8, batch=1, in_ch=4, groups=32, heads=8,
                      ctx_dim=128),
        "ddpm": dict(base=64, mult=(1, 2, 2), blocks=2, res=32, frames=16, batch=2, in_ch=4, groups=32, heads=8,
                     ctx_dim=128),
    }
    c = cfgs[size]
    chans = tuple(c["base"] * m for m in c["mult"])

    def ours():
        image = UNet(in_channels=c["in_ch"], image_size=c["res"], base_channels=c["base"], channel_mult=c["mult"],
                     num_res_blocks=c["blocks"], attention_resolutions=(), head_channels=chans[-1] // c["heads"],
                     norm_groups=c["groups"])
        # position: each module before its level's upsampler, where UNetMotionModel has it
        net = from_image_model(image, {"heads": c["heads"], "norm_groups": c["groups"], "max_len": 32},
                               freeze=True, copy=False, position="before_resample")
        return Side(net, lambda m, b: m(b["x"], b["t"]))

    def theirs():
        from diffusers import UNetMotionModel

        net = UNetMotionModel(
            sample_size=c["res"],
            in_channels=c["in_ch"],
            out_channels=c["in_ch"],
            down_block_types=("DownBlockMotion",) * len(chans),
            up_block_types=("UpBlockMotion",) * len(chans),
            block_out_channels=chans,
            layers_per_block=c["blocks"],
            norm_num_groups=c["groups"],
            norm_eps=1e-6,
            cross_attention_dim=c["ctx_dim"],
            num_attention_heads=c["heads"],
            motion_num_attention_heads=c["heads"],
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        )
        net.freeze_unet2d_params()
        return Side(net, lambda m, b: m(b["x"], b["t"], encoder_hidden_states=b["ctx"]).sample)

    def batch():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(c["batch"], c["in_ch"], c["frames"], c["res"], c["res"], generator=g),
            "t": torch.randint(0, 1000, (c["batch"],), generator=g).float(),
            # diffusers 0.42's UNetMotionModel takes the context per frame: (B*T, L, D)
            "ctx": torch.randn(c["batch"] * c["frames"], 1, c["ctx_dim"], generator=g),
        }

    return Case(
        f"motion[{size}]",
        {**c, "channels": chans},
        ours,
        theirs,
        batch,
        note="motion-module U-Net, 2D weights frozen on both sides (only motion modules train); theirs has a "
        "cross-attention transformer in the middle block where ours has self-attention",
    )


CASE_BUILDERS = {"unet2d": _unet2d_case, "dit": _dit_case, "unet3d": _unet3d_case, "motion": _motion_case}


def build_case(name: str, size: str) -> Case:
    return CASE_BUILDERS[name](size)


# ----------------------------------------------------------------------------------------------- steps
def make_train_step(side: Side, batch: dict) -> Callable[[], None]:
    model = side.model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = None

    def step():
        nonlocal target
        out = side.forward(model, batch)
        if target is None:
            target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_sample_step(side: Side, batch: dict) -> Callable[[], None]:
    model = side.model.eval()

    def step():
        with torch.no_grad():
            side.forward(model, batch)

    return step


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Run each step ``warmup`` times, then ``repeats`` rounds alternating the order (ABBA...), returning
    per-step wall times in seconds."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _measure_memory_here(case_name: str, size: str, which: str, mode: str, threads: int) -> dict:
    """In *this* process: build, reset the RSS peak, run one step, return the peak increase (bytes)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    case = build_case(case_name, size)
    side = (case.ours if which == "ours" else case.theirs)()
    batch = case.batch()
    step = (make_train_step if mode == "train" else make_sample_step)(side, batch)
    step()  # warm-up: one-time allocations (kernels, thread pools, Adam state) belong to the baseline
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_delta_bytes": (peak - base) * 1024, "base_rss_bytes": base * 1024}


def measure_memory(case_name: str, size: str, which: str, mode: str, threads: int = 1) -> dict | None:
    """:func:`_measure_memory_here` in a fresh subprocess (``None`` where ``/proc`` is unavailable)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "shared.engine.bench",
        "--_memory",
        case_name,
        size,
        which,
        mode,
        "--threads",
        str(threads),
    ]
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- driver
def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def bench_case(
    case_name: str,
    size: str = "small",
    repeats: int = 7,
    warmup: int = 2,
    threads: int = 1,
    memory: bool = True,
    log=print,
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    case = build_case(case_name, size)
    ours, theirs = case.ours(), case.theirs()
    params = param_match(ours.model, theirs.model)
    log(
        f"== {case.name}: params ours {params['ours']:,} vs theirs {params['theirs']:,} "
        f"({100 * (params['ratio'] - 1):+.1f}%{'' if params['within_tol'] else ', NOT within 5%'})"
    )
    batch = case.batch()
    row = {
        "case": case.name,
        "size": size,
        "config": case.config,
        "note": case.note,
        "params": params,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "load_before": loadavg(),
    }
    for mode, make in (("sample", make_sample_step), ("train", make_train_step)):
        times = time_interleaved({"ours": make(ours, batch), "theirs": make(theirs, batch)}, repeats, warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        # ratio of medians, plus the median of the per-round ratios (robust to load drift between rounds)
        per_round = [a / b for a, b in zip(times["ours"], times["theirs"])]
        row[mode] = {
            "ours_s": med["ours"],
            "theirs_s": med["theirs"],
            "ratio": med["ours"] / med["theirs"],
            "ratio_per_round_median": statistics.median(per_round),
            "times": times,
        }
        log(
            f"   {mode:6s} ours {med['ours'] * 1e3:8.1f} ms  theirs {med['theirs'] * 1e3:8.1f} ms  "
            f"ratio {row[mode]['ratio']:.2f} (per-round median {row[mode]['ratio_per_round_median']:.2f})"
        )
    del ours, theirs
    gc.collect()
    if memory:
        for mode in ("sample", "train"):
            m = {w: measure_memory(case_name, size, w, mode, threads) for w in ("ours", "theirs")}
            if m["ours"] is None:
                continue
            row[mode]["mem_ours_bytes"] = m["ours"]["peak_delta_bytes"]
            row[mode]["mem_theirs_bytes"] = m["theirs"]["peak_delta_bytes"]
            row[mode]["mem_ratio"] = m["ours"]["peak_delta_bytes"] / max(m["theirs"]["peak_delta_bytes"], 1)
            log(
                f"   {mode:6s} peak mem ours {m['ours']['peak_delta_bytes'] / 2**20:8.1f} MiB  theirs "
                f"{m['theirs']['peak_delta_bytes'] / 2**20:8.1f} MiB  ratio {row[mode]['mem_ratio']:.2f}"
            )
    row["load_after"] = loadavg()
    return row


def format_table(rows: list[dict]) -> str:
    head = (
        f"| {'network':16s} | {'params ours':>12s} | {'params theirs':>13s} | {'train ours/theirs':>17s} | "
        f"{'sample ours/theirs':>18s} | {'train mem':>9s} | {'sample mem':>10s} |"
    )
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:

        def mem(mode, r=r):
            v = r[mode].get("mem_ratio")
            return "n/a" if v is None else f"{v:.2f}"

        flag = "" if r["params"]["within_tol"] else " (!)"
        lines.append(
            f"| {r['case']:16s} | {r['params']['ours']:>12,} | {r['params']['theirs']:>13,} | "
            f"{r['train']['ratio']:>17.2f} | {r['sample']['ratio']:>18.2f} | {mem('train'):>9s} | "
            f"{mem('sample'):>10s} |{flag}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASE_BUILDERS), choices=list(CASE_BUILDERS))
    ap.add_argument(
        "--size",
        default="small",
        choices=["tiny", "small", "ddpm"],
        help="tiny: smoke test; small: CPU-seconds configs; ddpm: the exact DDPM CIFAR-10 U-Net",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="outputs/bench/bench.json")
    ap.add_argument("--_memory", nargs=4, metavar=("CASE", "SIZE", "WHICH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory:
        print(json.dumps(_measure_memory_here(*args._memory, threads=args.threads)))
        return None

    from shared.engine.results import provenance

    rows = [
        bench_case(c, args.size, args.repeats, args.warmup, args.threads, not args.no_memory)
        for c in args.cases
    ]
    table = format_table(rows)
    print()
    print(table)
    print("ratios are median ours / median theirs (< 1: ours faster / smaller); (!) = params not within 5%")
    record = {
        "rows": rows,
        "table": table,
        "torch": torch.__version__,
        "threads": args.threads,
        "memory_method": "peak RSS increase during the 2nd step in a fresh process "
        "(VmHWM after clear_refs=5, "
        "MALLOC_MMAP_THRESHOLD_=65536)",
        **provenance(),
    }
    try:
        import diffusers

        record["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
