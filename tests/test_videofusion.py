"""VideoFusion (papers/videofusion): the two-network prediction is Eq. 8-9 (key frame = base generator, other frames
sqrt(lambda) b_hat + sqrt(1 - lambda) r_hat with the base removed from the residual generator's input), the module
trains both generators on the decomposed noise, and bad parts are one-line errors. (The decomposition's unit variance
and covariance: tests/test_noise_priors.py.)"""
from __future__ import annotations

import pytest
import torch

from papers.videofusion.nets import VideoFusionNet, videofusion_net
from shared.diffusion.noise_priors import BaseResidualNoise, MixedNoise
from shared.diffusion.schedules import CosineVP, DiscreteVP
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.unet import UNet


def image():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
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
    with pytest.raises(ValueError, match="needs a DiscreteVP schedule"):
        VideoFusionNet(image(), image(), BaseResidualNoise(), CosineVP())
    with pytest.raises(ValueError, match="needs a BaseResidualNoise prior"):
        VideoFusionNet(image(), image(), MixedNoise(), DiscreteVP(num_steps=10))
    net = VideoFusionNet(image(), image(), BaseResidualNoise(0.5, None), DiscreteVP(num_steps=10))
    with pytest.raises(ValueError, match="needs a key frame"):
        net(torch.zeros(1, 1, 4, 8, 8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"videos \(B, C, T, H, W\)"):
        net(torch.zeros(1, 1, 8, 8), torch.tensor([1.0]))
