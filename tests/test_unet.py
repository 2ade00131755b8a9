"""The DDPM/ADM U-Net: parameter counts, shapes, conditioning, and video = frame-by-frame images."""
from __future__ import annotations

import pytest
import torch

from shared.nn.ema import EMA
from shared.nn.unet import UNet, count_parameters


def tiny(**kw):
    cfg = dict(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), norm_groups=8)
    cfg.update(kw)
    return UNet(**cfg)


def test_ddpm_cifar10_unet_has_35_7m_parameters():
    m = UNet(3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
             attention_resolutions=(16,), dropout=0.1)
    n = count_parameters(m)
    print(f"DDPM CIFAR-10 U-Net parameters: {n:,}")
    assert n == 35_746_307  # Ho et al. report 35.7M; diffusers' google/ddpm-cifar10-32 has the same count


def test_shapes_zero_init_output_and_time_dependence():
    m = tiny()
    x = torch.randn(3, 1, 8, 8)
    out = m(x, torch.tensor([1.0, 10.0, 500.0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # output conv is zero-initialised (DDPM)
    for p in m.parameters():  # zero-initialised convs hide the time input at init; randomise them
        torch.nn.init.normal_(p, std=0.05)
    a, b = m(x[:1], torch.tensor([1.0])), m(x[:1], torch.tensor([900.0]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="expected"):
        m(torch.randn(2, 3, 8, 8), torch.zeros(2))


def test_video_input_is_run_frame_by_frame():
    torch.manual_seed(0)
    m = tiny()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    v = torch.randn(2, 1, 4, 8, 8)
    t = torch.tensor([3.0, 700.0])
    out = m(v, t)
    assert out.shape == v.shape
    per_frame = torch.stack([m(v[:, :, i], t) for i in range(4)], dim=2)
    assert torch.allclose(out, per_frame, atol=1e-5)


def test_class_conditioning_and_null_label():
    m = tiny(num_classes=10)
    assert m.null_label == 10
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 5.0])
    a = m(x, t, y=torch.tensor([1, 1]))
    b = m(x, t, y=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    assert torch.allclose(m(x, t), m(x, t, y=torch.tensor([10, 10])))  # no label = the null label
    with pytest.raises(ValueError, match="labels must lie"):
        m(x, t, y=torch.tensor([11, 0]))
    with pytest.raises(ValueError, match="without num_classes"):
        tiny()(x, t, y=torch.tensor([1, 1]))


def test_gradient_checkpointing_leaves_outputs_and_grads_unchanged():
    torch.manual_seed(0)
    a = tiny()
    b = tiny(use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.05)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    a(x, t).square().sum().backward()
    b(x, t).square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_ema_update_is_exponential_average():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.model.weight, 0.9 * w0 + 0.1 * (w0 + 1.0), atol=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())
    ema.train()
    assert not ema.model.training


def test_ema_pairs_parameters_by_name_and_refuses_a_changed_model():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    ema = EMA(net, decay=0.5)
    net.append(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="different parameters"):
        ema.update(net)


def test_decoder_block_frees_its_skip_concat_after_the_first_layer():
    """``CtxSequential(..., skips=[s])`` pops and concatenates inside the block: same output as a caller-made
    concat, but neither the concat (an argument of a module call is held for the whole call) nor the skip is
    alive while the later layers run."""
    from torch import nn

    from shared.nn.layers import CtxSequential
    from tools.bench import live_tensor_peak

    class Half(nn.Module):  # first layer: a new tensor half the concat's size
        def forward(self, x):
            return x[:, : x.shape[1] // 2] * 2

    class Big(nn.Module):  # a later layer allocating 4x its input
        def forward(self, x):
            return x.repeat(1, 4, 1, 1).sum(1, keepdim=True).expand_as(x) + x

    block = CtxSequential(Half(), Big())
    h, skip = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    stack = [skip]
    assert torch.equal(block(h, skips=stack), block(torch.cat([h, skip], 1))) and stack == []
    unit = h.numel() * h.element_size()
    cat = torch.cat([h, skip], 1)
    later_layers_only = live_tensor_peak(lambda: block[1](block[0](cat)))["peak_bytes"]
    held = live_tensor_peak(lambda: block(torch.cat([h, skip], 1)))["peak_bytes"]
    # the skip made under the mode, so it counts while alive: popped, concatenated and gone with the concat
    freed = live_tensor_peak(lambda: block(h, skips=[skip.clone()]))["peak_bytes"]
    assert freed == later_layers_only and held - freed == 2 * unit
