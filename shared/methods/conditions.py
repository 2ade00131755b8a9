"""The conditioning seam: what a module conditions its network on, declared once.

A module declares its conditions — one :class:`Condition` per batch key — and gets the network's keyword
arguments from :meth:`Conditions.network_kwargs` for training (each condition dropped to its null value with its
own probability, for classifier-free guidance) and from :meth:`Conditions.guidance_pair` for sampling (the
conditional keywords and the unconditional ones, where every *guided* condition is at its null value). The loss
and the sampling loop never name a condition, so a new one (a reference image, a pose sequence, audio features,
depth, an image embedding, micro-conditioning) needs no override of either.

Each condition says

* ``key`` — where it is in a batch (and in ``sample(cond={key: ...})``); ``kwarg`` — the network's keyword;
* ``encoder`` — an ``nn.Module`` (trained with the model unless frozen) or ``None`` (the value is passed as is);
* ``drop_prob`` — its own dropout probability (Ho & Salimans 2022: condition dropout trains the unconditional
  model jointly); ``null`` — its null value: ``"zeros"`` / a number for tensors, the null class for labels, the
  empty caption for text; ``drop_encoded`` applies the null after the encoder (zero *embeddings*, as SVD and
  Animate Anyone drop their CLIP image embedding) instead of before it;
* ``guided`` — whether classifier-free guidance moves away from it (pass-through structure such as VDM's
  ``frame_is_video`` is not guided and never dropped); ``optional`` — whether a batch may lack it;
* ``latent`` — an image-like condition a latent module encodes with its autoencoder, like ``x``.

Dropout draws one ``torch.rand(B)`` per condition with ``drop_prob > 0``, in declaration order, from the step's
generator — so a resumed run drops exactly what an uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Condition", "LabelCondition", "TextCondition", "TensorCondition", "LevelCondition", "PassThrough",
           "Conditions", "take", "cond_len", "KNOWN_KEYS"]

# Keys of ``sample(cond=...)`` that are not network inputs but observed parts of the sample itself: the sampling
# loop completes ``x`` where ``known`` is False given ``x_known`` where it is True (video extension, inpainting).
KNOWN_KEYS = ("x_known", "known")


def cond_len(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    return len(value)


def take(value: Any, i: int, j: int) -> Any:
    """Items ``i:j`` of a condition value (a tensor with the batch first, or a list)."""
    return value[i:j] if isinstance(value, torch.Tensor) else list(value)[i:j]


def _drop_mask(n: int, p: float, generator: torch.Generator | None, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=dev) < p).to(device)


class Condition(nn.Module):
    """One conditioning input (see the module docstring)."""

    def __init__(self, key: str, kwarg: str | None = None, drop_prob: float = 0.0, encoder: nn.Module | None = None,
                 null: str | float = "zeros", drop_encoded: bool = False, guided: bool = True,
                 optional: bool = False, latent: bool = False):
        super().__init__()
        p = float(drop_prob)
        if not (0.0 <= p <= 1.0) or math.isnan(p):
            raise ValueError(f"condition {key!r}: drop_prob must be in [0, 1], got {drop_prob!r}")
        if isinstance(null, str) and null not in ("zeros", "empty", "label"):
            raise ValueError(f"condition {key!r}: null must be 'zeros', a number, 'empty' or 'label', got {null!r}")
        self.key, self.kwarg = str(key), str(kwarg or key)
        self.drop_prob, self.null, self.drop_encoded = p, null, bool(drop_encoded)
        self.guided, self.optional, self.latent = bool(guided), bool(optional), bool(latent)
        self.encoder = encoder

    def extra_repr(self) -> str:
        return f"key={self.key!r}, kwarg={self.kwarg!r}, drop_prob={self.drop_prob}, guided={self.guided}"

    def bind(self, net: nn.Module) -> None:
        """Called once with the module's network (a label condition reads its null class here)."""

    # -- values
    def null_like(self, value: Any) -> Any:
        """The null value, batched like ``value`` (raw, or encoded when ``drop_encoded``)."""
        if self.null == "zeros":
            return torch.zeros_like(value)
        return torch.full_like(value, float(self.null))

    def where(self, drop: torch.Tensor, null: Any, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return torch.where(drop.reshape(-1, *([1] * (value.dim() - 1))), null, value)
        return [n if d else v for n, v, d in zip(null, value, drop.tolist())]

    def encode(self, value: Any) -> Any:
        return value if self.encoder is None else self.encoder(value)

    def prepare(self, value: Any, device) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    def network_value(self, value: Any, generator: torch.Generator | None = None, drop: bool = False,
                      device=None) -> Any:
        """The network's keyword value of a batch ``value``; with ``drop``, each item becomes the null value with
        probability ``drop_prob``."""
        value = self.prepare(value, device)
        if not (drop and self.drop_prob > 0):
            return self.encode(value)
        mask = _drop_mask(cond_len(value), self.drop_prob, generator, device)
        if self.drop_encoded:
            enc = self.encode(value)
            return self.where(mask, self.null_like(enc), enc)
        return self.encode(self.where(mask, self.null_like(value), value))

    def null_value(self, value: Any, device=None) -> Any:
        """The encoded null of a batch like ``value`` (the unconditional branch of guidance)."""
        value = self.prepare(value, device)
        if self.drop_encoded:
            return self.null_like(self.encode(value))
        return self.encode(self.null_like(value))


class TensorCondition(Condition):
    """A tensor condition (images, pose maps, audio features, depth, embeddings, micro-conditioning)."""


class LevelCondition(TensorCondition):
    """A tensor condition encoded at a *level of detail* — the encoder is called ``encoder(value, level)`` (Gen-1's
    structure level ``t_s``, Esser et al. 2023 Sec. 3.3: depth obscured more at higher levels,
    ``shared.nn.structure.StructureEncoder``). Training draws one level per item, uniformly in
    ``0..encoder.max_level``, from the step's generator after the dropout draw; sampling uses :attr:`level` (``None``:
    the encoder's own ``level``), set for a block of code with :meth:`at_level`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.encoder is None or not hasattr(self.encoder, "max_level"):
            raise ValueError(f"condition {self.key!r}: a LevelCondition needs an encoder with max_level "
                             "(e.g. shared.nn.structure.StructureEncoder)")
        self.level: int | None = None

    def at_level(self, level: int | None):
        """Context manager: sample at structure level ``level``."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            old, self.level = self.level, level
            try:
                yield self
            finally:
                self.level = old
        return ctx()

    def encode(self, value: Any, level=None) -> Any:
        return self.encoder(value, self.level if level is None else level)

    def network_value(self, value: Any, generator: torch.Generator | None = None, drop: bool = False,
                      device=None) -> Any:
        value = self.prepare(value, device)
        if not drop:
            return self.encode(value)
        n = cond_len(value)
        mask = _drop_mask(n, self.drop_prob, generator, device) if self.drop_prob > 0 else None
        dev = generator.device if generator is not None else device
        levels = torch.randint(0, int(self.encoder.max_level) + 1, (n,), generator=generator, device=dev).to(device)
        enc = self.encode(value, levels) if mask is None or self.drop_encoded else None
        if mask is None:
            return enc
        if self.drop_encoded:
            return self.where(mask, self.null_like(enc), enc)
        return self.encode(self.where(mask, self.null_like(value), value), levels)


class PassThrough(Condition):
    """Batch structure the network needs but guidance leaves alone (e.g. VDM's ``frame_is_video``)."""

    def __init__(self, key: str, kwarg: str | None = None, optional: bool = True):
        super().__init__(key, kwarg, 0.0, None, "zeros", False, guided=False, optional=optional)


class LabelCondition(Condition):
    """Class labels; the null is the network's extra class ``null_label`` (``num_classes``)."""

    def __init__(self, key: str = "y", kwarg: str | None = None, drop_prob: float = 0.0,
                 null_label: int | None = None, optional: bool = True):
        super().__init__(key, kwarg or "y", drop_prob, None, "label", False, True, optional)
        self.null_label = null_label

    def bind(self, net: nn.Module) -> None:
        if self.null_label is None:
            self.null_label = getattr(net, "null_label", None)
        if self.null_label is None:
            raise ValueError(f"label condition {self.key!r}: the network has no null_label (build it with "
                             "num_classes) and none was given")

    def null_like(self, value: torch.Tensor) -> torch.Tensor:
        return torch.full_like(value, int(self.null_label))

    def prepare(self, value, device):
        value = torch.as_tensor(value, device=device)
        if value.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"label condition {self.key!r}: labels must be integers, got {value.dtype}")
        return value.long()


