"""FID / KID / IS through torchmetrics, with feature networks that never download.

- FID (Heusel et al., 2017), KID (Bińkowski et al., 2018, polynomial-kernel MMD over random
  subsets) and IS (Salimans et al., 2016) are torchmetrics' implementations, always given a
  feature ``nn.Module`` (never ``feature=<int>``, which makes torchmetrics build Inception itself
  and fetch its weights).
- ``inception_feature(weights_path)``: torchmetrics' ``NoTrainInceptionV3`` (the torch-fidelity
  port of the TF FID Inception) loaded from a LOCAL weights file
  (``pt_inception-2015-12-05-6726825d.pth``); a missing path is a one-line ``FileNotFoundError``
  before anything else happens. It needs the ``torch-fidelity`` package.
- ``judge_feature()``: the digits judge (``shared.metrics.judge``) as a torchmetrics feature
  module. Numbers from it are *judge* metrics (``fd_judge``, ``kd_judge``, ``is_judge``), never
  "FID".

Feature modules here take images in the project's convention, ``(N, C, H, W)`` float in
``[-1, 1]``, and carry ``num_features`` (torchmetrics reads it instead of running a dummy image).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "InceptionFeature",
    "JudgeFeature",
    "inception_feature",
    "judge_feature",
    "make_fid",
    "make_kid",
    "make_inception_score",
    "compute_image_metrics",
]


class InceptionFeature(nn.Module):
    """``[-1, 1]`` images (1 or 3 channels, any size) -> uint8 RGB -> Inception-v3 pool or logits."""

    tag = "inception"

    def __init__(self, inception: nn.Module, num_features: int):
        super().__init__()
        self.inception, self.num_features = inception, int(num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self.inception(x)


def inception_feature(weights_path: str | Path | None, output: str = "pool") -> InceptionFeature:
    """Inception-v3 (FID variant) from a local weights file; ``output``: ``"pool"`` (2048-d, for
    FID/KID) or ``"logits"`` (1008 unbiased logits, for IS)."""
    outputs = {"pool": ("2048", 2048), "logits": ("logits_unbiased", 1008)}
    if output not in outputs:
        raise ValueError(f"output must be one of {list(outputs)}, got {output!r}")
    if weights_path is None or not Path(weights_path).expanduser().is_file():
        raise FileNotFoundError(
            f"Inception weights not found at '{weights_path}'; set the metric's weights_path to a local "
            "pt_inception-2015-12-05-6726825d.pth (nothing is downloaded)"
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            "the Inception feature network needs torch-fidelity: pip install torch-fidelity"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    name, dim = outputs[output]
    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[name],
        feature_extractor_weights_path=str(Path(weights_path).expanduser()),
    )
    return InceptionFeature(net, dim)


class JudgeFeature(nn.Module):
    """The digits judge as a torchmetrics feature module: ``output="features"`` (64-d) or
    ``"logits"`` (10 classes, for a judge Inception Score)."""

    tag = "judge"

    def __init__(self, judge: nn.Module, output: str = "features"):
        super().__init__()
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.judge, self.output = judge.eval().requires_grad_(False), output
        self.num_features = judge.feature_dim if output == "features" else judge.num_classes

    def train(self, mode: bool = True) -> JudgeFeature:
        return super().train(False)  # a metric's feature network stays in eval mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.judge.features(images) if self.output == "features" else self.judge(images)


def judge_feature(judge: nn.Module | None = None, output: str = "features") -> JudgeFeature:
    """``JudgeFeature`` around ``judge`` (default: the committed digits judge)."""
    if judge is None:
        from shared.metrics.judge import load_judge

        judge = load_judge()
    return JudgeFeature(judge, output)


def make_fid(feature: nn.Module, **kwargs):
    """torchmetrics ``FrechetInceptionDistance`` over ``feature`` (images passed as they are)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=feature, normalize=False, **kwargs)


def make_kid(feature: nn.Module, subsets: int = 100, subset_size: int = 1000, **kwargs):
    """torchmetrics ``KernelInceptionDistance`` over ``feature``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    return KernelInceptionDistance(
        feature=feature, subsets=subsets, subset_size=subset_size, normalize=False, **kwargs
    )


def make_inception_score(feature: nn.Module, splits: int = 10, **kwargs):
    """torchmetrics ``InceptionScore`` over ``feature`` (which must output logits)."""
    from torchmetrics.image.inception import InceptionScore

    return InceptionScore(feature=feature, splits=splits, normalize=False, **kwargs)


def _metric_names(feature: nn.Module) -> tuple[str, str, str]:
    tag = getattr(feature, "tag", "custom")
    return ("fid", "kid", "is") if tag == "inception" else (f"fd_{tag}", f"kd_{tag}", f"is_{tag}")


def compute_image_metrics(
    generated: torch.Tensor,
    reference: torch.Tensor,
    feature: nn.Module,
    logits_feature: nn.Module | None = None,
    batch_size: int = 100,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """FID-style distance and KID between ``generated`` and ``reference`` images in ``[-1, 1]``,
    plus IS of ``generated`` when ``logits_feature`` is given.

    Keys are named after the feature network: ``fid, kid_mean, kid_std, is_mean, is_std`` for
    Inception, ``fd_judge, kd_judge_mean, ...`` for the judge. KID's subset size is capped at the
    smaller set's size; KID/IS subset draws use ``seed`` without touching the global RNG.
    """
    fd_name, kd_name, is_name = _metric_names(feature)
    device = next(iter(feature.parameters()), torch.empty(0)).device
    fid = make_fid(feature).to(device)
    kid = make_kid(feature, kid_subsets, min(kid_subset_size, len(generated), len(reference))).to(device)
    for images, real in ((reference, True), (generated, False)):
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(device)
            fid.update(batch, real=real)
            kid.update(batch, real=real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = {fd_name: float(fid.compute())}
        kid_mean, kid_std = kid.compute()
        out[f"{kd_name}_mean"], out[f"{kd_name}_std"] = float(kid_mean), float(kid_std)
        if logits_feature is not None:
            is_metric = make_inception_score(logits_feature, is_splits).to(device)
            for i in range(0, len(generated), batch_size):
                is_metric.update(generated[i : i + batch_size].to(device))
            is_mean, is_std = is_metric.compute()
            out[f"{is_name}_mean"], out[f"{is_name}_std"] = float(is_mean), float(is_std)
    return out
