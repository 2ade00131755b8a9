"""Run independent pieces of a claim check (one per seed) in worker processes.

Seeds of a claim are independent, so on a machine with ``W`` free cores a pipeline can train them ``W``
at a time, one single-threaded process each (tiny networks scale far better across processes than across
intra-op threads). ``workers <= 1`` runs everything in this process, in order — what tests use. Each job is
``fn(*args)`` with picklable arguments (pass configs as plain containers); results keep the job order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor


def _init_worker(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def map_jobs(fn: Callable, jobs: Sequence[tuple], workers: int = 1, threads_per_worker: int = 1) -> list:
    """``[fn(*job) for job in jobs]``, with up to ``workers`` spawned processes."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(threads_per_worker,),
    ) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]