class TextCondition(Condition):
    """Captions encoded by a text encoder (``shared.nn.text_encoder.TextConditioner``) into cross-attention
    ``context``; the null caption is ``""``."""

    def __init__(self, encoder: nn.Module, key: str = "caption", kwarg: str | None = None, drop_prob: float = 0.0,
                 optional: bool = False):
        super().__init__(key, kwarg or "context", drop_prob, encoder, "empty", False, True, optional)

    def null_like(self, value: Sequence[str]) -> list[str]:
        return [""] * len(value)

    def prepare(self, value, device):
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in value]


class Conditions(nn.ModuleDict):
    """The declared conditions of a module, in order, keyed by batch key (state-dict keys
    ``conditions.<key>.encoder.*``)."""

    def __init__(self, conditions: Mapping[str, Condition] | Sequence[Condition] | None = None):
        super().__init__()
        items = conditions.values() if isinstance(conditions, Mapping) else (conditions or [])
        for c in items:
            if not isinstance(c, Condition):
                raise TypeError(f"conditions must be Condition objects, got {type(c).__name__}")
            if c.key in self:
                raise ValueError(f"condition {c.key!r} is declared twice")
            self[c.key] = c
        kwargs = [c.kwarg for c in self.values()]
        dup = sorted({k for k in kwargs if kwargs.count(k) > 1})
        if dup:
            raise ValueError(f"two conditions feed the same network keyword {dup}")

    def bind(self, net: nn.Module) -> None:
        for c in self.values():
            c.bind(net)

    def _present(self, batch: Mapping, what: str):
        for c in self.values():
            if c.key in batch and batch[c.key] is not None:
                yield c, batch[c.key]
            elif not c.optional:
                raise ValueError(f"{what} has no {c.key!r}, a condition this module declares "
                                 f"(declared: {list(self.keys())})")

    def network_kwargs(self, batch: Mapping, generator: torch.Generator | None = None, drop: bool = False,
                       device=None) -> dict[str, Any]:
        """``condition(batch, generator, drop)``: the network's keyword arguments of a batch."""
        return {c.kwarg: c.network_value(v, generator, drop, device) for c, v in self._present(batch, "the batch")}

    def check_keys(self, cond: Mapping) -> None:
        unknown = sorted(set(cond) - set(list(self.keys())) - set(KNOWN_KEYS))
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; this module declares {list(self.keys()) or 'none'}")

    def guidance_pair(self, cond: Mapping, device=None, unconditional: bool = True
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(conditional, unconditional)`` keyword arguments for sampling: every guided condition present in
        ``cond`` at its null value in the second (only computed if ``unconditional``); pass-through conditions
        the same in both."""
        self.check_keys(cond)
        cond = {k: v for k, v in cond.items() if k not in KNOWN_KEYS}
        c_kw, u_kw = {}, {}
        for c, v in self._present(cond, "sample(cond=...)"):
            c_kw[c.kwarg] = c.network_value(v, device=device)
            if unconditional:
                u_kw[c.kwarg] = c.null_value(v, device) if c.guided else c_kw[c.kwarg]
        return c_kw, u_kw

    def guided_kwargs(self) -> set[str]:
        return {c.kwarg for c in self.values() if c.guided}
