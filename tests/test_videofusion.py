"""VideoFusion (papers/videofusion): the two-network prediction is Eq. 8-9 (key frame = base generator, other frames
sqrt(lambda) b_hat + sqrt(1 - lambda) r_hat with the base removed from the residual generator's input), also in the
v-parameterisation on a continuous schedule, the module trains both generators on the decomposed noise, and bad parts
are one-line errors. The Sprites claim fine-tunes the shared Sprites image stage (one teacher-cache key with the other
Sprites claims) and its quick run gives every per-seed score. (The decomposition's unit variance and covariance:
tests/test_noise_priors.py.)"""
from __future__ import annotations

import json

import pytest
import torch
from conftest import compose, image_stage_key
from hydra.utils import instantiate
from omegaconf import OmegaConf

from papers.videofusion.nets import VideoFusionNet, videofusion_net
from shared.diffusion.noise_priors import BaseResidualNoise, MixedNoise
from shared.diffusion.schedules import CosineVP, DiscreteVP, EDMSchedule
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.unet import UNet


def image(in_channels=1):
    torch.manual_seed(0)
    net = UNet(in_channels=in_channels, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_classes=10, norm_groups=4)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return net


def test_prediction_is_the_papers_decomposition():
    schedule, prior = DiscreteVP(num_steps=100), BaseResidualNoise(0.4, "middle")
    net = videofusion_net(image(), prior, schedule).eval()
    for p in net.residual.parameters():      # temporal layers non-zero: the residual generator is a video model
        p.data.add_(0.01 * torch.randn_like(p))
    x, t, y = torch.randn(2, 1, 6, 8, 8), torch.tensor([30.0, 70.0]), torch.tensor([1, 2])
    with torch.no_grad():
        out = net(x, t, y=y)
        key = prior.key_index(6)
        b = net.base(x[:, :, key], t, y=y)[:, :, None]
        torch.testing.assert_close(out[:, :, key:key + 1], b, atol=1e-6, rtol=0)   # lambda = 1 on the key frame
        _, sigma = schedule.alpha_sigma(t)
        lam = prior.lambdas(6).float().view(1, 1, -1, 1, 1)
        r = net.residual(x - sigma.view(-1, 1, 1, 1, 1) * lam.sqrt() * b, t, y=y)
        torch.testing.assert_close(out, lam.sqrt() * b + (1 - lam).sqrt() * r, atol=1e-6, rtol=0)


def test_v_prediction_on_a_continuous_schedule_keeps_the_decomposition():
    """prediction="v" (the Sprites stage): the key frame is the base generator's v; the base noise it implies,
    sigma x_key + alpha v_b, is removed from the residual generator's input; frames combine the two v's."""
    schedule, prior = CosineVP(), BaseResidualNoise(0.5, "middle")
    net = videofusion_net(image(), prior, schedule, prediction="v").eval()
    for p in net.residual.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    x, t, y = torch.randn(2, 1, 4, 8, 8), torch.tensor([0.3, 0.9]), torch.tensor([1, 2])
    t_net = schedule.net_time(t)
    with torch.no_grad():
        out = net(x, t_net, y=y)
        key = prior.key_index(4)
        v_b = net.base(x[:, :, key], t_net, y=y)[:, :, None]
        torch.testing.assert_close(out[:, :, key:key + 1], v_b, atol=1e-6, rtol=0)
        alpha, sigma = (a.view(-1, 1, 1, 1, 1) for a in schedule.alpha_sigma(t))
        b_hat = sigma * x[:, :, key:key + 1] + alpha * v_b
        lam = prior.lambdas(4).float().view(1, 1, -1, 1, 1)
        v_r = net.residual(x - sigma * lam.sqrt() * b_hat, t_net, y=y)
        torch.testing.assert_close(out, lam.sqrt() * v_b + (1 - lam).sqrt() * v_r, atol=1e-5, rtol=0)
        eps_net = videofusion_net(image(), prior, schedule, prediction="eps").eval()
        eps_net.load_state_dict(net.state_dict())
        assert (eps_net(x, t_net, y=y) - out).abs().max() > 1e-3   # the v path is not the eps path


class _Oracle(torch.nn.Module):
    """A generator that returns the true ``v`` of the input it is meant to see (``alpha x0 + sigma eps`` at ``t``),
    after checking that it was given exactly that input."""

    def __init__(self, schedule, x0, eps, frames=None):
        super().__init__()
        self.schedule, self.x0, self.eps, self.frames = schedule, x0, eps, frames

    def forward(self, y, t_net, **cond):
        alpha, sigma = (a.view(-1, *[1] * (y.dim() - 1)) for a in self.schedule.alpha_sigma(t_net / 1000.0))
        x0, eps = self.x0, self.eps
        if self.frames is not None:                  # the residual generator: only the non-key frames are checked
            torch.testing.assert_close(y[:, :, self.frames], (alpha * x0 + sigma * eps)[:, :, self.frames])
        else:
            torch.testing.assert_close(y, alpha * x0 + sigma * eps)
        return alpha * eps - sigma * x0


