"""FID / KID / IS through torchmetrics, with feature networks that never download.

- FID (Heusel et al., 2017), KID (Bińkowski et al., 2018, polynomial-kernel MMD over random
  subsets) and IS (Salimans et al., 2016) are torchmetrics' implementations, always given a
  feature ``nn.Module`` (never ``feature=<int>``, which makes torchmetrics build Inception itself
  and fetch its weights).
- ``inception_feature(weights_path)``: the FID Inception of :mod:`shared.metrics.inception` (the TF
  ``inception-2015-12-05`` graph, pytorch-fid's port) loaded from a LOCAL weights file
  (``pt_inception-2015-12-05-6726825d.pth``); a missing path is a one-line ``FileNotFoundError``
  before anything else happens.
- The evaluation protocol of ``shared.engine.evaluate`` (:func:`image_metrics`): FID against a reference
  statistics file in the format users already have — pytorch-fid's ``--save-stats`` ``.npz`` (``mu``, ``sigma``)
  or a guided-diffusion / ADM reference batch (``arr_0`` uint8 images ``(N, H, W, 3)``, with or without its ``mu``,
  ``sigma``); KID needs reference *images* (``arr_0``), IS none. :func:`read_reference` / :func:`save_stats`.
- ``judge_feature()``: the digits judge (``shared.metrics.judge``) as a torchmetrics feature
  module. Numbers from it are *judge* metrics (``fd_judge``, ``kd_judge``, ``is_judge``), never
  "FID".

Feature modules here take images in the project's convention, ``(N, C, H, W)`` float in
``[-1, 1]``, and carry ``num_features`` (torchmetrics reads it instead of running a dummy image).
"""

from __future__ import annotations

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
    "read_reference",
    "save_stats",
    "inception_score",
    "image_metrics",
    "image_metrics_from_features",
]


class InceptionFeature(nn.Module):
    """``[-1, 1]`` images (1 or 3 channels, any size) -> FID Inception pool features or logits (torchmetrics'
    feature-module interface: ``num_features``)."""

    tag = "inception"

    def __init__(self, fn, num_features: int, net: nn.Module):
        super().__init__()
        self.fn, self.num_features, self.inception = fn, int(num_features), net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def inception_feature(weights_path: str | Path | None, output: str = "pool") -> InceptionFeature:
    """The FID Inception-v3 from a local weights file; ``output``: ``"pool"`` (2048-d, for FID/KID) or
    ``"logits"`` (1008 logits, for IS)."""
    from shared.metrics.inception import load_fid_inception

    outputs = {"pool": 2048, "logits": 1008}
    if output not in outputs:
        raise ValueError(f"output must be one of {list(outputs)}, got {output!r}")
    net = load_fid_inception(weights_path)
    return InceptionFeature(net.features if output == "pool" else net.logits, outputs[output], net)


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


# ============================================================================ evaluation protocol (FID/KID/IS)
def read_reference(path: str | Path) -> dict:
    """A reference file: ``{"mu", "sigma"}`` when it carries statistics, ``"images"`` (uint8 ``(N, H, W, 3)`` or
    videos ``(N, T, H, W, 3)``) when it carries ``arr_0``. One-line errors name the file and the keys expected."""
    import numpy as np

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"reference statistics not found at '{path}': expected a pytorch-fid stats .npz "
                                "(mu, sigma) or an ADM reference batch .npz (arr_0); see docs/DATA_AND_WEIGHTS.md")
    try:
        data = np.load(p)
        keys = set(data.files)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read reference file {p}: {type(e).__name__}") from None
    out = {}
    if {"mu", "sigma"} <= keys:
        out["mu"], out["sigma"] = data["mu"], data["sigma"]
    if "arr_0" in keys:
        out["images"] = data["arr_0"]
    if not out:
        raise ValueError(f"{p} has keys {sorted(keys)}; expected mu and sigma (pytorch-fid --save-stats) or arr_0 "
                         "(uint8 images, an ADM reference batch)")
    return out


