"""Video LDM: alpha-blended temporal layers (shared/nn/temporal_mix.py) — the alpha = 1 identity with any
temporal weights, identity at initialisation, the merge modes, the frozen-2D guarantee of temporal
training, the temporal decoder, the domain-transfer swap — and the claim check (marked ``claims``)."""
from __future__ import annotations

import copy

import pytest
import torch

from papers.video_ldm.data import DigitSubsetMovingDigits
from papers.video_ldm.module import VideoLDM, swap_spatial_weights, video_net
from shared.diffusion.schedules import DiscreteVP
from shared.nn.autoencoder import AutoencoderKL
from shared.nn.layers import ResBlock
from shared.nn.temporal_mix import (
    MERGE_MODES,
    AlphaBlend,
    TemporalDecoder,
    merge_alphas,
    set_alpha,
    video_ldm_temporal,
)
from shared.nn.unet import UNet
from shared.nn.video import TemporalConv, spatial_parameters, temporal_parameters, temporal_state_dict
from shared.nn.weights import save_weights

B, T = 2, 4


def randomise(module: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def image_unet(seed: int = 0) -> UNet:
    """A small image U-Net with random (non-zero, "trained") weights everywhere, its output layer included."""
    torch.manual_seed(seed)
    net = UNet(in_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), norm_groups=4)
    randomise(net, seed + 100, scale=0.2)
    return net


def factory(merge="learned", alpha=0.5):
    return lambda ch: video_ldm_temporal(ch, merge=merge, alpha=alpha, norm_groups=4)


def per_frame(unet, x, t):
    """The image network applied to each frame separately."""
    return torch.stack([unet(x[:, :, i], t) for i in range(x.shape[2])], dim=2)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, T, 8, 8, generator=g), torch.tensor([10.0, 500.0])


def test_alpha_one_gives_the_image_network_frame_by_frame_even_with_random_temporal_weights():
    img = image_unet()
    vid = video_net(copy.deepcopy(img), factory(merge="fixed", alpha=1.0))
    for _, m in [(n, m) for n, m in vid.named_modules() if isinstance(m, AlphaBlend)]:
        randomise(m.temporal)
    x, t = inputs()
    assert torch.allclose(vid(x, t), per_frame(img, x, t), atol=1e-5)
    # learned modes driven to alpha = 1 too (sigmoid saturates: equality to float tolerance)
    vid_l = video_net(copy.deepcopy(img), factory(merge="learned"))
    for m in [m for m in vid_l.modules() if isinstance(m, AlphaBlend)]:
        randomise(m.temporal)
    set_alpha(vid_l, 1.0)
    assert torch.allclose(vid_l(x, t), per_frame(img, x, t), atol=1e-4)
    # ... and the temporal layers do change the output once alpha < 1
    set_alpha(vid_l, 0.5)
    assert not torch.allclose(vid_l(x, t), per_frame(img, x, t), atol=1e-3)


@pytest.mark.parametrize("merge", MERGE_MODES)
def test_at_initialisation_the_merged_network_is_the_image_network(merge):
    img = image_unet()
    vid = video_net(copy.deepcopy(img), factory(merge=merge, alpha=0.3))
    x, t = inputs(1)
    assert torch.allclose(vid(x, t), per_frame(img, x, t), atol=1e-5)
    # a temporal block after every spatial stage, two merged temporal layers (conv, attention) each
    n_blocks = len(vid.temporal_names)
    blocks = [*img.input_blocks, img.middle_block, *img.output_blocks]
    assert n_blocks == sum(any(isinstance(m, ResBlock) for m in b) for b in blocks) == 7
    assert len(merge_alphas(vid)) == 2 * n_blocks


def test_merge_modes():
    x = torch.randn(B * T, 4, 3, 3)
    inner = TemporalConv(4, 3, norm_groups=2)
    randomise(inner)
    z = inner(x, None, {"num_frames": T})
    fixed = AlphaBlend(copy.deepcopy(inner), "fixed", alpha=0.25)
    assert not fixed.mix_factor.requires_grad and len(list(fixed.parameters())) == len(list(inner.parameters()))
    assert torch.allclose(fixed(x, None, {"num_frames": T}), 0.25 * x + 0.75 * z, atol=1e-6)
    learned = AlphaBlend(copy.deepcopy(inner), "learned", alpha=0.25)
    assert learned.mix_factor.requires_grad and abs(float(learned.alpha().detach()) - 0.25) < 1e-6
    assert torch.allclose(learned(x, None, {"num_frames": T}), 0.25 * x + 0.75 * z, atol=1e-5)
    # learned_with_images: frames flagged as images get alpha = 1 (the spatial output)
    lwi = AlphaBlend(copy.deepcopy(inner), "learned_with_images", alpha=0.25)
    flags = torch.tensor([[True] * T, [True, True, False, False]])
    ctx = {"num_frames": T, "frame_is_video": flags}
    out = lwi(x, None, ctx).view(B, T, 4, 3, 3)
    z_masked = inner(x, None, ctx).view(B, T, 4, 3, 3)
    xv = x.view(B, T, 4, 3, 3)
    assert torch.allclose(out[1, 2:], xv[1, 2:])
    assert torch.allclose(out[0], 0.25 * xv[0] + 0.75 * z_masked[0], atol=1e-5)
    with pytest.raises(ValueError):
        AlphaBlend(inner, "sometimes")
    with pytest.raises(ValueError):
        AlphaBlend(inner, "fixed", alpha=1.5)


