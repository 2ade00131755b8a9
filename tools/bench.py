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

    python -m tools.bench                      # all families, small configs, 1 thread
    python -m tools.bench --cases unet2d --size ddpm --repeats 5
    python -m tools.bench --threads 2 --out outputs/bench/bench_2threads.json

GPU: ``--device cuda`` times the same steps on the GPU (CUDA-synchronised; peak memory from
``torch.cuda.max_memory_allocated`` in-process), ``--precision bf16`` runs both sides under bf16 autocast and
``--compile`` wraps both models in ``torch.compile``::

    python -m tools.bench --device cuda --precision bf16 --compile --out outputs/bench/bench_gpu.json

``--mfu`` adds the model-FLOPs utilisation of our DiT's training step (default DiT-B/2, 32×32×4 latents): FLOPs
of one forward + backward counted by ``torch.utils.flop_counter``, divided by the median step time and by the
device's dense bf16 peak (``PEAK_TFLOPS`` by device name, or ``--peak-tflops``).
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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PARAM_TOLERANCE = 0.05

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; matched by substring of
# torch.cuda.get_device_name(). Anything else needs --peak-tflops.
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0}


@dataclass
class Runtime:
    """Where and how both sides run: device, autocast precision, torch.compile."""

    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible to torch")

    def autocast(self):
        import contextlib

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def prepare(self, side: Side, batch: dict) -> tuple[Side, dict]:
        model = side.model.to(self.device)
        if self.compile:
            model = torch.compile(model, backend=self.compile_backend)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return Side(model, side.forward), batch


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
    cfgs["gpu"] = dict(cfgs["ddpm"], batch=128)  # the DDPM CIFAR-10 U-Net at the paper's batch: worth a GPU
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
        "b2": dict(hidden=768, depth=12, heads=12, res=32, patch=2, in_ch=4, classes=1000, batch=64),  # DiT-B/2
    }
    cfgs["gpu"] = dict(cfgs["b2"], batch=256)  # DiT-B/2 on 256² images' 32x32x4 latents at the paper's batch
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
        "gpu": dict(small, frames=16, batch=4),  # 64 frames of 32x32x4 latents per step
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
    cfgs["gpu"] = dict(cfgs["ddpm"], batch=4)  # 64 frames of 32x32x4 latents per step
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


def _shift_case(size: str) -> Case:
    """Latent-Shift's cost (An et al. 2023, Sec. 3.2): the same 2D U-Net made temporal by the parameter-free shift
    in every residual block (ours) vs by VDM-style temporal attention after every residual stage ("theirs" is OUR
    temporal-attention inflation, not a diffusers model: the comparison the paper makes, shift vs attention)."""
    from shared.nn.temporal_shift import add_temporal_shift
    from shared.nn.unet import UNet
    from shared.nn.video import inflated_image_unet, vdm_temporal

    small = dict(base=64, mult=(1, 2, 2), blocks=2, attn=(16,), res=32, frames=8, batch=1, in_ch=4, groups=32,
                 head=64)
    cfgs = {"tiny": dict(small, base=16, mult=(1, 2), blocks=1, attn=(8,), res=16, frames=4, groups=8, head=16),
            "small": small, "ddpm": dict(small, batch=2), "gpu": dict(small, frames=16, batch=4)}
    c = cfgs[size]

    def image():
        return UNet(in_channels=c["in_ch"], image_size=c["res"], base_channels=c["base"], channel_mult=c["mult"],
                    num_res_blocks=c["blocks"], attention_resolutions=c["attn"], head_channels=c["head"],
                    norm_groups=c["groups"])

    def ours():
        return Side(add_temporal_shift(image(), 0.125), lambda m, b: m(b["x"], b["t"]))

    def theirs():
        net = inflated_image_unet(image(), lambda ch: vdm_temporal(ch, head_channels=c["head"],
                                                                  norm_groups=c["groups"]), insert="resblock")
        return Side(net, lambda m, b: m(b["x"], b["t"]))

    def batch():
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(c["batch"], c["in_ch"], c["frames"], c["res"], c["res"], generator=g),
                "t": torch.randint(0, 1000, (c["batch"],), generator=g).float()}

    return Case(f"shift[{size}]", c, ours, theirs, batch,
                note="Latent-Shift (temporal shift in every residual block, 0 extra parameters) vs the same U-Net "
                "with temporal attention after every residual stage (our VDM block; not diffusers): the "
                "parameter gap is the attention's, by design")


