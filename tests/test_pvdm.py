"""PVDM: triplane projection / broadcast / canvas layout (closed-form checks), the projected autoencoder's shapes,
errors and ability to overfit, the latent diffusion stage on its canvas, and the claim check."""
from __future__ import annotations

import pytest
import torch

from papers.pvdm.autoencoder import TriplaneAutoencoder
from papers.pvdm.module import VideoAutoencoderModule
from shared.diffusion.latent import LatentSpace
from shared.diffusion.schedules import CosineVP
from shared.methods.latent_module import latent_diffusion
from shared.nn.triplane import AxisPool, broadcast_sum, from_canvas, to_canvas
from shared.nn.unet import UNet


@pytest.mark.parametrize("thw", [(8, 16, 16), (4, 8, 12), (16, 4, 8), (1, 6, 6)])
def test_projections_have_the_plane_shapes_and_mean_pooling_is_the_axis_mean(thw):
    t, h, w = thw
    u = torch.randn(2, 6, t, h, w)
    want = {"xy": (2, 6, h, w), "yt": (2, 6, t, w), "xt": (2, 6, t, h)}
    length = {"xy": t, "yt": h, "xt": w}
    axis = {"xy": 2, "yt": 3, "xt": 4}
    for plane in want:
        mean = AxisPool(plane, 6, length[plane], "mean")(u)
        assert mean.shape == want[plane]
        assert torch.allclose(mean, u.mean(axis[plane]))
        att = AxisPool(plane, 6, length[plane], "attention", heads=2)(u)
        assert att.shape == want[plane] and torch.isfinite(att).all()


def test_attention_pooling_of_a_constant_axis_is_that_constant_through_the_value_map():
    """Softmax weights sum to one: along an axis where u is constant the pooled value is V(norm(u + p)) for any
    weights — with zero positions every position gives the same value, so the output equals that of length 1."""
    pool = AxisPool("xy", 4, 5, "attention")
    u1 = torch.randn(1, 4, 1, 3, 3)
    u = u1.expand(1, 4, 5, 3, 3).contiguous()
    single = AxisPool("xy", 4, 1, "attention")
    single.load_state_dict({k: (v[:, :1] if k == "pos" else v) for k, v in pool.state_dict().items()})
    assert torch.allclose(pool(u), single(u1), atol=1e-5)


def test_broadcast_sum_is_the_sum_of_planes_and_canvas_round_trips():
    b, c, t, s = 2, 3, 4, 5
    xy, yt, xt = torch.randn(b, c, s, s), torch.randn(b, c, t, s), torch.randn(b, c, t, s)
    u = broadcast_sum(xy, yt, xt)
    assert u.shape == (b, c, t, s, s)
    assert torch.allclose(u[1, 2, 3, 1, 4], xy[1, 2, 1, 4] + yt[1, 2, 3, 4] + xt[1, 2, 3, 1])
    # mean pooling undoes broadcasting of the plane it keeps, up to the means of the other two
    assert torch.allclose(u.mean(2), xy + yt.mean(2)[:, :, None, :] + xt.mean(2)[:, :, :, None], atol=1e-5)
    canvas = to_canvas(xy, yt, xt)
    assert canvas.shape == (b, c, s + 2 * t, s)
    for a, bb in zip(from_canvas(canvas, t), (xy, yt, xt)):
        assert torch.equal(a, bb)
    with pytest.raises(ValueError, match="square latents"):
        to_canvas(torch.randn(1, 1, 4, 6), torch.randn(1, 1, 2, 6), torch.randn(1, 1, 2, 4))


def tiny_ae(**kw):
    args = dict(in_channels=1, frames=4, image_size=8, patch_size=2, channels=[8], latent_channels=2,
                norm_groups=4, attention_heads=1)
    args.update(kw)
    return TriplaneAutoencoder(**args)


@pytest.mark.parametrize("reg,frames,size,patch,chans", [("kl", 4, 8, 2, [8]), ("tanh", 8, 16, 2, [8, 8]),
                                                          ("tanh", 2, 8, 4, [8])])
def test_autoencoder_encodes_to_the_canvas_and_decodes_to_the_video_shape(reg, frames, size, patch, chans):
    ae = tiny_ae(regularization=reg, frames=frames, image_size=size, patch_size=patch, channels=chans)
    x = torch.rand(3, 1, frames, size, size) * 2 - 1
    side = size // (patch * 2 ** (len(chans) - 1))
    post = ae.encode(x)
    assert post.mean.shape == (3, 2, side + 2 * frames, side) == (3, *ae.latent_shape())
    assert post.deterministic == (reg == "tanh")
    if reg == "tanh":
        assert post.mean.abs().max() <= 1
    rec, _ = ae(x)
    assert rec.shape == x.shape
    assert torch.allclose(ae.encode(x, chunk_size=2).mean, post.mean, atol=1e-5)


def test_autoencoder_rejects_a_wrong_frame_count_or_size():
    ae = tiny_ae()
    with pytest.raises(ValueError, match=r"\(B, 1, 4, 8, 8\)"):
        ae.encode(torch.zeros(1, 1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, 4, 8, 8\)"):
        ae.encode(torch.zeros(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="canvases"):
        ae.decode(torch.zeros(1, 2, 9, 4))
    with pytest.raises(ValueError, match="regularization"):
        tiny_ae(regularization="vq")
    with pytest.raises(ValueError, match="divisible"):
        tiny_ae(image_size=9)


def test_tiny_autoencoder_overfits_two_videos():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    ae = tiny_ae(regularization="tanh")
    opt = torch.optim.Adam(ae.parameters(), 3e-3)
    losses = []
    for _ in range(80):
        rec, _ = ae(x)
        loss = (rec - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_video_autoencoder_module_trains_on_whole_videos():
    from shared.nn.autoencoder_loss import AutoencoderLoss

    module = VideoAutoencoderModule(tiny_ae(), AutoencoderLoss(rec="l2", reduction="mean", learn_logvar=False))
    x = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    loss = module.training_step({"x": x}, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.reconstruct(x).shape == x.shape
    with pytest.raises(ValueError, match="videos"):
        module.training_step({"x": x[:, :, 0]}, 0)


def test_pvdm_diffusion_stage_trains_one_step_and_samples_videos():
    ae = tiny_ae()
    net = UNet(in_channels=2, image_size=12, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
               attention_resolutions=[6], norm_groups=4)
    module = latent_diffusion(LatentSpace(ae, "data"), net=net, schedule=CosineVP(), prediction="v",
                              ema_decay=None, clip_x0=None, sample_shape=(2, 12, 4),
                              sampler={"name": "ddpm", "steps": 2})
    x = torch.rand(4, 1, 4, 8, 8) * 2 - 1
    module.latent.fit_scale_factor(x)
    opt = torch.optim.Adam([p for p in module.net.parameters() if p.requires_grad], 1e-3)
    before = {k: v.clone() for k, v in module.latent.state_dict().items()}
    loss = module.training_loss({"x": x}, torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.equal(v, module.latent.state_dict()[k]) for k, v in before.items())  # AE frozen
    out = module.eval().sample(3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 4, 8, 8) and torch.isfinite(out).all()


def test_weights_path_loads_an_autoencoder_module_checkpoint(tmp_path):
    src = tiny_ae()
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ae.ckpt")
    dst = tiny_ae(weights_path=str(tmp_path / "ae.ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(Exception, match="ae.ckpt|shape|key"):
        tiny_ae(latent_channels=3, weights_path=str(tmp_path / "ae.ckpt"))