def test_temporal_training_leaves_every_2d_weight_bit_identical():
    img = image_unet()
    net = video_net(copy.deepcopy(img), factory())
    before_2d = {k: v.clone() for k, v in img.state_dict().items()}
    before_t = {k: v.clone() for k, v in temporal_state_dict(net).items()}
    assert all(not p.requires_grad for p in spatial_parameters(net))
    assert all(p.requires_grad for p in temporal_parameters(net))
    module = VideoLDM(net, DiscreteVP(num_steps=100), ema_decay=None,
                      optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2))
    opt = module.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = module.training_loss({"x": torch.randn(B, 2, T, 8, 8, generator=g)}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_2d.items())  # 2D names unchanged, values bit-identical
    after_t = temporal_state_dict(net)
    changed = [k for k in before_t if not torch.equal(before_t[k], after_t[k])]
    assert any("mix_factor" in k for k in changed) and any("proj_out" in k for k in changed)


def test_frames_as_images_trains_on_single_frames():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, **kw):
            seen.append(x.shape)
            return torch.zeros_like(x)

    module = VideoLDM(Spy(), DiscreteVP(num_steps=100), ema_decay=None, frames_as_images=True)
    module.training_loss({"x": torch.randn(B, 2, T, 8, 8)}, torch.Generator().manual_seed(0))
    assert seen[-1] == (B * T, 2, 8, 8)


def test_transferred_temporal_layers_sit_on_the_fine_tuned_2d_weights(tmp_path):
    img, tuned = image_unet(0), image_unet(5)
    vid = video_net(copy.deepcopy(img), factory())
    randomise(vid.input_blocks[1][-1])  # some trained temporal weights
    temporal = temporal_state_dict(vid)
    swap_spatial_weights(vid, tuned.state_dict())
    assert all(torch.equal(vid.state_dict()[k], v) for k, v in tuned.state_dict().items())
    assert all(torch.equal(temporal_state_dict(vid)[k], v) for k, v in temporal.items())
    set_alpha(vid, 1.0)
    x, t = inputs(2)
    assert torch.allclose(vid(x, t), per_frame(tuned, x, t), atol=1e-4)
    with pytest.raises(ValueError, match="missing"):
        swap_spatial_weights(vid, {k: v for k, v in tuned.state_dict().items() if "out_conv" not in k})
    # the image weights travel as a file: video_net loads them strictly
    f = save_weights(tuned, tmp_path / "tuned.safetensors")
    vid2 = video_net(image_unet(9), factory(), image_weights=str(f))
    assert all(torch.equal(vid2.state_dict()[k], v) for k, v in tuned.state_dict().items())


def test_temporal_decoder_shapes_identity_at_init_and_frozen_autoencoder():
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=1, block_out_channels=(8, 16), layers_per_block=1, latent_channels=2,
                       norm_num_groups=4)
    names = set(ae.state_dict())
    dec = TemporalDecoder(copy.deepcopy(ae))
    assert {k[len("autoencoder."):] for k in dec.state_dict() if k.startswith("autoencoder.")} == names
    assert all(not p.requires_grad for p in dec.autoencoder.parameters())
    assert all(p.requires_grad for p in dec.temporal.parameters())
    z = torch.randn(B, 2, T, 4, 4)
    out = dec.decode(z)
    assert out.shape == (B, 1, T, 8, 8)
    assert torch.allclose(out, ae.decode(z), atol=1e-5)            # zero-init temporal outputs
    for blk in dec.temporal:
        randomise(blk)
    mixed = dec.decode(z)
    assert not torch.allclose(mixed, ae.decode(z), atol=1e-3)       # now frames talk to each other
    assert torch.allclose(dec.decode(z[:, :, 0]), ae.decode(z[:, :, 0]), atol=1e-6)  # images: per frame
    # frames of one clip only: changing clip 1 leaves clip 0 unchanged
    z2 = z.clone()
    z2[1] += 1.0
    assert torch.allclose(dec.decode(z2)[0], mixed[0], atol=1e-5)


def test_digit_subset_world_draws_only_the_subset():
    w = DigitSubsetMovingDigits(n=64, frames=4, size=16, digits=[0, 1], seed=0, split="test")
    assert {int(w[i]["y"]) for i in range(64)} <= {0, 1}
    assert w[3]["x"].shape == (1, 4, 16, 16)
