"""Video Diffusion Models: conditional sampling (replacement, reconstruction guidance — VDM Eq. 7) checked in
closed form on a linear toy, the VDM module's joint-batch loss and extension, and the claim check."""
from __future__ import annotations

import pytest
import torch
from conftest import compose

from papers.vdm.module import VDM
from shared.diffusion.conditioning import (
    frames_mask,
    reconstruction_guided_denoiser,
    replacement_denoiser,
)
from shared.diffusion.samplers import ddim_sample, ddpm_sample
from shared.diffusion.schedules import CosineVP, _bcast
from shared.nn.video import video_unet

SHAPE = (3, 1, 2, 1, 2)   # B, C, T, H, W: 2 frames of 2 pixels -> 4 numbers per sample


def linear_denoiser(A: torch.Tensor, schedule, seen: list | None = None):
    """x0_hat = A z (on flattened samples), eps from it — a denoiser whose Jacobian is A."""
    def den(z, t):
        if seen is not None:
            seen.append((z.detach().clone(), t))
        x0 = (z.flatten(1) @ A.T).view_as(z)
        a, s = schedule.alpha_sigma(t)
        return x0, (z - _bcast(a, z) * x0) / _bcast(s, z)
    return den


def test_reconstruction_guidance_matches_the_closed_form_on_a_linear_toy():
    torch.manual_seed(0)
    schedule = CosineVP()
    A = torch.randn(4, 4)
    known = frames_mask(SHAPE, [0])                 # frame 0 (entries 0, 1 of the flattened sample) is x^a
    x_a = torch.randn(SHAPE)
    z, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 0.4)
    w_r = 3.0
    den = reconstruction_guided_denoiser(linear_denoiser(A, schedule), x_a, known, schedule, w_r=w_r,
                                         replace=False, clip_x0=None)
    x0, eps = den(z, t)
    a, s = schedule.alpha_sigma(t)
    # Eq. 7 with x_hat = A z:  grad_{z^b} ||x^a - (A z)^a||^2 = -2 A_ab^T (x^a - (A z)^a)
    zf, xaf = z.flatten(1), x_a.flatten(1)
    ia, ib = [0, 1], [2, 3]
    xhat = zf @ A.T
    resid = xaf[:, ia] - xhat[:, ia]
    expected_b = xhat[:, ib] + w_r * a[:, None] * (resid @ A[ia][:, ib])
    assert torch.allclose(x0.flatten(1)[:, ib], expected_b, atol=1e-5)
    assert torch.allclose(x0.flatten(1)[:, ia], xaf[:, ia])        # the known part is the data
    assert torch.allclose(_bcast(a, z) * x0 + _bcast(s, z) * eps, z, atol=1e-5)
    # w_r = 0 is the unconditional prediction on the unknown part
    den0 = reconstruction_guided_denoiser(linear_denoiser(A, schedule), x_a, known, schedule, w_r=0.0,
                                          replace=False, clip_x0=None)
    assert torch.allclose(den0(z, t)[0].flatten(1)[:, ib], xhat[:, ib], atol=1e-6)


