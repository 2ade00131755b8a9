"""Per-step overhead of the training harness: the same module, data and optimiser stepped by
``shared.engine.run.fit`` (Lightning with the project's callbacks, checkpointing and logging) and by a bare
PyTorch loop (``training_loss`` -> backward -> optimiser step), in one process, for one stage of a claim config.

Made for issue 23's GPU pilot, where a 167 K-parameter autoencoder step cost ~0.13 s on an H200 whatever the number
of processes: if ``fit`` is much slower than the bare loop at the same size, the harness is the overhead; if both are
slow, the module's own step is (then ``--profile`` prints the top operators of a few bare steps).

    python tests/bench/step_overhead.py --experiment video_ldm/sprites_claim_gpu --stage autoencoder --steps 60
    python tests/bench/step_overhead.py ... --device cuda --profile      # on a GPU machine
    python tests/bench/step_overhead.py ... --override data.size=16 --override data.frames=4   # smaller (CPU)

Prints one JSON line: seconds per step of each loop (after ``--warmup`` steps), their ratio, the device.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def stage_config(experiment: str, stage: str, steps: int, device: str, overrides: list[str], run_dir):
    from omegaconf import OmegaConf, open_dict

    from shared.engine.claims import variant_config
    from shared.engine.compose import compose

    cfg = compose([f"experiment={experiment}", *(["trainer=cpu"] if device == "cpu" else []), "logger=none",
                   f"run_dir={run_dir}", *overrides])
    # as a claim's seed job sees it; resolved with the run folder set (else the checkpoint callback's
    # ${run_dir}/checkpoints becomes "None/checkpoints" in the working directory)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if stage == "autoencoder":
        c = cfg.claim
        sub = variant_config(cfg, {"module": OmegaConf.to_container(c.autoencoder_module, resolve=True),
                                   "data.batch_size": int(c.autoencoder_batch_size),
                                   "claim.autoencoder_module": None})
    elif stage == "main":
        sub = variant_config(cfg)
    else:
        raise SystemExit(f"error: --stage must be autoencoder or main, got {stage!r}")
    with open_dict(sub):
        sub.trainer.max_steps = int(steps)
        sub.trainer.enable_progress_bar = False
        sub.trainer.val_check_interval = None
        sub.trainer.limit_val_batches = 0
        if sub.get("callbacks") is not None and "samples" in sub.callbacks:
            sub.callbacks.samples = None
    return sub


class StepTimer:
    """A Lightning callback recording the wall time at the end of every training batch."""

    def __new__(cls):
        import pytorch_lightning as pl

        class _T(pl.Callback):
            def __init__(self):
                self.times = []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if module.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())

        return _T()


def per_step(times: list[float], warmup: int) -> float:
    t = times[warmup:]
    return (t[-1] - t[0]) / max(1, len(t) - 1)


def data_seconds(cfg, n: int) -> float:
    """Seconds per batch of the stage's training loader alone (the host side: world rendering, collation)."""
    from shared.engine.run import build

    datamodule, _ = build(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            next(it)
        except StopIteration:   # a small dataset: another epoch
            it = iter(loader)
            next(it)
    return (time.perf_counter() - t0) / n


def bare_loop(cfg, steps: int, warmup: int, device: str, profile: bool, amp: bool = False) -> tuple[float, str]:
    """Seconds per bare step after ``warmup`` steps, and (``profile``) the top operators of five more steps by host
    time and, on a GPU, by device time. ``amp``: the loss under bf16 autocast, as Lightning's ``bf16-mixed``."""
    import contextlib

    import torch

    from shared.engine.run import build

    datamodule, module = build(cfg)
    datamodule.setup("fit")
    module.to(device).train()
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else (opt[0][0] if isinstance(opt, tuple) else opt)
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    times, table = [], ""

    def step(i):
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:   # a small dataset: start another epoch, as the trainer does
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        g = torch.Generator(device=device).manual_seed(i)
        ctx = torch.autocast(device_type=device, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            loss = module.training_loss(batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(steps):
        step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with prof(activities=acts) as p:
            for i in range(5):
                step(steps + i)
        table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        if device == "cuda":
            table += "\n" + p.key_averages().table(sort_by="self_cuda_time_total", row_limit=15)
    return per_step(times, warmup), table


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--stage", default="autoencoder", help="autoencoder | main")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--profile", action="store_true", help="print the top operators of 5 bare steps")
    ap.add_argument("--override", action="append", default=[], help="a config override (repeatable)")
    ap.add_argument("--amp", default="auto", help="bare loop under bf16 autocast: auto (as the trainer's precision) "
                    "| bf16 | none")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is; the claims' seed "
                    "jobs use 1)")
    ap.add_argument("--bare-only", action="store_true", help="skip the harness run (fit)")
    ap.add_argument("--data-batches", type=int, default=0, help="also time this many batches of the loader alone")
    a = ap.parse_args(argv)
    if a.steps <= a.warmup + 1:
        raise SystemExit(f"error: --steps ({a.steps}) must exceed --warmup ({a.warmup}) + 1")
    import torch

    from shared.engine.run import fit

    if a.amp not in ("auto", "bf16", "none"):
        raise SystemExit(f"error: --amp must be auto, bf16 or none, got {a.amp!r}")
    torch.manual_seed(0)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if a.threads:
        torch.set_num_threads(a.threads)
    work = tempfile.TemporaryDirectory()   # the run folder: nothing is written outside it
    cfg = stage_config(a.experiment, a.stage, a.steps, a.device, a.override, Path(work.name) / "run")
    amp = a.amp == "bf16" or (a.amp == "auto" and str(cfg.trainer.get("precision", "")).startswith("bf16"))
    bare, table = bare_loop(cfg, a.steps, a.warmup, a.device, a.profile, amp=amp and a.device == "cuda")
    out = {"experiment": a.experiment, "stage": a.stage, "device": a.device,
           "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None, "steps": a.steps,
           "bare_amp_bf16": bool(amp and a.device == "cuda"), "cudnn_benchmark": a.cudnn_benchmark,
           "threads": torch.get_num_threads(),
           "bare_s_per_step": round(bare, 5)}
    if a.data_batches:
        out["data_s_per_batch"] = round(data_seconds(cfg, a.data_batches), 5)
    if not a.bare_only:
        timer = StepTimer()
        fit(cfg, run_dir=Path(work.name) / "run", extra_callbacks=[timer])
        harness = per_step(timer.times, a.warmup)
        out.update({"fit_s_per_step": round(harness, 5), "fit_over_bare": round(harness / bare, 3)})
    out["overrides"] = a.override
    work.cleanup()
    if table:
        print(table)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
