"""``@buildable``: marks a project function that a stored config may name as a ``_target_``.

A checkpoint stores the resolved config of its run, and :func:`shared.methods.registry.module_from_checkpoint`
rebuilds the module from it. Naming a callable in a file must never run arbitrary code, so only an allow-list
may be instantiated from a loaded file: the project's ``nn.Module`` / schedule / dataset classes, known
optimisers and LR schedulers, and the builder functions marked here (network factories such as
``video_unet``). A function that writes files or runs commands is never marked.
"""
from __future__ import annotations

from collections.abc import Callable

BUILDABLE_ATTR = "__vdp_buildable__"


def buildable(fn: Callable) -> Callable:
    setattr(fn, BUILDABLE_ATTR, True)
    return fn


def is_buildable(obj) -> bool:
    return bool(getattr(obj, BUILDABLE_ATTR, False))