CASE_BUILDERS = {"unet2d": _unet2d_case, "dit": _dit_case, "unet3d": _unet3d_case, "motion": _motion_case,
                 "shift": _shift_case}


def build_case(name: str, size: str) -> Case:
    return CASE_BUILDERS[name](size)


# ----------------------------------------------------------------------------------------------- steps
def ratio_iqr(per_round: list[float]) -> tuple[float, float]:
    """First and third quartile of the per-round ratios (the spread behind "on par"); one round: that ratio."""
    if len(per_round) < 2:
        return (per_round[0], per_round[0])
    q = statistics.quantiles(per_round, n=4, method="inclusive")
    return (q[0], q[2])


def make_train_step(side: Side, batch: dict, rt: Runtime | None = None) -> Callable[[], None]:
    rt = rt or Runtime()
    model = side.model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = None

    def step():
        nonlocal target
        with rt.autocast():
            out = side.forward(model, batch)
        if target is None:
            target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
        loss = F.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_sample_step(side: Side, batch: dict, rt: Runtime | None = None) -> Callable[[], None]:
    rt = rt or Runtime()
    model = side.model.eval()

    def step():
        with torch.no_grad(), rt.autocast():
            side.forward(model, batch)

    return step


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Run each step ``warmup`` times, then ``repeats`` rounds alternating the order (ABBA...), returning
    per-step wall times in seconds (``sync`` waits for the device before and after each step)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            sync()
            t0 = time.perf_counter()
            steps[n]()
            sync()
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
        "tools.bench",
        "--_memory",
        case_name,
        size,
        which,
        mode,
        "--threads",
        str(threads),
    ]
    root = Path(__file__).resolve().parents[1]
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
    rt: Runtime | None = None,
) -> dict:
    rt = rt or Runtime()
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
    ours, batch_ours = rt.prepare(ours, batch)
    theirs, batch_theirs = rt.prepare(theirs, batch)
    row = {
        "case": case.name,
        "size": size,
        "config": case.config,
        "note": case.note,
        "params": params,
        "device": rt.device,
        "precision": rt.precision,
        "compile": rt.compile,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "load_before": loadavg(),
    }
    for mode, make in (("sample", make_sample_step), ("train", make_train_step)):
        times = time_interleaved({"ours": make(ours, batch_ours, rt), "theirs": make(theirs, batch_theirs, rt)},
                                 repeats, warmup, rt.sync)
        med = {k: statistics.median(v) for k, v in times.items()}
        # ratio of medians, plus the median of the per-round ratios (robust to load drift between rounds)
        per_round = [a / b for a, b in zip(times["ours"], times["theirs"])]
        row[mode] = {
            "ours_s": med["ours"],
            "theirs_s": med["theirs"],
            "ratio": med["ours"] / med["theirs"],
            "ratio_per_round_median": statistics.median(per_round),
            "ratio_per_round_iqr": ratio_iqr(per_round),
            "times": times,
        }
        q1, q3 = row[mode]["ratio_per_round_iqr"]
        log(
            f"   {mode:6s} ours {med['ours'] * 1e3:8.1f} ms  theirs {med['theirs'] * 1e3:8.1f} ms  "
            f"ratio {row[mode]['ratio']:.2f} (per-round median {row[mode]['ratio_per_round_median']:.2f}, "
            f"quartiles {q1:.2f}-{q3:.2f})"
        )
    if memory and rt.device.startswith("cuda"):  # in-process: the CUDA allocator's own peak counter
        for mode, make in (("sample", make_sample_step), ("train", make_train_step)):
            peaks = {}
            for which, side, b in (("ours", ours, batch_ours), ("theirs", theirs, batch_theirs)):
                step = make(side, b, rt)
                step()
                rt.sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step()
                rt.sync()
                peaks[which] = torch.cuda.max_memory_allocated() - base
            row[mode]["mem_ours_bytes"], row[mode]["mem_theirs_bytes"] = peaks["ours"], peaks["theirs"]
            row[mode]["mem_ratio"] = peaks["ours"] / max(peaks["theirs"], 1)
            log(f"   {mode:6s} peak CUDA mem ratio {row[mode]['mem_ratio']:.2f}")
        memory = False
    if memory:  # CPU: the allocator-independent live-tensor peak, in this process
        for mode, make in (("sample", make_sample_step), ("train", make_train_step)):
            live = {}
            for which, side, b in (("ours", ours, batch_ours), ("theirs", theirs, batch_theirs)):
                step = make(side, b, rt)
                step()  # optimiser state and caches exist before the measured step
                live[which] = live_tensor_peak(step)
            row[mode]["live_peak"] = live
            row[mode]["live_peak_ratio"] = live["ours"]["peak_bytes"] / max(live["theirs"]["peak_bytes"], 1)
            log(
                f"   {mode:6s} live-tensor peak ours {live['ours']['peak_bytes'] / 2**20:8.1f} MiB  theirs "
                f"{live['theirs']['peak_bytes'] / 2**20:8.1f} MiB  ratio {row[mode]['live_peak_ratio']:.2f}"
            )
    del ours, theirs
    gc.collect()
    if memory and (rt.precision != "fp32" or rt.compile):
        row["rss_memory"] = "not measured: the fresh-process RSS measure runs eager fp32 only"
        memory = False
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


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages alive while the ops under it run, and the op at the peak.

    Only storages created under the mode count (weights, buffers and inputs made before do not, views of them
    and in-place updates of them neither): the memory of
    a step as the program holds it, independent of the allocator — the RSS measure above also sees freed
    buffers the allocator keeps. Storages are counted once (views share them) and leave when Python frees them.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.peak_op: str | None = None
        self._live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an op whose outputs alias an input (views, in-place ops) creates no storage: counting it would add a
        # storage made before the mode (a weight behind the transposed view a linear layer makes) as new bytes
        aliasing = any(r.alias_info is not None for r in func._schema.returns)
        for t in [] if aliasing else tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if nbytes == 0 or key in self._live:
                continue
            self._live.add(key)
            self.current += nbytes
            weakref.finalize(st, self._free, key, nbytes)
        if self.current > self.peak:
            self.peak, self.peak_op = self.current, str(func)
        return out


