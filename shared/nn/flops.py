"""Forward-pass compute of a network, measured with ``torch.utils.flop_counter`` (no hand-kept tables).

``FlopCounterMode`` counts **2 FLOPs per multiply-add** (matmuls, convolutions, SDPA) and ignores element-wise
ops (norms, activations, softmax). Papers often count a multiply-add as *one* FLOP: DiT's "Gflops" (Peebles &
Xie 2023, Table 4; fvcore's convention) are multiply-adds, e.g. DiT-XL/2 at 32x32x4 latents ≈ 12·d²·T + 2·T²·d
multiply-adds per block. :func:`gflops` returns both conventions so a table can be compared like with like.

The count runs on the ``meta`` device by default (no memory, no compute: DiT-XL/2 in well under a second).
That is
also the *correct* place to count: on CPU tensors, torch 2.14's ``F.scaled_dot_product_attention`` dispatches
to
``_scaled_dot_product_flash_attention_for_cpu``, which ``FlopCounterMode`` has no formula for, so the
attention
matmuls (``2 T^2 d`` multiply-adds per layer) would silently be dropped; on ``meta`` SDPA takes the math path
whose matmuls are counted. ``tests/test_dit.py`` holds the count against a hand count.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(net: nn.Module, *args, **kwargs) -> int:
    """FLOPs (2 per multiply-add) of one ``net(*args, **kwargs)`` call, inference mode."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*args, **kwargs)
    return int(counter.get_total_flops())


def flops_by_module(net: nn.Module, *args, depth: int = 2, **kwargs) -> dict[str, int]:
    """Per-module FLOPs (module names down to ``depth`` levels, as FlopCounterMode groups them)."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=depth) as counter:
        net(*args, **kwargs)
    return {name: int(sum(v.values())) for name, v in counter.get_flop_counts().items()}


def gflops(net: nn.Module, *args, on_meta: bool = True, **kwargs) -> dict[str, float]:
    """``{"gflops": 2-per-MAC FLOPs / 1e9, "gmacs": multiply-adds / 1e9}`` of one forward pass.

    ``on_meta=True`` (default) copies the network to the meta device (and the inputs with it): large models
    cost
    nothing and SDPA is counted (see the module docstring).
    """
    if on_meta:
        net = copy.deepcopy(net).to("meta") if any(p.device.type != "meta" for p in net.parameters()) else net
        args = tuple(a.to("meta") if torch.is_tensor(a) else a for a in args)
        kwargs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in kwargs.items()}
    flops = count_flops(net, *args, **kwargs)
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9}


def dit_inputs(net: nn.Module, batch: int = 1, device="cpu") -> tuple[torch.Tensor, ...]:
    """One-sample ``(x, t, y)`` input of a DiT-like net (``input_size``, ``in_channels``, ``num_classes``)."""
    x = torch.zeros(batch, net.in_channels, net.input_size, net.input_size, device=device)
    t = torch.zeros(batch, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if getattr(net, "num_classes", None) else None
    return x, t, y
