"""The shared avatar blocks: ReferenceNet and reference attention (shared/nn/reference.py, the spatial transformer's
hook), the guider (shared/nn/guider.py), the audio layers (shared/nn/audio_attention.py) and the U-Net's input
residual. Identities at initialisation, the attention concatenation against an explicit computation, shapes,
window alignment, one-line errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.nn.audio_attention import AudioAttention, AudioEncoder, audio_state_dict, insert_audio_attention
from shared.nn.guider import Guider
from shared.nn.motion_module import from_image_model
from shared.nn.reference import ImageTokenEncoder, ReferenceDenoiser, ReferenceNet, copy_spatial
from shared.nn.spatial_transformer import BasicTransformerBlock
from shared.nn.unet import UNet


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(in_channels=3, image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, norm_groups=8, context_dim=8)
    args.update(kw)
    net = UNet(**args)
    with torch.no_grad():  # zero-initialised outputs would hide every difference
        for p in net.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


def test_reference_attention_concatenates_keys_and_values_and_keeps_the_denoisers_tokens():
    torch.manual_seed(0)
    blk = BasicTransformerBlock(16, 2, 8, 8).eval()
    x, ref, ctx = torch.randn(6, 5, 16), torch.randn(3, 7, 16), torch.randn(6, 1, 8)
    rec: list = []
    out = blk(x, ctx, reference=ref, record=rec)
    assert out.shape == x.shape and len(rec) == 1 and rec[0].shape == (6, 5, 16)
    h = blk.norm1(x)
    kv = torch.cat([h, ref.repeat_interleave(2, 0)], 1)  # (6, 5 + 7, 16): each item's reference, per frame
    a = blk.attn1
    q, k, v = (z.view(6, -1, 2, 8).transpose(1, 2) for z in (a.to_q(h), a.to_k(kv), a.to_v(kv)))
    att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(6, 5, 16)
    y = x + a.to_out[0](att)
    y = y + blk.attn2(blk.norm2(y), ctx)
    y = y + blk.ff(blk.norm3(y))
    assert torch.allclose(out, y, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        blk(x, ctx, reference=torch.randn(4, 7, 16))


def test_referencenet_bank_shapes_and_early_stop():
    unet = tiny_unet()
    ref = ReferenceNet(copy_spatial(unet))
    bank = ref(torch.randn(2, 3, 16, 16), torch.zeros(2, 1, 8))
    assert sorted(bank) == sorted(ref.names) and len(bank) == 4  # 8 px: one input, the middle, two output blocks
    assert ref._last_needed() == ("output", 1)  # the 16-px output blocks are never run
    for name, tokens in bank.items():
        layer = dict(ref.unet.named_modules())[name]
        c = layer.norm.num_channels
        assert len(tokens) == 1 and tokens[0].shape == (2, 64, c)


def test_referencenet_copy_on_the_same_input_leaves_the_denoiser_unchanged():
    """Concatenating identical keys/values leaves softmax attention unchanged: a ReferenceNet that is a copy of the
    denoiser, given the denoiser's own input at the same time, reproduces the plain denoiser exactly."""
    unet = tiny_unet()
    t = 0.0
    full = ReferenceDenoiser(unet, reference_net=ReferenceNet(copy_spatial(unet), time=t)).eval()
    base = ReferenceDenoiser(copy_spatial(unet)).eval()
    x = torch.randn(2, 3, 16, 16)
    tt = torch.full((2,), t)
    with torch.no_grad():
        assert torch.allclose(full(x, tt, reference=x), base(x, tt), atol=1e-5)
        other = full(x, tt, reference=torch.randn_like(x))
        assert (other - base(x, tt)).abs().max() > 1e-3  # a different reference does change the output
        # videos: the reference's tokens serve every frame
        v = x[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
        assert torch.allclose(full(v, tt, reference=x), base(v, tt), atol=1e-5)


def test_guider_zero_init_is_the_identity_for_both_targets():
    unet = tiny_unet()
    x, t = torch.randn(2, 3, 4, 16, 16), torch.full((2,), 10.0)
    pose = torch.randn(2, 3, 4, 16, 16)
    base = ReferenceDenoiser(copy_spatial(unet)).eval()
    with torch.no_grad():
        want = base(x, t)
        for target, out_ch in (("input", 3), ("conv_in", 16)):
            g = Guider(3, out_ch, widths=(8, 16), stride=1, target=target)
            net = ReferenceDenoiser(copy_spatial(unet), guider=g).eval()
            assert torch.equal(net(x, t, guide=pose), want)
            torch.nn.init.normal_(g.conv_out.weight, std=0.1)
            assert (net(x, t, guide=pose) - want).abs().max() > 1e-3
            one = net(x, t, guide=pose[:, :, 0])  # one control image for every frame (EMO's face region)
            assert torch.allclose(one, net(x, t, guide=pose[:, :, :1].expand_as(pose)), atol=1e-6)
    with pytest.raises(ValueError, match="guider target"):
        Guider(target="latent")
    with pytest.raises(ValueError, match="expects"):
        Guider(3, 3, stride=1)(torch.randn(1, 1, 8, 8))


def test_guider_stride_reaches_the_latent_grid():
    g = Guider(3, 320, widths=(16, 32, 96, 256), stride=2, target="conv_in")
    assert g(torch.randn(1, 3, 64, 64)).shape == (1, 320, 8, 8)
    assert sorted({k.split(".")[0] for k in g.state_dict()}) == ["blocks", "conv_in", "conv_out"]


def test_image_encoder_tokens_reach_the_cross_attention():
    unet = tiny_unet()
    enc = ImageTokenEncoder(3, 8, widths=(8,), tokens=2)
    net = ReferenceDenoiser(unet, image_encoder=enc).eval()
    x, t, r = torch.randn(2, 3, 16, 16), torch.zeros(2), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (net(x, t, reference=r) - net(x, t, reference=r.flip(0))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pass reference"):
        net(x, t)


def test_audio_layers_start_as_identity_and_frame_t_sees_only_its_window():
    unet = tiny_unet()
    insert_audio_attention(unet, lambda c: AudioAttention(c, 12, heads=2))
    assert len(unet.audio_names) == 4 and set(audio_state_dict(unet)) and all(
        k.startswith(tuple(unet.audio_names)) for k in audio_state_dict(unet))
    enc = AudioEncoder(feature_dim=5, window=4, dim=12)
    net = ReferenceDenoiser(unet, audio_encoder=enc).eval()
    base = ReferenceDenoiser(copy_spatial(tiny_unet())).eval()
    x, t = torch.randn(2, 3, 6, 16, 16), torch.full((2,), 50.0)
    audio = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        assert torch.allclose(net(x, t, audio=audio), base(x, t), atol=1e-6)  # zero-initialised output
        for _, m in unet.named_modules():
            if isinstance(m, AudioAttention):
                torch.nn.init.normal_(m.proj_out.weight, std=0.2)
        out = net(x, t, audio=audio)
        moved = audio.clone()
        moved[1, 3] = torch.randn(5, 4)  # another window for frame 3 of item 1 only
        diff = (net(x, t, audio=moved) - out).abs().amax(dim=(1, 3, 4))  # (B, T)
    assert diff[1, 3] > 1e-4
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask[1, 3] = False
    assert diff[mask].max() == 0  # no other frame (and no other item) moved
    with pytest.raises(ValueError, match="per-frame windows"):
        enc(torch.randn(2, 6, 4, 4))


def test_audio_layers_run_right_after_the_attention_and_survive_inflation():
    unet = tiny_unet()
    insert_audio_attention(unet, lambda c: AudioAttention(c, 12))
    from_image_model(unet, {"heads": 2, "norm_groups": 8, "ff_mult": 1}, freeze=True, copy=False)
    for name in unet.audio_names:
        block_name, idx = name.rsplit(".", 1)
        block = dict(unet.named_modules())[block_name]
        order = block.run_order
        pos = order.index(int(idx))
        assert type(block[order[pos - 1]]).__name__ == "SpatialTransformer"
    with pytest.raises(ValueError, match="already has audio"):
        insert_audio_attention(unet, lambda c: AudioAttention(c, 12))


def test_reference_bank_mismatch_is_one_line():
    unet = tiny_unet()
    other = tiny_unet(channel_mult=(1, 2, 2), attention_resolutions=(8, 4))
    with pytest.raises(ValueError, match="must be a copy"):
        ReferenceDenoiser(unet, reference_net=ReferenceNet(other))
    with pytest.raises(ValueError, match="2D U-Net"):
        v = from_image_model(tiny_unet(), {"heads": 2, "norm_groups": 8}, copy=True)
        ReferenceNet(v)


def test_unet_input_residual_is_added_after_conv_in():
    unet = tiny_unet().eval()
    x, t, c = torch.randn(2, 3, 16, 16), torch.zeros(2), torch.zeros(2, 1, 8)
    with torch.no_grad():
        plain = unet(x, t, context=c)
        assert torch.equal(unet(x, t, context=c, input_residual=torch.zeros(2, 16, 16, 16)), plain)
        assert (unet(x, t, context=c, input_residual=torch.ones(2, 16, 16, 16)) - plain).abs().max() > 1e-4
