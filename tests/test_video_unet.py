"""Space-time factorised layers (shared/nn/video.py): shapes, the joint-batch frame mask, relative
positions, and the inflation identities (zero-init video U-Net = image U-Net frame by frame; T = 1 is an
image)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.nn.unet import UNet
from shared.nn.video import (
    RelativePositionBias,
    TemporalAttention,
    TemporalConv,
    frame_attention_mask,
    inflate_unet,
    spatial_parameters,
    temporal_modules,
    temporal_parameters,
    vdm_temporal,
    video_unet,
)

KW = dict(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
          attention_resolutions=[4], norm_groups=4)


def randomise(module: nn.Module, std: float = 0.2) -> nn.Module:
    """Give every parameter (zero-initialised projections included) a random value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def joint_ctx(b, t_video, n_images):
    flags = torch.zeros(b, t_video + n_images, dtype=torch.bool)
    flags[:, :t_video] = True
    return {"num_frames": t_video + n_images, "frame_is_video": flags}


def test_temporal_attention_keeps_the_shape_and_starts_as_identity():
    attn = TemporalAttention(16, num_heads=2, norm_groups=4)
    x = torch.randn(3 * 5, 16, 4, 4)
    out = attn(x, None, {"num_frames": 5})
    assert out.shape == x.shape
    assert torch.equal(out, x)  # zero-initialised output projection


def test_frame_attention_mask_values():
    m = frame_attention_mask(torch.tensor([[True, True, False, False]]))[0]
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_images_in_a_joint_batch_do_not_attend_to_each_other_or_to_the_video():
    torch.manual_seed(0)
    attn = randomise(TemporalAttention(8, num_heads=2, norm_groups=4))
    b, tv, ni = 2, 4, 3
    ctx = joint_ctx(b, tv, ni)
    x = torch.randn(b * (tv + ni), 8, 3, 3)
    out = attn(x, None, ctx)
    y = x.clone().view(b, tv + ni, 8, 3, 3)
    y[:, tv + 1] += torch.randn_like(y[:, tv + 1])        # change image 1 of every item
    out2 = attn(y.view_as(x), None, ctx).view(b, tv + ni, 8, 3, 3)
    out = out.view(b, tv + ni, 8, 3, 3)
    others = [i for i in range(tv + ni) if i != tv + 1]
    assert torch.allclose(out[:, others], out2[:, others], atol=1e-6), "other frames saw the changed image"
    assert not torch.allclose(out[:, tv + 1], out2[:, tv + 1])
    # a change in a video frame reaches the other video frames but no image
    z = x.clone().view(b, tv + ni, 8, 3, 3)
    z[:, 0] += torch.randn_like(z[:, 0])  # (a constant shift would vanish in the per-frame GroupNorm)
    out3 = attn(z.view_as(x), None, ctx).view(b, tv + ni, 8, 3, 3)
    assert not torch.allclose(out[:, 1:tv], out3[:, 1:tv])
    assert torch.allclose(out[:, tv:], out3[:, tv:], atol=1e-6)


def test_without_a_mask_frames_do_attend_to_each_other():
    attn = randomise(TemporalAttention(8, num_heads=2, norm_groups=4))
    x = torch.randn(6, 8, 2, 2)
    y = x.clone()
    y[5] += torch.randn_like(y[5])
    out, out2 = attn(x, None, {"num_frames": 6}), attn(y, None, {"num_frames": 6})
    assert not torch.allclose(out[:5], out2[:5])


def test_relative_position_bias_depends_only_on_the_offset():
    rel = RelativePositionBias(heads=2, max_distance=3)
    nn.init.normal_(rel.table.weight)
    bias = rel(6)
    assert bias.shape == (2, 6, 6)
    for d in range(-5, 6):
        diag = torch.diagonal(bias, offset=d, dim1=1, dim2=2)
        assert torch.allclose(diag, diag[:, :1].expand_as(diag))
    assert torch.allclose(bias[:, 0, 5], bias[:, 0, 3])  # clipped at max_distance


def test_temporal_conv_leaves_images_alone_and_images_do_not_leak_into_the_video():
    conv = randomise(TemporalConv(8, kernel_size=3, norm_groups=4))
    b, tv, ni = 2, 3, 2
    ctx = joint_ctx(b, tv, ni)
    x = torch.randn(b * (tv + ni), 8, 3, 3)
    out = conv(x, None, ctx).view(b, tv + ni, 8, 3, 3)
    xv = x.view(b, tv + ni, 8, 3, 3)
    assert torch.equal(out[:, tv:], xv[:, tv:])
    assert not torch.allclose(out[:, :tv], xv[:, :tv])
    y = xv.clone()
    y[:, tv] += torch.randn_like(y[:, tv])  # the image right after the last video frame
    out2 = conv(y.view_as(x), None, ctx).view(b, tv + ni, 8, 3, 3)
    assert torch.allclose(out[:, :tv], out2[:, :tv], atol=1e-6)
    assert torch.equal(conv(x[:4], None, {"num_frames": 1}), x[:4])


