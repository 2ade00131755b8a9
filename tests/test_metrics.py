"""Tests of shared/metrics: Fréchet distance (against scipy and closed forms), sliced
Wasserstein, the committed digits judge (accuracy, FD_judge behaviour, loading errors, retrain
determinism) and the torchmetrics FID/KID/IS path with the judge as the feature network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from shared.data.digits import DigitsDataset, real_splits
from shared.metrics.fid import compute_image_metrics, inception_feature, judge_feature, make_fid, make_kid
from shared.metrics.frechet import fd_from_features, frechet_distance, gaussian_stats
from shared.metrics.judge import (
    DEFAULT_JUDGE_PATH,
    DigitsJudge,
    fd_judge,
    judge_accuracy,
    judge_features,
    load_judge,
)
from shared.metrics.sliced_wasserstein import sliced_wasserstein


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The judge is tiny: intra-op threads only add overhead, and much more of it on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- Fréchet distance
def _scipy_fd(mu1, s1, mu2, s2):
    """The pytorch-fid formula with scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_matches_scipy_on_random_gaussians():
    rng = np.random.default_rng(0)
    for d in (1, 5, 32):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
        assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)  # symmetric
        assert ours == pytest.approx(
            frechet_distance(torch.tensor(mu1), torch.tensor(s1), mu2, s2), rel=1e-12
        )


def test_frechet_closed_forms():
    rng = np.random.default_rng(1)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    diagonal = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(diagonal, rel=1e-10)
    s = _random_spd(rng, 16)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0, abs=1e-9)
    # singular covariances: N(0, diag(1, 0)) vs N(0, diag(0, 1)) -> 1 + 1 - 2 * 0
    assert frechet_distance(np.zeros(2), np.diag([1.0, 0]), np.zeros(2), np.diag([0, 1.0])) == pytest.approx(
        2
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_frechet_on_few_samples_of_wide_features_survives_eigh_failures(monkeypatch):
    """Three samples of 512 features, most of them never active (zero variance in both sets, as random-weight
    Inception pool units): the value equals the FD on the active features plus the mean term of the dead ones
    (they add nothing to the trace terms), and equals it again when LAPACK's eigh refuses to converge, as it did
    once in CI on such a covariance (the SVD gives the same decomposition)."""
    rng = np.random.default_rng(3)
    a, b = np.zeros((3, 512)), np.zeros((3, 512))
    a[:, :40], b[:, 20:60] = rng.random((3, 40)), rng.random((3, 40))
    b[:, 500] = 2.0                                    # a constant unit: no variance, but a mean difference
    active = slice(0, 60)
    want = fd_from_features(a[:, active], b[:, active]) + 4.0
    assert fd_from_features(a, b) == pytest.approx(want, rel=1e-7)

    def refuse(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", refuse)
    monkeypatch.setattr(torch.linalg, "eigvalsh", refuse)
    assert fd_from_features(a, b) == pytest.approx(want, rel=1e-7)
    s = _random_spd(rng, 16)
    mu = rng.standard_normal(16)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-8)


def test_gaussian_stats_and_fd_from_features():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 6))
    mu, sigma = gaussian_stats(torch.tensor(a, dtype=torch.float32))
    assert mu.dtype == sigma.dtype == torch.float64
    assert np.allclose(sigma.numpy(), np.cov(a, rowvar=False), atol=1e-6)
    assert np.allclose(mu.numpy(), a.mean(0), atol=1e-6)
    assert fd_from_features(a, a) == pytest.approx(0, abs=1e-9)
    # N(0, I) vs N(m, 4 I) in d = 6: |m|^2 + 6 * (2 - 1)^2
    big_a = rng.standard_normal((20000, 6))
    big_b = 2 * rng.standard_normal((20000, 6)) + 0.5
    assert fd_from_features(big_a, big_b) == pytest.approx(6 * 0.25 + 6, rel=0.03)
    with pytest.raises(ValueError, match="n >= 2"):
        gaussian_stats(np.zeros((1, 3)))


# ---------------------------------------------------------------- sliced Wasserstein
def test_sliced_wasserstein_behaviour():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 2, generator=g)
    assert sliced_wasserstein(a, a) == 0
    shift = torch.tensor([3.0, -1.0])
    sw = sliced_wasserstein(a, a + shift, num_projections=1000)
    assert sw == pytest.approx(shift.norm().item() / np.sqrt(2), rel=0.05)  # |s| / sqrt(d)
    assert sliced_wasserstein(a, a + 2 * shift) == pytest.approx(
        2 * sliced_wasserstein(a, a + shift), rel=1e-9
    )
    b = torch.randn(1000, 2, generator=g) + shift
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a), rel=1e-12)
    assert sliced_wasserstein(a, b, seed=1) != sliced_wasserstein(a, b, seed=2)
    # unequal sizes: quantile interpolation agrees with the equal-size estimate
    assert sliced_wasserstein(a, b[:400]) == pytest.approx(sliced_wasserstein(a, b), rel=0.1)
    same_law = torch.randn(700, 2, generator=g)
    assert sliced_wasserstein(a, same_law) < 0.2 < 0.4 < sliced_wasserstein(a, same_law * 1.5)  # W2 = 0.5
    with pytest.raises(ValueError):
        sliced_wasserstein(a, torch.randn(10, 3))


