"""Which CPU instruction set torch computes with, and whether it is the project's pin.

Torch's CPU kernels pick their code by the processor: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's
convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's GEMM (``MKL_CBWR``). AVX2 and AVX-512 code round differently, so
the same claim, code and seed gives different bits on an AVX-512 host than on an AVX2 one — and the small
differences grow through training (measured: the Latent-Shift MovingDigits claim's FVD_judge 163.137 here vs
163.210 committed from an AVX2 host, at the same revision). ``import shared`` therefore pins all three to AVX2,
which every x86-64 host of the last decade has (``ISA_PIN`` in ``shared/__init__.py``); ``VDP_CPU_ISA=native``
opts out. A publishing run must compute with the pin (:func:`isa_problem`), and every results file records
:func:`isa_state`.
"""
from __future__ import annotations

import os

from shared import ISA_PIN, X86

CHOICES = ("avx2", "native")


def isa_state() -> dict:
    """``cpu_capability`` (what ATen's kernels use: AVX2, AVX512, DEFAULT, ...) and ``isa_pin`` (``avx2`` when the
    three pin variables hold the project's values, ``native`` when unpinned, else the variables as set)."""
    import torch

    env = {k: os.environ.get(k) for k in ISA_PIN}
    if env == ISA_PIN:
        pin = "avx2"
    elif all(v is None for v in env.values()):
        pin = "native"
    else:
        pin = {k: v for k, v in env.items() if v is not None}
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "isa_pin": pin}


def isa_problem() -> str | None:
    """None when this process computes with the pinned AVX2 code (or the host is not x86-64, where nothing is
    pinned); otherwise one line saying why not and what to do."""
    if not X86:
        return None
    wanted = os.environ.get("VDP_CPU_ISA", "avx2")
    if wanted not in CHOICES:
        return f"VDP_CPU_ISA={wanted!r}: expected one of {', '.join(CHOICES)} (avx2 is the default)"
    if wanted == "native":
        return ("VDP_CPU_ISA=native: torch computes with this processor's own instruction set, whose rounding differs "
                "between hosts; unset it for results other machines reproduce bit for bit")
    state = isa_state()
    if state["isa_pin"] != "avx2":
        return (f"CPU instruction-set variables {state['isa_pin']} differ from the pin {ISA_PIN}: unset them for "
                "results other machines reproduce bit for bit")
    if state["cpu_capability"] != "AVX2":
        return (f"torch computes with {state['cpu_capability']}, not the pinned AVX2: a torch kernel ran before "
                "`import shared` (import it first), or this processor lacks AVX2")
    return None