def test_replacement_feeds_the_model_a_fresh_draw_of_q_z_t_given_x_a():
    schedule = CosineVP()
    seen = []
    n = (4000, 1, 2, 1, 2)
    known = frames_mask(n, [0])
    x_a = torch.randn(n)
    den = replacement_denoiser(linear_denoiser(torch.eye(4), schedule, seen), x_a, known, schedule,
                               generator=torch.Generator().manual_seed(0), clip_x0=None)
    z, t = torch.randn(n), torch.full((n[0],), 0.6)
    x0, _ = den(z, t)
    zin = seen[0][0]
    a, s = (v.view(-1, 1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    noise = ((zin - a * x_a) / s)[known]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
    assert torch.equal(zin[~known], z[~known])
    assert torch.equal(x0[known], x_a[known])


def test_both_methods_run_in_every_sampler_and_keep_the_known_frames():
    schedule = CosineVP()
    A = torch.eye(4) * 0.5
    known = frames_mask(SHAPE, [0])
    x_a = torch.rand(SHAPE) * 2 - 1
    for make in (lambda d: replacement_denoiser(d, x_a, known, schedule),
                 lambda d: reconstruction_guided_denoiser(d, x_a, known, schedule, w_r=2.0)):
        for sampler in (ddim_sample, ddpm_sample):
            out = sampler(make(linear_denoiser(A, schedule)), torch.randn(SHAPE), schedule, 5)
            assert out.shape == SHAPE and torch.isfinite(out).all()
            assert torch.allclose(out[known], x_a[known])


def tiny_vdm():
    net = video_unet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                     attention_resolutions=[4], norm_groups=4)
    return VDM(net, CosineVP(-20.0, 20.0), prediction="v", ema_decay=None, sample_shape=(1, 4, 8, 8),
               sampler={"name": "ddpm", "steps": 3})


def test_vdm_loss_hands_the_frame_flags_to_the_network():
    module = tiny_vdm()
    seen = {}
    forward = module.net.forward

    def spy(x, t, **kw):
        seen.update(kw)
        return forward(x, t, **kw)

    module.net.forward = spy
    flags = torch.tensor([True] * 4 + [False] * 2).expand(2, 6)
    loss = module.training_loss({"x": torch.rand(2, 1, 6, 8, 8) * 2 - 1, "frame_is_video": flags},
                                torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and torch.equal(seen["frame_is_video"], flags)
    loss.backward()


def test_vdm_extend_keeps_the_given_frames_for_both_methods():
    module = tiny_vdm().eval()
    x = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    known = frames_mask(x.shape, [0, 1])
    for method in ("replacement", "reconstruction"):
        out = module.extend(x, known, method=method, w_r=2.0, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(out[:, :, :2], x[:, :, :2])
    with pytest.raises(ValueError, match="method must be"):
        module.extend(x, known, method="inpaint")


def test_unknown_claim_variant_is_a_clear_error(tmp_path):
    from omegaconf import OmegaConf

    from papers.vdm.claim import seed_job

    cfg = compose(["experiment=vdm/moving_digits_extension16", "claim.variants=[jiont]", f"run_dir={tmp_path}",
                   "claim.num_samples=2", "claim.num_extensions=2"])
    with pytest.raises(ValueError, match=r"claim.variants: unknown \['jiont'\]"):
        seed_job(OmegaConf.to_container(cfg, resolve=False), 0)


def test_sprites_extension_scores_read_the_true_continuation():
    """papers/vdm/claim_sprites.extension_scores: real clips completed by themselves are perfect continuations; the
    same clips with the identity swapped in the generated frames keep their motion but not their identity."""
    import torch

    from papers.vdm.claim_sprites import extension_scores
    from shared.data.sprite_worlds import Sprites
    from shared.metrics.sprite_judge import SpriteJudge

    ds = Sprites(n=32, frames=12, seed=0, split="test")
    items = [ds[i] for i in range(32)]
    x, y, pos = (torch.stack([it[k] for it in items]) for k in ("x", "y", "positions"))
    judge, unknown = SpriteJudge(ds.identities), list(range(4, 12))
    s = extension_scores(judge, x, x, y, pos, unknown)
    assert s["coherent"] == 1.0 and s["identity_kept"] == 1.0 and s["position_error"] < 0.2 and s["psnr"] > 60
    swapped = Sprites(n=32, frames=12, seed=0, split="test", identity_swap_at=4)
    xs = torch.stack([swapped[i]["x"] for i in range(32)])
    s = extension_scores(judge, xs, x, y, pos, unknown)
    assert s["identity_kept"] == 0.0 and s["coherent"] == 0.0 and s["position_error"] < 0.2
