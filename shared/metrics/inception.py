"""The FID Inception-v3 (the TensorFlow ``inception-2015-12-05`` graph of Heusel et al.'s FID code), from a
local weights file — the network of every published FID / KID / IS number.

Architecture: torchvision's Inception-v3 with 1008 classes and no auxiliary head, and the four changes of the TF
graph (as in pytorch-fid's port, ``pt_inception-2015-12-05-6726825d.pth``): the average pools of the A, C and first
E blocks do not count the zero padding, and the last E block max-pools. The weights file is that state dict
(keys ``Conv2d_1a_3x3.conv.weight`` ... ``fc.bias``); it is loaded strictly, so a file of another network fails
in one line naming the keys.

Protocol (pytorch-fid's): images are quantised to uint8 as if saved to PNG, scaled to [0, 1], resized to
299x299 bilinearly (``align_corners=False``) and mapped to [-1, 1]. ``features`` returns the 2048-d pool
features (FID, KID); ``logits`` the 1008 logits of the classifier on those features (Inception Score, over the
softmax of all 1008 outputs as in the TF graph's ``softmax`` tensor used by the IS code).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIDInceptionV3", "load_fid_inception", "WEIGHTS_FILE", "WEIGHTS_SOURCE"]

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SOURCE = "github.com/mseitzer/pytorch-fid releases (fid_weights), docs/DATA_AND_WEIGHTS.md"


def _avg_pool(x):   # TF's average pool ignores the zero padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _blocks():
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for i in range(1, 6):
                d = getattr(self, f"branch7x7dbl_{i}")(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))]

    class FIDInceptionE(InceptionE):
        pool = staticmethod(_avg_pool)

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            return [self.branch1x1(x), b3, d, self.branch_pool(self.pool(x))]

    class FIDInceptionE2(FIDInceptionE):   # the graph's last block max-pools
        pool = staticmethod(lambda x: F.max_pool2d(x, 3, stride=1, padding=1))

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionE2


class FIDInceptionV3(nn.Module):
    """See the module docstring. Input: images ``(N, C, H, W)`` in [-1, 1], C = 1 (repeated) or 3."""

    num_features = 2048

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3

        A, C, E1, E2 = _blocks()
        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
        net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
        net.Mixed_7b, net.Mixed_7c = E1(1280), E2(2048)
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)   # a metric's network stays in eval mode

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # the file is the bare network's state dict; BatchNorm's num_batches_tracked may be absent
        state = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        own = {k for k in self.net.state_dict() if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if strict and (missing or unexpected):
            more = "..." if len(missing) > 3 else ""
            raise ValueError(f"not an FID Inception state dict: missing {missing[:3]}{more}"
                             f", unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        return self.net.load_state_dict(state, strict=False, assign=assign)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0   # as saved to an 8-bit PNG
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = self.preprocess(images.to(next(self.parameters()).device))
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return pool, n.fc(pool)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def load_fid_inception(path: str | Path | None, map_location="cpu") -> FIDInceptionV3:
    """The FID Inception from a local ``pt_inception-2015-12-05-6726825d.pth``; one-line errors otherwise."""
    p = Path(str(path)).expanduser() if path else None
    if p is not None and p.is_dir():
        p = p / WEIGHTS_FILE
    if p is None or not p.is_file():
        raise FileNotFoundError(f"Inception weights not found at '{path}': FID/KID/IS need a local {WEIGHTS_FILE} "
                                f"(from {WEIGHTS_SOURCE}); nothing is downloaded")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line
        raise ValueError(f"cannot read Inception weights {p}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = FIDInceptionV3()
    try:
        net.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{p}: {str(e).splitlines()[0]}") from None
    return net.to(map_location).eval()
