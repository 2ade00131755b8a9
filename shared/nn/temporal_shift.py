"""The parameter-free temporal shift of Latent-Shift (An et al. 2023, Sec. 3.2), after TSM (Lin et al. 2019).

A U-Net that runs a video frame by frame (time folded into the batch, ``ctx["num_frames"] = T``) is made
temporal without a single new parameter: in every residual block, before the first convolution, one portion of
the feature channels is shifted one frame *forward* in time (frame ``t`` sees frame ``t - 1``'s values), another
one frame *backward* (frame ``t`` sees frame ``t + 1``'s), the rest stays; the ends are zero-padded. The 2D
convolution that follows then mixes the previous, current and next frame — a temporal receptive field that grows
with depth. Shifting in the residual branch (TSM's "residual shift") keeps the identity path of every block
spatial, so the image model's features survive; the model is then fine-tuned on videos (Latent-Shift fine-tunes
the whole U-Net). With a shift fraction of 0, or a single frame, the network is exactly the image model.

* :func:`temporal_shift` — the operation on ``(B*T, C, H, W)``;
* :class:`TemporalShift` — a callable holding the fraction, set on :class:`shared.nn.layers.ResBlock` (its
  ``temporal_shift`` hook); it is not an ``nn.Module`` and has no state, so state dicts do not change;
* :func:`add_temporal_shift` / :func:`latent_shift_unet` — put it into every residual block of a U-Net.
"""
from __future__ import annotations

import torch
from torch import nn

from shared.nn.build import buildable
from shared.nn.layers import ResBlock

__all__ = ["temporal_shift", "TemporalShift", "add_temporal_shift", "shifted_blocks", "latent_shift_unet"]


def _fold(channels: int, fraction: float) -> int:
    return int(channels * float(fraction))


def temporal_shift(h: torch.Tensor, frames: int, fraction: float) -> torch.Tensor:
    """``h`` (B*T, C, H, W) with the first ``fold = int(C * fraction)`` channels shifted forward in time and the next
    ``fold`` backward (zero at the clip's ends), the rest unchanged (TSM, Lin et al. 2019, Fig. 1b)."""
    if not 0.0 <= float(fraction) <= 0.5:
        raise ValueError(f"temporal shift fraction must lie in [0, 0.5] (each direction), got {fraction!r}")
    fold = _fold(h.shape[1], fraction)
    if frames <= 1 or fold == 0:
        return h
    if h.shape[0] % frames:
        raise ValueError(f"temporal shift: batch {h.shape[0]} is not a multiple of num_frames={frames}")
    v = h.unflatten(0, (-1, frames))  # (B, T, C, H, W)
    out = v.clone()
    out[:, :, :fold] = 0
    out[:, 1:, :fold] = v[:, :-1, :fold]                        # forward: frame t gets frame t-1
    out[:, :, fold:2 * fold] = 0
    out[:, :-1, fold:2 * fold] = v[:, 1:, fold:2 * fold]        # backward: frame t gets frame t+1
    return out.flatten(0, 1)


class TemporalShift:
    """``f(h, frames)`` = :func:`temporal_shift` with a fixed ``fraction`` per direction (no parameters)."""

    def __init__(self, fraction: float = 0.125):
        if not 0.0 <= float(fraction) <= 0.5:
            raise ValueError(f"temporal shift fraction must lie in [0, 0.5] (each direction), got {fraction!r}")
        self.fraction = float(fraction)

    def __call__(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        return temporal_shift(h, frames, self.fraction)

    def __repr__(self) -> str:
        return f"TemporalShift(fraction={self.fraction})"


def add_temporal_shift(net: nn.Module, fraction: float = 0.125) -> nn.Module:
    """Give every residual block of ``net`` a :class:`TemporalShift` (in place; returns ``net``); the parameters,
    their names and the state dict are unchanged."""
    shift = TemporalShift(fraction)
    n = 0
    for m in net.modules():
        if isinstance(m, ResBlock):
            m.temporal_shift = shift
            n += 1
    if n == 0:
        raise ValueError("add_temporal_shift: the network has no residual blocks")
    return net


def shifted_blocks(net: nn.Module) -> int:
    """How many residual blocks of ``net`` carry a temporal shift."""
    return sum(1 for m in net.modules() if isinstance(m, ResBlock) and m.temporal_shift is not None)


@buildable
def latent_shift_unet(net: nn.Module, fraction: float = 0.125, weights: str | None = None) -> nn.Module:
    """An image U-Net (built by the config, optionally loaded from ``weights``: a safetensors/torch state dict of
    the bare net, loaded strictly) with a temporal shift in every residual block."""
    if weights:
        from shared.nn.weights import load_state_dict_strict, read_state_dict

        load_state_dict_strict(net, read_state_dict(weights), what=f"image U-Net weights {weights}")
    return add_temporal_shift(net, fraction)
