"""Long videos from a video model trained on short clips: window fusion with noise rescheduling, and
autoregressive extension. Everything here wraps a denoiser ``denoise(x_t, t) -> (x0_hat, eps_hat)`` (or a
"complete this window" callable), so it works for every video backbone of the project.

* :func:`window_starts` / :func:`window_weights` — the sliding windows (length ``window`` = the model's training
  length, step ``stride``; the last window ends at the last frame) and the per-frame weights inside a window:
  ``"flat"`` or ``"pyramid"`` (``1, 2, ..., 2, 1``: FreeNoise, Qiu et al., ICLR 2024, Sec. 3.3, Eq. 9).
* :func:`fused_window_denoiser` — at every step the model denoises each window of the long sample and every frame
  takes the weighted mean of its windows' predictions (``x0_hat`` and ``eps_hat``) — FreeNoise's window fusion,
  here on the denoiser's outputs rather than inside the temporal attention layers, so that any backbone runs it
  (MultiDiffusion-style fusion along time). With one window it *is* the denoiser.
* :func:`freenoise_noise` — FreeNoise's noise rescheduling (Sec. 3.2): the initial noise of frames beyond the
  first window repeats the noise of earlier frames, shuffled within blocks of ``stride`` frames, so that every
  window starts from noise the model could have drawn for one clip and distant windows stay correlated (long-range
  content is kept). Same frame order for the whole batch, as the official code.
* :func:`autoregressive_extend` — LVDM-style autoregressive extension (He et al. 2022, Sec. 3.3): each new window
  is generated conditioned on the last ``context`` frames of the video so far, through any "complete the unknown
  frames of this window" callable (the method layer's ``module.sample(cond={"x_known", "known"})`` with
  replacement or reconstruction guidance, :mod:`shared.diffusion.conditioning`).
* :func:`concatenate_windows` — the naive baseline: independent clips side by side.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["window_starts", "window_weights", "fused_window_denoiser", "freenoise_noise", "autoregressive_extend",
           "concatenate_windows", "WEIGHTINGS"]

WEIGHTINGS = ("flat", "pyramid")
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _check_window(total: int, window: int, stride: int) -> None:
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave frames no window covers")
    if total < window:
        raise ValueError(f"the video ({total} frames) is shorter than the model's window ({window} frames)")


def window_starts(total: int, window: int, stride: int) -> list[int]:
    """First frames of the windows ``[s, s + window)``: ``0, stride, 2 stride, ...``, plus ``total - window`` if the
    last one does not end at the last frame."""
    _check_window(total, window, stride)
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def window_weights(window: int, weighting: str = "pyramid") -> torch.Tensor:
    """Per-frame fusion weights inside a window: ``flat`` (all 1) or ``pyramid`` (``1, 2, ..., 2, 1``)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "flat":
        return torch.ones(window)
    i = torch.arange(window, dtype=torch.float32)
    return torch.minimum(i + 1, window - i)


def fused_window_denoiser(denoise: Denoiser, window: int, stride: int, weighting: str = "pyramid") -> Denoiser:
    """A denoiser of long videos ``(B, C, N, H, W)`` built from one of ``window``-frame clips (module docstring)."""
    w = window_weights(window, weighting)

    def den(x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.shape[2]
        starts = window_starts(total, window, stride)
        if len(starts) == 1:
            return denoise(x, t)
        x0 = torch.zeros_like(x)
        eps = torch.zeros_like(x)
        norm = torch.zeros(total, dtype=x.dtype, device=x.device)
        wv = w.to(x.device, x.dtype)
        for s in starts:
            a, e = denoise(x[:, :, s:s + window], t)
            ww = wv.view(1, 1, -1, 1, 1)
            x0[:, :, s:s + window] += ww * a
            eps[:, :, s:s + window] += ww * e
            norm[s:s + window] += wv
        norm = norm.view(1, 1, -1, 1, 1)
        return x0 / norm, eps / norm

    if hasattr(denoise, "schedule"):
        den.schedule = denoise.schedule
    return den


def freenoise_noise(shape, window: int, stride: int, generator: torch.Generator | None = None, device=None,
                    dtype: torch.dtype = torch.float32, base: torch.Tensor | None = None) -> torch.Tensor:
    """Initial noise ``(B, C, N, H, W)`` rescheduled as FreeNoise (module docstring): frames ``[0, window)`` i.i.d.
    (or ``base``'s), then for ``i = window, window + stride, ...`` the frames ``[i, i + stride)`` are the frames
    ``[i - window, i - window + stride)`` in a random order."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"freenoise_noise needs a video shape (B, C, N, H, W), got {shape}")
    total = shape[2]
    _check_window(total, window, stride)
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype) if base is None else base.clone()
    for i in range(window, total, stride):
        lo = i - window
        n = min(stride, total - i)
        perm = torch.randperm(stride, generator=generator)[:n] + lo
        z[:, :, i:i + n] = z[:, :, perm.to(z.device)]
    return z


def autoregressive_extend(complete: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], first: torch.Tensor,
                          total: int, context: int) -> torch.Tensor:
    """Extend ``first`` (B, C, W, H, W') window by window to ``total`` frames: each new window holds the last
    ``context`` frames of the video so far (known) and ``W - context`` new ones, drawn by
    ``complete(x_known, known) -> window`` (``known``: bool mask, True on the given frames)."""
    window = first.shape[2]
    if not 0 < context < window:
        raise ValueError(f"context must lie in (0, window={window}), got {context}")
    if total < window:
        raise ValueError(f"total {total} is shorter than the first window ({window} frames)")
    video = first
    known = torch.zeros((1, 1, window, 1, 1), dtype=torch.bool, device=first.device)
    known[:, :, :context] = True
    known = known.expand(first.shape[0], first.shape[1], -1, first.shape[3], first.shape[4])
    while video.shape[2] < total:
        x_known = torch.zeros_like(first)
        x_known[:, :, :context] = video[:, :, -context:]
        win = complete(x_known, known)
        video = torch.cat([video, win[:, :, context:]], dim=2)
    return video[:, :, :total]


def concatenate_windows(sample_window: Callable[[int], torch.Tensor], total: int, window: int) -> torch.Tensor:
    """The naive long video: ``ceil(total / window)`` independent clips ``sample_window(k)`` side by side, cut to
    ``total`` frames."""
    clips = [sample_window(k) for k in range(-(-total // window))]
    return torch.cat(clips, dim=2)[:, :, :total]