def test_inflation_keeps_2d_names_and_records_the_temporal_blocks():
    torch.manual_seed(0)
    img = UNet(**KW)
    vid = video_unet(**KW)
    missing, unexpected = vid.load_state_dict(img.state_dict(), strict=False)
    assert unexpected == []
    names = [n for n, _ in temporal_modules(vid)]
    assert names and all(any(k.startswith(n + ".") for k in missing) for n in names)
    assert all(any(k.startswith(n + ".") for n in names) for k in missing)
    n_t = sum(p.numel() for p in temporal_parameters(vid))
    n_s = sum(p.numel() for p in spatial_parameters(vid))
    assert n_t + n_s == sum(p.numel() for p in vid.parameters())
    assert n_s == sum(p.numel() for p in img.parameters())
    every = inflate_unet(UNet(**KW), lambda ch: vdm_temporal(ch, norm_groups=4), insert="resblock")
    assert len(every.temporal_names) > len(names)
    with pytest.raises(ValueError, match="insert must be"):
        inflate_unet(UNet(**KW), lambda ch: nn.Identity(), insert="everywhere")


@pytest.mark.parametrize("insert", ["attention", "resblock"])
def test_zero_init_video_unet_equals_the_image_unet_frame_by_frame(insert):
    torch.manual_seed(0)
    img = randomise(UNet(**KW))                    # non-trivial 2D weights (zero-init layers too)
    vid = inflate_unet(UNet(**KW), lambda ch: vdm_temporal(ch, norm_groups=4, conv_kernel=3), insert)
    vid.load_state_dict(img.state_dict(), strict=False)  # temporal blocks keep their zero-init outputs
    x, t = torch.randn(2, 1, 6, 8, 8), torch.tensor([10.0, 700.0])
    out = vid(x, t)
    ref = torch.stack([img(x[:, :, i], t) for i in range(6)], dim=2)
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_t1_video_equals_the_image_path_and_an_appended_image_equals_itself_alone():
    torch.manual_seed(0)
    vid = randomise(video_unet(temporal=lambda ch: vdm_temporal(ch, norm_groups=4, conv_kernel=3), **KW))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5.0, 300.0, 900.0])
    as_image = vid(x, t)
    as_video = vid(x[:, :, None], t)[:, :, 0]
    assert torch.allclose(as_image, as_video, atol=1e-5)
    # joint batch: 4 video frames + 2 images; the images come out as they would alone
    video, images = torch.randn(3, 1, 4, 8, 8), torch.randn(3, 1, 2, 8, 8)
    flags = torch.tensor([True] * 4 + [False] * 2).expand(3, 6)
    out = vid(torch.cat([video, images], dim=2), t, frame_is_video=flags)
    for i in range(2):
        assert torch.allclose(out[:, :, 4 + i], vid(images[:, :, i], t), atol=1e-5)
    assert torch.allclose(out[:, :, :4], vid(video, t), atol=1e-5)   # the video ignores its appended images


def test_video_from_image_freezes_2d_equals_image_model_and_ships_temporal_weights_alone():
    from shared.nn.video import freeze_spatial, load_temporal_state_dict, temporal_state_dict, video_from_image

    torch.manual_seed(0)
    image = randomise(UNet(**KW))
    video = video_from_image(image, lambda ch: vdm_temporal(ch, norm_groups=4), insert="resblock")
    assert video is not image and not hasattr(image, "temporal_names")  # the image model is untouched
    x, t = torch.randn(2, 1, 5, 8, 8), torch.tensor([3.0, 7.0])
    frames = torch.stack([image(x[:, :, i], t) for i in range(5)], dim=2)
    assert torch.allclose(video(x, t), frames, atol=1e-5)
    trainable = {id(p) for p in video.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in temporal_parameters(video)} and trainable
    state = temporal_state_dict(video)
    assert state and all(k.split(".")[0] in ("input_blocks", "middle_block", "output_blocks") for k in state)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in temporal_parameters(video))
    other = video_from_image(image, lambda ch: vdm_temporal(ch, norm_groups=4), insert="resblock")
    randomise(other)
    load_temporal_state_dict(other, {k: v + 1 for k, v in state.items()})
    assert all(torch.equal(other.state_dict()[k], v + 1) for k, v in state.items())
    with pytest.raises(ValueError, match="missing"):
        load_temporal_state_dict(other, dict(list(state.items())[1:]))
    with pytest.raises(ValueError, match="already inflated"):
        video_from_image(video, lambda ch: vdm_temporal(ch, norm_groups=4))
    with pytest.raises(ValueError, match="no inserted temporal"):
        freeze_spatial(UNet(**KW))


def test_before_resample_position_runs_the_temporal_block_before_the_upsampler_and_keeps_2d_names():
    import copy

    from shared.nn.layers import Upsample
    from shared.nn.video import inflate_unet

    torch.manual_seed(0)
    image = randomise(UNet(**KW))

    class Probe(nn.Module):  # an identity temporal block that records the resolution it runs at
        def __init__(self, ch):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x.shape[-1])
            return x

    for position, expect in (("end", 8), ("before_resample", 4)):
        net = inflate_unet(copy.deepcopy(image), Probe, insert="resblock", position=position)
        assert set(image.state_dict()) <= set(net.state_dict())  # every 2D name kept
        x, t = torch.randn(1, 1, 3, 8, 8), torch.tensor([5.0])
        frames = torch.stack([image(x[:, :, i], t) for i in range(3)], dim=2)
        assert torch.allclose(net(x, t), frames, atol=1e-5)  # identity probes: the same function
        # the output block that ends the 4x4 level with an Upsample: its probe runs at 4x4 only before it
        block = next(b for b in net.output_blocks if any(isinstance(m, Upsample) for m in b))
        assert block[len(block) - 1].seen == [expect]
    with pytest.raises(ValueError, match="position must be one of"):
        inflate_unet(UNet(**KW), Probe, position="middle")
