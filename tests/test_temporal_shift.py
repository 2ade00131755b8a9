"""Latent-Shift's temporal shift (shared/nn/temporal_shift.py): the operation, zero parameters, and shift 0 (or a
single frame) equal to the image model exactly."""
from __future__ import annotations

import pytest
import torch

from shared.nn.temporal_shift import TemporalShift, add_temporal_shift, shifted_blocks, temporal_shift
from shared.nn.unet import UNet


def test_shift_moves_the_stated_channels_one_frame_with_zero_ends():
    T, C = 4, 8
    h = torch.arange(T * C, dtype=torch.float32).view(T, C, 1, 1) + 1   # one clip, value = 1 + t*C + c
    out = temporal_shift(h, T, 0.25)   # fold 2: channels 0-1 forward, 2-3 backward, 4-7 stay
    for t in range(T):
        for c in range(C):
            if c < 2:
                want = h[t - 1, c] if t > 0 else 0
            elif c < 4:
                want = h[t + 1, c] if t < T - 1 else 0
            else:
                want = h[t, c]
            assert float(out[t, c]) == float(want)
    assert torch.equal(temporal_shift(h, 1, 0.25), h) and torch.equal(temporal_shift(h, T, 0.0), h)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 0.5\]"):
        TemporalShift(0.75)


def _net():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), norm_groups=4)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_shift_zero_equals_the_image_model_and_adds_no_parameters():
    image = _net()
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([3.0, 600.0])
    with torch.no_grad():
        per_frame = torch.stack([image(x[:, :, f], t) for f in range(4)], 2)
        keys = list(image.state_dict())
        zero = add_temporal_shift(_net(), 0.0)
        torch.testing.assert_close(zero(x, t), per_frame, rtol=0, atol=1e-6)
        shifted = add_temporal_shift(_net(), 0.25)
        assert shifted_blocks(shifted) == 8 and list(shifted.state_dict()) == keys
        assert sum(p.numel() for p in shifted.parameters()) == sum(p.numel() for p in image.parameters())
        out = shifted(x, t)
        assert (out - per_frame).abs().max() > 1e-3                          # frames now see their neighbours
        torch.testing.assert_close(shifted(x[:, :, :1], t)[:, :, 0], image(x[:, :, 0], t), rtol=0, atol=1e-6)
        torch.testing.assert_close(shifted(x[:, :, 0], t), image(x[:, :, 0], t), rtol=0, atol=0)   # images


def test_shifted_net_trains_with_and_without_checkpointing():
    for ckpt in (False, True):
        net = add_temporal_shift(UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1,),
                                      num_res_blocks=1, attention_resolutions=(), norm_groups=4,
                                      use_checkpoint=ckpt), 0.25).train()
        x = torch.randn(1, 1, 3, 8, 8, requires_grad=True)
        net(x, torch.tensor([5.0])).pow(2).sum().backward()
        # frame 0's input influences frame 1's output only through the shift: a gradient reaches it
        assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="no residual blocks"):
        add_temporal_shift(torch.nn.Linear(2, 2))