def live_tensor_peak(step: Callable[[], None]) -> dict:
    """``{"peak_bytes", "peak_op"}`` of one call of ``step`` under :class:`LiveTensorPeak`."""
    mode = LiveTensorPeak()
    with mode:
        step()
    return {"peak_bytes": mode.peak, "peak_op": mode.peak_op}


def train_step_flops(side: Side, batch: dict, rt: Runtime | None = None) -> int:
    """FLOPs of one training step's forward + backward (``torch.utils.flop_counter``: 2 per multiply-add of
    matmuls, convolutions and attention; element-wise work and the optimiser are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    rt = rt or Runtime()
    model = side.model.train()
    with FlopCounterMode(display=False) as counter:
        with rt.autocast():
            out = side.forward(model, batch)
        out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_flops(device: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and where the number came from."""
    if override_tflops:
        return float(override_tflops) * 1e12, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "no datasheet peak for a CPU: pass --peak-tflops"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"datasheet dense bf16 peak of {key} ({name})"
    return None, f"unknown device {name!r}: pass --peak-tflops"


def dit_mfu(size: str = "b2", rt: Runtime | None = None, repeats: int = 10, warmup: int = 3,
            peak_tflops: float | None = None, batch_size: int | None = None, log=print) -> dict:
    """Training throughput and model-FLOPs utilisation of our DiT at ``size`` (DiT-B/2 by default)."""
    rt = rt or Runtime()
    torch.manual_seed(0)
    case = build_case("dit", size)
    if batch_size:
        case.config["batch"] = int(batch_size)
    raw, batch = rt.prepare(case.ours(), case.batch())
    flops = train_step_flops(Side(raw.model._orig_mod if rt.compile else raw.model, raw.forward), batch, rt)
    times = time_interleaved({"ours": make_train_step(raw, batch, rt)}, repeats, warmup, rt.sync)["ours"]
    step_s = statistics.median(times)
    peak, source = peak_flops(rt.device, peak_tflops)
    achieved = flops / step_s
    out = {"case": case.name, "config": case.config, "device": rt.device, "precision": rt.precision,
           "compile": rt.compile, "train_flops_per_step": flops, "step_s": step_s, "times": times,
           "images_per_s": case.config["batch"] / step_s, "achieved_tflops": achieved / 1e12,
           "peak_tflops": None if peak is None else peak / 1e12, "peak_source": source,
           "mfu": None if peak is None else achieved / peak}
    log(f"== MFU {case.name} batch {case.config['batch']} {rt.device} {rt.precision}"
        f"{' compiled' if rt.compile else ''}: {flops / 1e9:.1f} GFLOP/step, {step_s * 1e3:.1f} ms/step, "
        f"{out['images_per_s']:.1f} img/s, {achieved / 1e12:.2f} TFLOP/s"
        + ("" if peak is None else f", MFU {100 * out['mfu']:.1f}% of {peak / 1e12:g} TFLOP/s ({source})"))
    return out


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
    ap.add_argument("--cases", nargs="*", default=list(CASE_BUILDERS), choices=list(CASE_BUILDERS),
                    help="the families to time (none: only --mfu)")
    ap.add_argument(
        "--size",
        default="small",
        choices=["tiny", "small", "ddpm", "gpu"],
        help="tiny: smoke test; small: CPU-seconds configs; ddpm: the exact DDPM CIFAR-10 U-Net; gpu: paper "
        "batch sizes (DDPM U-Net x128, DiT-B/2 x256, 16-frame video U-Nets x4) for timing on a GPU",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast on both sides")
    ap.add_argument("--compile", action="store_true", help="torch.compile both sides")
    ap.add_argument("--mfu", action="store_true", help="also: our DiT's training MFU (--mfu-size, default B/2)")
    ap.add_argument("--mfu-size", default="b2", choices=["tiny", "small", "b2", "gpu"])
    ap.add_argument("--mfu-batch", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="outputs/bench/bench.json")
    ap.add_argument("--_memory", nargs=4, metavar=("CASE", "SIZE", "WHICH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory:
        print(json.dumps(_measure_memory_here(*args._memory, threads=args.threads)))
        return None

    from shared.engine.results import provenance

    try:
        rt = Runtime(args.device, args.precision, args.compile)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not args.cases and not args.mfu:
        raise SystemExit("error: nothing to do: no --cases and no --mfu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    record = {
        "rows": rows,
        "torch": torch.__version__,
        "threads": args.threads,
        "memory_method": "torch.cuda.max_memory_allocated during the 2nd step minus the memory allocated before "
        "it, in-process" if args.device.startswith("cuda") else "peak RSS increase during the 2nd step in a fresh "
        "process (VmHWM after clear_refs=5, MALLOC_MMAP_THRESHOLD_=65536); live-tensor peak in-process",
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        **provenance(),
    }
    try:
        import diffusers

        record["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    # written after every case, so that a run cut off by a time limit keeps what it finished
    failed = []
    for c in args.cases:
        try:
            rows.append(bench_case(c, args.size, args.repeats, args.warmup, args.threads, not args.no_memory,
                                   rt=rt))
        except Exception as e:  # one family failing (out of memory, a compile error) does not lose the others
            failed.append({"case": c, "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"== {c}: FAILED {failed[-1]['error']}", file=sys.stderr)
            record["failed"] = failed
        record["table"] = format_table(rows)
        out.write_text(json.dumps(record, indent=2) + "\n")
    if rows:
        print()
        print(record["table"])
        print("ratios are median ours / median theirs (< 1: ours faster / smaller); (!) = params not within 5%")
    if args.mfu:
        record["mfu"] = dit_mfu(args.mfu_size, rt, max(args.repeats, 3), args.warmup, args.peak_tflops,
                                args.mfu_batch)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(args.cases)} families failed: "
                         + ", ".join(f["case"] for f in failed))
    return record


if __name__ == "__main__":
    main()
