"""Softmax splatting: differentiable forward warping (Niklaus & Liu, Softmax Splatting for Video Frame
Interpolation, CVPR 2020), in pure torch.

Every source pixel ``p`` of a feature map ``I`` is sent to ``p + F(p)`` and spread over the four
surrounding target pixels with bilinear weights ``b``. Where several source pixels land on the same
target, an importance map ``Z`` decides who wins (Sec. 3, Eq. 6):

    out(q) = sum_p exp(Z(p)) b(q, p + F(p)) I(p)  /  sum_p exp(Z(p)) b(q, p + F(p))

so a large ``Z`` (nearer, or faster-moving: GID Sec. 5 uses the mean motion magnitude, see
`shared.data.spectral.motion_importance`) dominates and ``Z -> -inf`` of the others gives a z-buffer.
Target pixels that nothing lands on are holes: the output is 0 there and the returned weight map is 0.

Implemented with ``scatter_add`` (no custom CUDA kernel), so it runs on any device and is differentiable
with respect to the features, the flow (through the bilinear weights) and the importance. Flow channels
are ``(dx, dy)`` in pixels (x = columns), the optical-flow convention.
"""

from __future__ import annotations

import torch

__all__ = ["softmax_splat"]


def softmax_splat(
    x: torch.Tensor,
    flow: torch.Tensor,
    importance: torch.Tensor | None = None,
    return_weight: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Forward-warp ``x`` (B, C, H, W) by ``flow`` (B, 2, H, W) with softmax weights ``exp(importance)``.

    Args:
        x: features to move.
        flow: per-pixel displacement ``(dx, dy)`` in pixels from the source to the target position.
        importance: ``Z`` (B, 1, H, W); ``None`` means equal weights (average splatting).
        return_weight: also return the splatted weight ``sum_p exp(Z(p) - max Z) b(q, p + F(p))``
            (B, 1, H, W): 0 at holes. (The per-image max of ``Z`` is subtracted for stability; it
            cancels in the ratio.)
    """
    if x.ndim != 4:
        raise ValueError(f"softmax_splat: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if flow.shape != (B, 2, H, W):
        raise ValueError(f"softmax_splat: flow must be (B, 2, H, W) = {(B, 2, H, W)}, got {tuple(flow.shape)}")
    if importance is not None and importance.shape != (B, 1, H, W):
        raise ValueError(
            f"softmax_splat: importance must be (B, 1, H, W) = {(B, 1, H, W)}, got {tuple(importance.shape)}"
        )
    if not bool(torch.isfinite(flow).all()):
        raise ValueError("softmax_splat: flow has non-finite values")
    if importance is None:
        w = torch.ones(B, 1, H, W, dtype=x.dtype, device=x.device)
    else:
        z = importance - importance.detach().amax(dim=(1, 2, 3), keepdim=True)
        w = torch.exp(z)
    src = torch.cat([x * w, w], dim=1).reshape(B, C + 1, H * W)  # splat the numerator and the denominator at once

    gy, gx = torch.meshgrid(
        torch.arange(H, device=x.device, dtype=flow.dtype),
        torch.arange(W, device=x.device, dtype=flow.dtype),
        indexing="ij",
    )
    tx = (gx + flow[:, 0]).reshape(B, 1, H * W)
    ty = (gy + flow[:, 1]).reshape(B, 1, H * W)
    x0, y0 = torch.floor(tx), torch.floor(ty)
    fx, fy = tx - x0, ty - y0
    x0, y0 = x0.long(), y0.long()

    out = torch.zeros(B, C + 1, H * W, dtype=src.dtype, device=x.device)
    for dx, dy, bw in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).expand(B, C + 1, H * W)
        out = out.scatter_add(2, idx, src * (bw * inside).to(src.dtype))
    out = out.reshape(B, C + 1, H, W)
    num, den = out[:, :C], out[:, C:]
    warped = num / torch.where(den > 0, den, torch.ones_like(den))
    return (warped, den) if return_weight else warped