def test_eps_x0_combination_is_exact_and_the_v_sum_is_not():
    """combine="eps_x0" (sprites_claim_v2): with a base generator exact on the key frame and a residual generator exact
    on its own (rescaled, re-timed) input, the prediction is every frame's true v; combine="v" (sprites_claim) is
    not."""
    schedule, prior = CosineVP(-20.0, 20.0), BaseResidualNoise(0.5, "middle")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 5, 4, 4, generator=g) * 2 - 1
    b, r = prior.sample_parts(x0.shape, generator=g)
    eps = prior.combine(b, r)
    t = torch.tensor([0.35, 0.8])
    alpha, sigma = (a.view(-1, 1, 1, 1, 1) for a in schedule.alpha_sigma(t))
    x_t, v_true = alpha * x0 + sigma * eps, alpha * eps - sigma * x0
    key = prior.key_index(5)
    others = [i for i in range(5) if i != key]
    base = _Oracle(schedule, x0[:, :, key], b[:, :, 0])
    residual = _Oracle(schedule, x0, r, frames=others)
    exact = VideoFusionNet(base, residual, prior, schedule, prediction="v", combine="eps_x0")
    torch.testing.assert_close(exact(x_t, schedule.net_time(t)), v_true, atol=1e-5, rtol=1e-5)
    residual_raw = _Oracle(schedule, x0, r, frames=None)
    residual_raw.forward = lambda y, t_net, **c: alpha * r - sigma * x0     # the true v at t (no re-timing)
    v_sum = VideoFusionNet(base, residual_raw, prior, schedule, prediction="v", combine="v")
    assert (v_sum(x_t, schedule.net_time(t)) - v_true)[:, :, others].abs().mean() > 0.1


def test_module_trains_both_generators_on_the_decomposed_noise():
    schedule, prior = DiscreteVP(num_steps=100), BaseResidualNoise(0.5)
    net = videofusion_net(image(), prior, schedule)
    m = DiffusionModule(net, schedule, sample_shape=(1, 4, 8, 8), noise_prior=BaseResidualNoise(0.5), ema_decay=None)
    loss = m.training_loss({"x": torch.rand(2, 1, 4, 8, 8) * 2 - 1, "y": torch.tensor([3, 4])},
                           torch.Generator().manual_seed(0))
    loss.backward()
    assert net.base.out_conv.weight.grad.abs().sum() > 0
    assert net.residual.out_conv.weight.grad.abs().sum() > 0
    frozen = videofusion_net(image(), prior, schedule, train_base=False)
    assert not any(p.requires_grad for p in frozen.base.parameters())
    x = m.sample(2, cond={"y": torch.tensor([0, 1])}, sampler={"name": "ddim", "steps": 2})
    assert x.shape == (2, 1, 4, 8, 8)


