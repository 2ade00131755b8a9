"""Hydra and Lightning's multi-process strategies agree: one run folder per run, not one per rank.

Lightning's DDP launcher starts ranks 1..N-1 by re-running this script with the same argv (plus its own
``hydra.run.dir=``). That argv is not the job's: in a multirun it still says ``-m`` and the sweep, and each
rank would open its own Hydra log file. So rank 0 records its job (run folder and the job's own overrides)
in an environment variable the child processes inherit (:func:`remember_hydra_job`), and a child rewrites its
argv from it before Hydra parses anything (:func:`child_argv`): same overrides, same run folder, no ``.hydra``
snapshot and no log file of its own. With submitit (``launcher=slurm``) every task is started by SLURM and
Lightning launches nothing, so none of this applies there.

Also here: :func:`module_classes` (FSDP auto-wrap policy from dotted class names in a config) and
:class:`WeightsDigest` (each rank writes a hash of its weights at the end: DDP replicas must agree).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl

ENV = "VDP_HYDRA_JOB"


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def remember_hydra_job(run_dir: str | os.PathLike) -> None:
    """Rank 0 inside a Hydra job: leave ``{run_dir, overrides}`` in the environment for its ranks."""
    if _local_rank() != 0:
        return
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (tests calling fit directly): nothing to carry
        return
    os.environ[ENV] = json.dumps({"run_dir": str(Path(run_dir).resolve()), "overrides": overrides})


def child_argv(argv: list[str] | None = None) -> list[str]:
    """The argv a spawned rank should run with (unchanged on rank 0 or without a recorded job)."""
    argv = list(sys.argv if argv is None else argv)
    job = os.environ.get(ENV)
    if _local_rank() == 0 or not job:
        return argv
    job = json.loads(job)
    keep = [
        a
        for a in job["overrides"]
        if not a.startswith(
            ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=", "hydra.job.name=")
        )
    ]
    rank = _local_rank()
    return [
        argv[0],
        *keep,
        f"hydra.run.dir='{job['run_dir']}'",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
        f"hydra.job.name=rank{rank}",
    ]


def prepare_argv() -> None:
    """Call before the Hydra entry point parses ``sys.argv``."""
    sys.argv[:] = child_argv()


_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def rank_launch_scope():
    """Around one job's fit in the launching process: afterwards tear down the process group and the
    variables Lightning's launcher set, so the next job of a multirun spawns fresh ranks (new port)."""
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    try:
        yield
    finally:
        if before["LOCAL_RANK"] is None:  # this process launched the ranks (it was not launched itself)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def module_classes(names: list[str]) -> set[type]:
    """``{class, ...}`` from dotted names — FSDP's ``auto_wrap_policy`` (one shard unit per block)."""
    from hydra.utils import get_class

    return {get_class(n) for n in names}


def state_digest(module_or_state) -> str:
    """sha256 over the names and bytes of a module's state dict (or of a state dict)."""
    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class WeightsDigest(pl.Callback):
    """At the end of training each rank writes ``<out_dir>/weights_rank<r>.sha256`` (its full state dict)."""

    def __init__(self, out_dir: str | None = None):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        out = Path(self.out_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"weights_rank{trainer.global_rank}.sha256").write_text(state_digest(pl_module) + "\n")
