"""Shared core of video-diffusion-papers.

Importing ``shared`` pins the CPU instruction set torch computes with (see :mod:`shared.engine.isa`): on an x86-64
host the vectorised ATen kernels, oneDNN and MKL run their AVX2 code even where the processor has AVX-512, so a
claim re-run on another machine reproduces the committed numbers bit for bit (AVX2 and AVX-512 kernels round
differently). ``VDP_CPU_ISA=native`` turns the pin off. It takes effect only if nothing ran a torch kernel before
``shared`` was imported; :func:`shared.engine.isa.isa_state` reports what the process actually uses.
"""
import os as _os
import platform as _platform

# The ISA pin: environment variables torch's CPU libraries read when they first run (not at ``import torch``).
ISA_PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
X86 = _platform.machine().lower() in ("x86_64", "amd64")   # the pin applies to x86-64 hosts only

if X86 and _os.environ.get("VDP_CPU_ISA", "avx2") != "native":
    for _key, _value in ISA_PIN.items():
        _os.environ.setdefault(_key, _value)