def test_bad_parts_are_one_line_errors():
    with pytest.raises(ValueError, match="needs a DiscreteVP schedule .* got EDMSchedule"):
        VideoFusionNet(image(), image(), BaseResidualNoise(), EDMSchedule())
    with pytest.raises(ValueError, match="prediction must be one of"):
        VideoFusionNet(image(), image(), BaseResidualNoise(), CosineVP(), prediction="x0")
    with pytest.raises(ValueError, match="combine must be one of"):
        VideoFusionNet(image(), image(), BaseResidualNoise(), CosineVP(), prediction="v", combine="x0")
    with pytest.raises(ValueError, match="combine='eps_x0' needs prediction='v' and a schedule with an inverse"):
        VideoFusionNet(image(), image(), BaseResidualNoise(), DiscreteVP(num_steps=10), combine="eps_x0")
    with pytest.raises(ValueError, match="needs a BaseResidualNoise prior"):
        VideoFusionNet(image(), image(), MixedNoise(), DiscreteVP(num_steps=10))
    net = VideoFusionNet(image(), image(), BaseResidualNoise(0.5, None), DiscreteVP(num_steps=10))
    with pytest.raises(ValueError, match="needs a key frame"):
        net(torch.zeros(1, 1, 4, 8, 8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"videos \(B, C, T, H, W\)"):
        net(torch.zeros(1, 1, 8, 8), torch.tensor([1.0]))


def test_sprites_claim_shares_the_sprites_image_stage_and_builds_both_processes(tmp_path):
    """One teacher-cache key with the Latent-Shift and Text2Video-Zero Sprites claims; the image stage's objective;
    the i.i.d. model is the inflated image U-Net with i.i.d. noise, VideoFusion's residual generator is that same
    network and its base generator the image model (both loaded from the image weights), trained on the decomposed
    noise."""
    from shared.engine.claims import variant_config
    from shared.engine.run import build
    from shared.nn.weights import save_weights

    cfg = compose(["experiment=videofusion/sprites_claim", "run_dir=/tmp/unused"])
    key = image_stage_key("videofusion/sprites_claim", 0)
    assert key == image_stage_key("latent_shift/sprites_claim", 0)
    assert key == image_stage_key("text2video_zero/sprites_claim", 0)
    assert key != image_stage_key("videofusion/sprites_claim", 1)
    assert cfg.module.prediction == cfg.claim.image.module.prediction == "v"
    assert cfg.module.schedule == cfg.claim.image.module.schedule
    assert list(cfg.module.sample_shape) == [3, int(cfg.data.frames), 16, 16] and not cfg.data.train.frames_only
    assert len(cfg.claim.seeds) >= 2 and cfg.expected and 99 not in cfg.claim.seeds   # 99: the development seed
    assert cfg.claim.tier == "long"
    torch.manual_seed(0)
    img = instantiate(cfg.claim.image.model)
    for p in img.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = save_weights(img, tmp_path / "image.safetensors")
    modules = {}
    for variant in cfg.claim.variants:
        over = {**OmegaConf.to_container(cfg.claim.variant_overrides[variant], resolve=False),
                "model.weights": str(path)}
        _, modules[variant] = build(variant_config(cfg, over, 0))
    iid, vf = modules["iid"], modules["videofusion"]
    assert iid.noise_prior is None and isinstance(vf.noise_prior, BaseResidualNoise)
    assert isinstance(vf.net, VideoFusionNet) and vf.net.prediction == "v"
    assert type(vf.net.residual) is type(iid.net)
    torch.testing.assert_close(vf.net.base.state_dict(), img.state_dict())
    shapes = {k: v.shape for k, v in iid.net.state_dict().items()}
    assert {k: v.shape for k, v in vf.net.residual.state_dict().items()} == shapes
    x, t, y = torch.randn(2, 3, 8, 16, 16), torch.tensor([300.0, 900.0]), torch.tensor([1, 2])
    with torch.no_grad():   # zero-initialised temporal layers: both are the image model frame by frame at the start
        per_frame = torch.stack([img(x[:, :, f], t, y=y) for f in range(8)], 2)
        torch.testing.assert_close(vf.net.residual(x, t, y=y), per_frame, atol=1e-5, rtol=0)
        torch.testing.assert_close(iid.net(x, t, y=y), per_frame, atol=1e-5, rtol=0)
    loss = vf.training_loss({"x": torch.rand(2, 3, 8, 16, 16) * 2 - 1, "y": torch.tensor([0, 3])},
                            torch.Generator().manual_seed(0))
    loss.backward()
    assert vf.net.base.out_conv.weight.grad.abs().sum() > 0 and vf.net.residual.out_conv.weight.grad.abs().sum() > 0


def test_sprites_claim_quick_run_gives_per_seed_metrics(tmp_path):
    from shared.engine.train import run

    run(compose(["experiment=videofusion/sprites_claim", "quick=true", "logger=none", f"run_dir={tmp_path}"]))
    m = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert m["judge_checks"]["real"]["coherent"] == 1.0 and m["judge_checks"]["swapped"]["identity_consistent"] == 0
    assert m["judge_checks"]["shuffled"]["motion_coherent"] == 0
    for method in ("per_frame", "iid", "videofusion"):
        for score in ("frame_validity", "coherent", "identity_consistent", "motion_coherent", "identity_accuracy",
                      "frame_identity_accuracy", "appearance"):
            assert len(m[f"{score}_{method}"]["per_seed"]) == 1, (score, method)
    for variant in ("iid", "videofusion"):
        for score in ("train_s_per_step", "params", "forward_ratio"):
            assert len(m[f"{score}_{variant}"]["per_seed"]) == 1, (score, variant)
    assert m["params_videofusion"]["mean"] > m["params_iid"]["mean"]   # the base generator's own weights
    assert "coherent_gain_videofusion_over_iid" in m and "coherent_gain_videofusion_over_per_frame" in m
    assert (tmp_path / "iid_vs_videofusion.gif").exists()


def test_sprites_claim_unknown_variant_is_one_line_error(tmp_path):
    from shared.engine.train import run

    cfg = compose(["experiment=videofusion/sprites_claim", "quick=true", "logger=none", f"run_dir={tmp_path}",
                   "claim.variants=[videofusion,mixed]"])
    with pytest.raises(ValueError, match=r"claim.variants: unknown variant\(s\) \['mixed'\]"):
        run(cfg)