# ---------------------------------------------------------------- the digits judge
@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.mark.parametrize("size", [8, 16, 32])
def test_judge_accuracy_on_test_split(judge, size):
    test = DigitsDataset("test", size=size)
    assert judge_accuracy(test.images, test.labels, judge) > 0.95
    shuffled = test.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))]
    assert judge_accuracy(test.images, shuffled, judge) < 0.3


def test_fd_judge_ranks_image_sets(judge):
    a, b = real_splits(size=16)
    feats = judge_features(a, judge, batch_size=50)
    assert feats.shape == (len(a), judge.feature_dim) and feats.dtype == torch.float32
    real_vs_real = fd_judge(a, b, judge)
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(a, 3, stride=1, padding=1)
    threes = DigitsDataset("train", size=16, classes=[3]).images  # mode collapse
    assert real_vs_real < 3
    assert fd_judge(blurred, b, judge) > 2 * real_vs_real
    assert fd_judge(threes, b, judge) > 10 * real_vs_real
    assert fd_judge(noise, b, judge) > 10 * real_vs_real
    assert fd_judge(a, gaussian_stats(judge_features(b, judge)), judge) == pytest.approx(
        real_vs_real, rel=1e-6
    )
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        judge_features(torch.zeros(2, 3, 16, 16), judge)


def test_committed_record_matches_weights(judge):
    from shared.metrics.train_judge import state_sha256

    record = json.loads(DEFAULT_JUDGE_PATH.with_suffix(".json").read_text())
    assert record["test_accuracy"] > 0.95 and record["command"].startswith(
        "python -m shared.metrics.train_judge"
    )
    assert record["state_sha256"] == state_sha256(judge.state_dict())


def test_load_judge_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_judge"):
        load_judge(tmp_path / "absent.safetensors")
    state = DigitsJudge().state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["feature.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(RuntimeError, match=r"feature\.weight.*head\.bias.*extra\.weight"):
        load_judge(bad)


def test_retraining_is_deterministic():
    from shared.metrics.train_judge import state_sha256, train_judge

    def run(seed):
        return state_sha256(train_judge(seed=seed, epochs=1, max_steps=4, evaluate=False)[0].state_dict())

    first = run(0)
    assert run(0) == first and run(1) != first


# ---------------------------------------------------------------- torchmetrics FID / KID / IS
def test_torchmetrics_with_judge_feature(judge):
    a, b = real_splits(size=16)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 1, 16, 16, generator=g) * 2 - 1
    feature = judge_feature(judge)
    assert feature.num_features == 64

    real = compute_image_metrics(
        a, b, feature, judge_feature(judge, "logits"), kid_subsets=20, kid_subset_size=100
    )
    fake = compute_image_metrics(noise, b, feature, judge_feature(judge, "logits"), kid_subsets=20,
                                 kid_subset_size=100)  # fmt: skip
    assert set(real) == {"fd_judge", "kd_judge_mean", "kd_judge_std", "is_judge_mean", "is_judge_std"}
    # torchmetrics' FID over judge features equals our FD_judge
    assert real["fd_judge"] == pytest.approx(fd_judge(a, b, judge), rel=1e-3)
    assert fake["fd_judge"] > 10 * real["fd_judge"]
    assert abs(real["kd_judge_mean"]) < 0.1 < fake["kd_judge_mean"]
    assert real["is_judge_mean"] > 7 > 2 > fake["is_judge_mean"]  # 10 balanced confident classes vs few
    again = compute_image_metrics(a, b, feature, kid_subsets=20, kid_subset_size=100)
    assert again["kd_judge_mean"] == real["kd_judge_mean"]  # KID subsets drawn from `seed`

    fid = make_fid(feature)
    fid.update(a[:100], real=True)
    fid.update(a[:100], real=False)
    assert float(fid.compute()) == pytest.approx(0, abs=1e-2)
    kid = make_kid(feature, subsets=5, subset_size=50)
    kid.update(a[:100], real=True)
    kid.update(noise[:100], real=False)
    assert float(kid.compute()[0]) > 0.1


def test_inception_needs_a_local_file(tmp_path):
    for path in (None, tmp_path / "pt_inception.pth"):
        with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
            inception_feature(path)
