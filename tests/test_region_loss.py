"""The region loss (``module.region_loss``, :func:`shared.diffusion.losses.point_region_weight`): weight 0 is the
plain loss, the box sits where the point is, the weighted loss equals a hand-weighted MSE, and the module passes it
only when configured."""
from __future__ import annotations

import pytest
import torch

from shared.diffusion.losses import diffusion_loss, point_region_weight
from shared.diffusion.parameterization import from_x0_eps
from shared.diffusion.schedules import CosineVP
from shared.methods.diffusion_module import DiffusionModule


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, **kw):
        return self.scale * x


def _loss(x0, weight=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return diffusion_loss(Net(), x0, CosineVP(), "v", generator=g, pixel_weight=weight)


def test_zero_weight_is_the_plain_loss():
    x0 = torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    pts = torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(2))
    w0 = point_region_weight(pts, x0.shape, 0.1, 0.0)
    assert torch.equal(w0, torch.ones_like(w0))
    assert torch.equal(_loss(x0, w0), _loss(x0))


def test_box_follows_the_point_per_frame():
    pts = torch.tensor([[[0.5, 0.5], [0.1, 0.9]]])  # one clip, two frames
    w = point_region_weight(pts, (1, 3, 2, 10, 10), 0.1, 4.0)
    assert w.shape == (1, 1, 2, 10, 10)
    # frame 0: centres 0.45 and 0.55 on both axes -> a 2x2 box around the image centre
    assert int((w[0, 0, 0] > 1).sum()) == 4
    assert float(w[0, 0, 0, 4, 5]) == 5.0 and float(w[0, 0, 0, 0, 0]) == 1.0
    # frame 1: bottom-left (x = 0.1 -> columns 0, 1; y = 0.9 -> rows 8, 9)
    assert sorted(map(tuple, (w[0, 0, 1] > 1).nonzero().tolist())) == [(8, 0), (8, 1), (9, 0), (9, 1)]
    # one point per item for a video: the same box in every frame; images: (B, 1, H, W)
    assert torch.equal(point_region_weight(pts[:, 0], (1, 3, 2, 10, 10), 0.1, 4.0)[:, :, 1], w[:, :, 0])
    assert point_region_weight(pts[:, 0], (1, 3, 10, 10), 0.1, 4.0).shape == (1, 1, 10, 10)
    with pytest.raises(ValueError):
        point_region_weight(pts, (1, 3, 3, 10, 10), 0.1, 4.0)   # 2 frames of points, 3 frames of samples
    with pytest.raises(ValueError):
        point_region_weight(pts, (1, 3, 2, 10, 10), 0.1, -1.0)


def test_weighted_loss_is_the_hand_weighted_mse():
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    pts = torch.tensor([[0.3, 0.6], [0.7, 0.2]])
    w = point_region_weight(pts, x0.shape, 0.15, 9.0)
    g = torch.Generator().manual_seed(0)
    sched = CosineVP()
    t = sched.sample_t(2, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a, s = sched.alpha_sigma(t)
    x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
    target = from_x0_eps(x0, eps, a, s, "v")
    manual = (w * (0.5 * x_t - target) ** 2).flatten(1).mean(1).mean()
    assert torch.allclose(_loss(x0, w), manual, atol=1e-6)
    assert float(_loss(x0, w).detach()) > float(_loss(x0).detach())


def test_module_passes_the_weight_only_when_configured():
    seen = {}

    class Probe(DiffusionModule):
        def objective(self, x0, generator, **kw):
            seen.clear()
            seen.update(kw)
            return x0.sum() * 0

    batch = {"x": torch.zeros(2, 3, 2, 8, 8), "mouth_center": torch.full((2, 2, 2), 0.5)}
    g = torch.Generator().manual_seed(0)
    Probe(Net(), CosineVP(), prediction="v", ema_decay=None).training_loss(batch, g)
    assert "pixel_weight" not in seen
    Probe(Net(), CosineVP(), prediction="v", ema_decay=None,
          region_loss={"key": "mouth_center", "weight": 0.0}).training_loss(batch, g)
    assert "pixel_weight" not in seen
    Probe(Net(), CosineVP(), prediction="v", ema_decay=None,
          region_loss={"key": "mouth_center", "weight": 3.0, "half_size": 0.1}).training_loss(batch, g)
    assert seen["pixel_weight"].shape == (2, 1, 2, 8, 8) and float(seen["pixel_weight"].max()) == 4.0
    with pytest.raises(ValueError):
        Probe(Net(), CosineVP(), ema_decay=None, region_loss={"weight": 1.0})
    with pytest.raises(KeyError):
        Probe(Net(), CosineVP(), ema_decay=None, region_loss={"key": "lips", "weight": 1.0}).training_loss(batch, g)