def save_stats(path: str | Path, mu, sigma) -> Path:
    """Write statistics as pytorch-fid's ``--save-stats`` does (``np.savez_compressed(path, mu=, sigma=)``)."""
    import numpy as np

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(p, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64))
    return p


def uint8_to_unit(images) -> torch.Tensor:
    """uint8 ``(..., H, W, C)`` (an ``arr_0``) -> float ``(..., C, H, W)`` in [-1, 1]."""
    x = torch.as_tensor(images)
    x = x.movedim(-1, -3) if x.shape[-1] in (1, 3) else x
    return x.float() / 127.5 - 1


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split; mean and std."""
    p = torch.softmax(logits.double(), dim=1)
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)
        kl = (part * (torch.log(part.clamp_min(1e-30)) - torch.log(py.clamp_min(1e-30)))).sum(1).mean()
        scores.append(float(torch.exp(kl)))
    t = torch.tensor(scores)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


def batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])


def image_metrics(samples: torch.Tensor, reference: str | Path | dict, inception, metrics=("fid", "kid", "is"),
                  batch_size: int = 100, kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                  seed: int = 0) -> dict:
    """FID / KID / IS of ``samples`` (``(N, C, H, W)`` in [-1, 1]) with the FID Inception ``inception``
    (:class:`shared.metrics.inception.FIDInceptionV3`) against ``reference`` (a file for :func:`read_reference`,
    or its dict)."""
    pool, logits = [], []
    for i in range(0, len(samples), batch_size):
        f, lg = inception.features_and_logits(samples[i : i + batch_size])
        pool.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return image_metrics_from_features(torch.cat(pool), torch.cat(logits), reference, inception, metrics,
                                       batch_size, kid_subsets, kid_subset_size, is_splits, seed)


def image_metrics_from_features(pool: torch.Tensor, logits: torch.Tensor, reference: str | Path | dict, inception,
                                metrics=("fid", "kid", "is"), batch_size: int = 100, kid_subsets: int = 100,
                                kid_subset_size: int = 1000, is_splits: int = 10, seed: int = 0) -> dict:
    """:func:`image_metrics` from the samples' Inception pool features ``(N, 2048)`` and logits ``(N, 1008)``.
    KID's subset size is capped at the smaller set (the standard protocol: 100 subsets of 1000); its subsets are
    drawn from ``seed``. IS uses ``is_splits`` splits (10)."""
    from shared.metrics.frechet import frechet_distance, gaussian_stats
    from shared.metrics.video import kvd

    metrics = [m.lower() for m in metrics]
    unknown = sorted(set(metrics) - {"fid", "kid", "is"})
    if unknown:
        raise ValueError(f"unknown image metric(s) {unknown}; choose from fid, kid, is")
    ref = read_reference(reference) if not isinstance(reference, dict) else reference
    out: dict = {}
    ref_feats = None
    if "images" in ref and ("kid" in metrics or ("fid" in metrics and "mu" not in ref)):
        ref_feats = batched(inception.features, uint8_to_unit(ref["images"]), batch_size).double()
    if "fid" in metrics:
        mu_r, sigma_r = (ref["mu"], ref["sigma"]) if "mu" in ref else gaussian_stats(ref_feats)
        out["fid"] = frechet_distance(*gaussian_stats(pool), mu_r, sigma_r)
    if "kid" in metrics:
        if ref_feats is None:
            raise ValueError("KID needs reference images (arr_0 in the reference .npz); the file has statistics only")
        size = min(kid_subset_size, len(pool), len(ref_feats))
        out["kid"] = kvd(pool, ref_feats, subset_size=size, num_subsets=kid_subsets, seed=seed)
    if "is" in metrics:
        out["is_mean"], out["is_std"] = inception_score(logits, min(is_splits, len(logits)))
    out["num_samples"] = int(len(pool))
    return out
