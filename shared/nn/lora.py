"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1).

A frozen weight W0 is adapted as ``W = W0 + (alpha / r) · B A`` with ``A ∈ R^{r×in}`` (random,
Kaiming-uniform) and ``B ∈ R^{out×r}`` initialised to **zero**, so an injected model equals its base at
initialisation; only A and B train. For convolutions ``A`` is a conv with the base's kernel, stride,
padding and dilation into ``r`` channels and ``B`` a 1×1 conv (LoCon / peft's Conv2d LoRA), so
``ΔW = B · A`` is again a conv kernel and can be merged exactly (Sec. 4.1: "no additional inference
latency").

Injection keeps every base parameter's name: :class:`LoRALinear` / :class:`LoRAConv2d` *are* an
``nn.Linear`` / ``nn.Conv2d`` holding the original ``weight`` / ``bias`` Parameters (shared, not copied)
plus ``lora_A`` / ``lora_B`` (the loralib naming of the paper's code), so base checkpoints still match
by name and ``lora_state_dict`` holds only the ``*.lora_A`` / ``*.lora_B`` entries.

API: :func:`inject_lora`, :func:`lora_parameters`, :func:`mark_only_lora_trainable`, :func:`merge_lora`,
:func:`unmerge_lora`, :func:`remove_lora`, :func:`set_lora_scale`, :func:`lora_state_dict`,
:func:`load_lora_state_dict`, :func:`save_lora` / :func:`load_lora` (safetensors with rank/alpha metadata).
Build any EMA copy *after* injecting (an EMA built before does not have the LoRA parameters).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoRALinear",
    "LoRAConv2d",
    "inject_lora",
    "lora_parameters",
    "lora_modules",
    "mark_only_lora_trainable",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "set_lora_scale",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_lora",
    "load_lora",
]


class LoRALayer:
    """Mixin with the shared LoRA state: rank, alpha, scale, dropout, merged flag."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def _init_lora(self, rank: int, alpha: float | None, dropout: float):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank, self.alpha = int(rank), float(alpha if alpha is not None else rank)
        self.scaling = self.alpha / self.rank
        self.lora_scale = 1.0  # user multiplier of the adapter's strength (set_lora_scale)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._merged_delta: torch.Tensor | None = None
        self._orig_weight: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self, keep_original: bool = False) -> None:
        if self.merged:
            return
        delta = self.delta_weight().to(self.weight.dtype)
        self._orig_weight = self.weight.detach().clone() if keep_original else None
        self._merged_delta = delta
        self.weight.add_(delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        if self._orig_weight is not None:  # bit-exact restore
            self.weight.copy_(self._orig_weight)
        else:  # subtract the delta that was added (exact up to rounding)
            self.weight.sub_(self._merged_delta)
        self._orig_weight = self._merged_delta = None
        self.merged = False


class LoRALinear(nn.Linear, LoRALayer):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names and storage unchanged
        self._init_lora(rank, alpha, dropout)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * (self.scaling * self.lora_scale)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        h = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return out + h * (self.scaling * self.lora_scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


class LoRAConv2d(nn.Conv2d, LoRALayer):
    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None, dropout: float = 0.0):
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("LoRA supports Conv2d with groups=1 and zero padding only")
        nn.Module.__init__(self)
        for attr in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "transposed",
            "output_padding",
            "groups",
            "padding_mode",
            "_reversed_padding_repeated_twice",
        ):
            setattr(self, attr, getattr(base, attr))
        self.weight, self.bias = base.weight, base.bias
        self._init_lora(rank, alpha, dropout)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_channels, *self.kernel_size, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_channels, self.rank, 1, 1, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        # (out, r) @ (r, in·kh·kw) → (out, in, kh, kw): the 1×1 conv B after the k×k conv A, as one kernel
        d = self.lora_B.flatten(1) @ self.lora_A.flatten(1)
        return d.view_as(self.weight) * (self.scaling * self.lora_scale)

    def forward(self, x):
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if self.merged:
            return out
        h = F.conv2d(self.lora_dropout(x), self.lora_A, None, self.stride, self.padding, self.dilation)
        return out + F.conv2d(h, self.lora_B) * (self.scaling * self.lora_scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


Target = Iterable[str] | str | Callable[[str, nn.Module], bool] | None


def _matcher(target: Target) -> Callable[[str, nn.Module], bool]:
    if target is None:
        return lambda name, m: True
    if callable(target):
        return target
    if isinstance(target, str):  # a regular expression searched in the dotted module name
        rx = re.compile(target)
        return lambda name, m: rx.search(name) is not None
    names = list(target)  # module names, matched as whole trailing dotted components
    return lambda name, m: any(name == t or name.endswith("." + t) for t in names)


def inject_lora(
    model: nn.Module,
    target: Target = None,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> list[str]:
    """Replace the matching ``nn.Linear`` / ``nn.Conv2d`` modules of ``model`` by LoRA layers, in place.

    ``target``: a list of module names (``"to_q"`` matches every ``….to_q``), a regex string searched in the
    dotted name, a predicate ``(name, module) -> bool``, or None (every Linear/Conv2d). Only exact
    ``nn.Linear`` / ``nn.Conv2d`` (groups=1) are adapted; modules already adapted are left alone.
    ``alpha`` defaults to ``rank`` (scale 1). ``freeze_base`` freezes every non-LoRA parameter of the model.
    Returns the names of the adapted modules; raises when nothing matched.
    """
    match = _matcher(target)
    chosen = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in (nn.Linear, nn.Conv2d) and (type(m) is nn.Linear or m.groups == 1) and match(name, m)
    ]
    if not chosen:
        raise ValueError(f"inject_lora: no nn.Linear / nn.Conv2d module matched target {target!r}")
    for name, m in chosen:
        new = (
            LoRALinear(m, rank, alpha, dropout)
            if type(m) is nn.Linear
            else LoRAConv2d(m, rank, alpha, dropout)
        )
        new.train(m.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if freeze_base:
        mark_only_lora_trainable(model)
    return [n for n, _ in chosen]


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in lora_modules(model) for p in (m.lora_A, m.lora_B)]


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the LoRA factors (which are made trainable)."""
    model.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)


def merge_lora(model: nn.Module, keep_original: bool = False) -> nn.Module:
    """Fold ``scale · B A`` into each adapted weight (no extra inference cost). ``keep_original`` keeps a
    copy of each base weight so :func:`unmerge_lora` restores it bit-exactly (else it subtracts the delta)."""
    for _, m in lora_modules(model):
        m.merge(keep_original)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for _, m in lora_modules(model):
        m.unmerge()
    return model


def remove_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Turn LoRA layers back into plain ``nn.Linear`` / ``nn.Conv2d`` (merging the adapter first if asked)."""
    for name, m in lora_modules(model):
        if merge:
            m.merge()
        else:
            m.unmerge()
        if isinstance(m, LoRALinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        else:
            plain = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                bias=m.bias is not None,
                device="meta",
            )
        plain.weight, plain.bias = m.weight, m.bias
        plain.train(m.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    return model


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """Multiply every adapter's contribution by ``scale`` (0 = base model, 1 = as trained). Unmerged only."""
    for name, m in lora_modules(model):
        if m.merged:
            raise RuntimeError(f"set_lora_scale: {name} is merged; unmerge first")
        m.lora_scale = float(scale)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA factors, under the model's own state-dict names (``<module>.lora_A`` / ``.lora_B``)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load LoRA factors into an injected model; one-line error naming missing/unexpected/mismatched keys."""
    from shared.nn.weights import CheckpointError

    own = lora_state_dict(model)
    if not own:
        raise CheckpointError("load_lora_state_dict: the model has no LoRA layers (call inject_lora first)")
    merged = [n for n, m in lora_modules(model) if m.merged]
    if merged:
        raise CheckpointError(
            f"load_lora_state_dict: {len(merged)} LoRA layer(s) are merged, e.g. {merged[0]}; unmerge first"
        )
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"LoRA weights: shape mismatch for {len(bad)} key(s), e.g. {k}: "
            f"file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"LoRA weights: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Write the LoRA factors as safetensors with ``rank`` / ``alpha`` per layer in the metadata."""
    import json

    from safetensors.torch import save_file

    meta = {n: {"rank": m.rank, "alpha": m.alpha} for n, m in lora_modules(model)}
    state = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    save_file(state, str(path), metadata={"lora": json.dumps(meta)})


def load_lora(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Read a :func:`save_lora` file into an injected model (checks ranks and alphas match)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from shared.nn.weights import CheckpointError

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora", "{}"))
    for n, m in lora_modules(model):
        if n in meta and float(meta[n]["alpha"]) != m.alpha:
            raise CheckpointError(f"LoRA file {path}: {n} has alpha {meta[n]['alpha']}, model has {m.alpha}")
    load_lora_state_dict(model, load_file(str(path)), strict)
