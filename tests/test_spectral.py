"""Spectral volumes (FFT round trips, loops, bins), their normalisation, and softmax splatting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.data.spectral import (
    SpectralNormalizer,
    flatten_volume,
    frequency_bins,
    motion_importance,
    spectral_volume,
    trajectories,
    unflatten_volume,
)
from shared.nn.splatting import softmax_splat


def _bandlimited(T: int, K: int, H: int = 3, W: int = 4, seed: int = 0) -> torch.Tensor:
    """Random real trajectories (2, T, H, W) whose spectrum lives in the bins 0..K-1 of a T-frame window."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)
    out = torch.zeros(2, T, H, W, dtype=torch.float64)
    for k in range(K):
        a = torch.randn(2, 1, H, W, generator=g, dtype=torch.float64)
        b = torch.randn(2, 1, H, W, generator=g, dtype=torch.float64) * (0 < k < T / 2)
        ang = 2 * math.pi * k * t / T
        out += a * torch.cos(ang)[None, :, None, None] + b * torch.sin(ang)[None, :, None, None]
    return out


@pytest.mark.parametrize("T,K", [(32, 8), (33, 5), (150, 16)])
def test_round_trip_exact_for_band_limited_trajectories(T, K):
    d = _bandlimited(T, K)
    S = spectral_volume(d, K)
    assert S.shape == (K, 4, 3, 4) and S.dtype == torch.float64
    assert torch.allclose(trajectories(S, T, T), d, atol=1e-10)
    # ...and the volume of the reconstruction is the volume: nothing leaks out of the K bins.
    assert torch.allclose(spectral_volume(trajectories(S, T, T), K), S, atol=1e-12)
    # Truncation is not the identity on a signal with energy above the K bins.
    d_high = d + _bandlimited(T, K + 3, seed=1) - _bandlimited(T, K, seed=1)
    assert (trajectories(spectral_volume(d_high, K), T, T) - d_high).abs().max() > 1e-2


@pytest.mark.parametrize("T", [16, 17])
def test_all_bins_reconstruct_any_signal_and_match_irfft(T):
    d = torch.randn(2, 2, T, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # batch of 2
    K = T // 2 + 1
    S = spectral_volume(d, K)
    assert S.shape == (2, K, 4, 3, 3)
    assert torch.allclose(trajectories(S, T, T), d, atol=1e-10)
    spec = torch.fft.rfft(d, dim=-3, norm="forward")
    assert torch.allclose(S[:, :, 0], spec[:, 0].real) and torch.allclose(S[:, :, 3], spec[:, 1].imag)


def test_any_horizon_loops_and_interpolates():
    T, K = 40, 6
    d = _bandlimited(T, K)
    S = spectral_volume(d, K)
    long = trajectories(S, T, 3 * T)
    assert long.shape == (2, 3 * T, 3, 4)
    assert torch.allclose(long[:, T : 2 * T], d, atol=1e-10) and torch.allclose(long[:, 2 * T :], d, atol=1e-10)
    # Fractional times follow the band-limited continuous signal (slow motion).
    t = torch.tensor([0.5, 7.25, 39.9], dtype=torch.float64)
    tt = torch.arange(T, dtype=torch.float64)
    ref = torch.zeros(2, 3, 3, 4, dtype=torch.float64)
    for k in range(K):  # evaluate the trigonometric interpolant directly from the DFT
        c = (d * torch.exp(-2j * math.pi * k * tt / T)[None, :, None, None]).sum(1) / T
        w = 1.0 if k == 0 else 2.0
        ref += w * (c[:, None] * torch.exp(2j * math.pi * k * t / T)[None, :, None, None]).real
    assert torch.allclose(trajectories(S, T, t), ref, atol=1e-10)


def test_pure_sinusoid_lands_in_its_bin():
    T, K, m, A, phi = 64, 16, 5, 1.7, 0.4
    t = torch.arange(T, dtype=torch.float64)
    d = torch.zeros(2, T, 2, 2, dtype=torch.float64)
    d[0] = (A * torch.cos(2 * math.pi * m * t / T + phi))[:, None, None]
    d[1] = 0.3  # constant y offset: DC only
    S = spectral_volume(d, K)[:, :, 0, 0]  # (K, 4)
    mag_x = torch.sqrt(S[:, 0] ** 2 + S[:, 1] ** 2)
    assert int(mag_x.argmax()) == m and torch.isclose(mag_x[m], torch.tensor(A / 2, dtype=torch.float64))
    assert math.isclose(math.atan2(float(S[m, 1]), float(S[m, 0])), phi, abs_tol=1e-9)
    assert torch.all(mag_x[torch.arange(K) != m] < 1e-12)
    assert torch.isclose(S[0, 2], torch.tensor(0.3, dtype=torch.float64)) and S[1:, 2:].abs().max() < 1e-12
    assert frequency_bins(T, K)[m] == m / T


def test_flatten_and_errors():
    S = torch.randn(2, 16, 4, 5, 5)
    flat = flatten_volume(S)
    assert flat.shape == (2, 64, 5, 5) and torch.equal(flat[:, 4 * 3 + 2], S[:, 3, 2])
    assert torch.equal(unflatten_volume(flat), S)
    with pytest.raises(ValueError, match="num_freqs must lie in"):
        spectral_volume(torch.zeros(2, 10, 4, 4), 7)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, T, H, W\)"):
        spectral_volume(torch.zeros(3, 10, 4, 4), 2)
    with pytest.raises(ValueError, match="4K channels"):
        unflatten_volume(torch.zeros(6, 2, 2))


def test_motion_importance_is_mean_magnitude():
    d = torch.zeros(2, 4, 1, 2)
    d[0, :, 0, 0] = torch.tensor([3.0, 0.0, 3.0, 0.0])
    d[1, :, 0, 0] = torch.tensor([4.0, 0.0, 4.0, 0.0])
    w = motion_importance(d)
    assert w.shape == (1, 1, 2) and torch.allclose(w[0, 0], torch.tensor([2.5, 0.0]))


# -- normalisation ---------------------------------------------------------------------------------------


def _decaying_volumes(n=64, K=8, seed=0) -> torch.Tensor:
    """Volumes whose coefficient scale falls by 10x per frequency step over the bins (as natural motion)."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (-torch.arange(K, dtype=torch.float64) / 2)
    return torch.randn(n, K, 4, 6, 6, generator=g, dtype=torch.float64) * scale[:, None, None, None]


def test_frequency_adaptive_normalisation_fit_and_inverse():
    v = _decaying_volumes()
    norm = SpectralNormalizer(num_freqs=8, per_frequency=True, power=0.5, percentile=95).fit(v)
    mods = torch.sqrt(v[:, :, 0::2] ** 2 + v[:, :, 1::2] ** 2)  # complex moduli of x and y
    expect = np.percentile(mods.movedim(1, 0).reshape(8, -1).numpy(), 95, axis=1)
    assert np.allclose(norm.scale.numpy(), expect)
    z = norm.normalize(v)
    assert torch.allclose(norm.denormalize(z), v, atol=1e-12, rtol=0)
    v32 = v.float()
    assert torch.allclose(norm.denormalize(norm(v32)), v32, rtol=1e-5, atol=1e-12)
    # Every frequency now spans the same range (the raw medians differ 10^3.5-fold from bin 0 to bin 7).
    per_freq = z.abs().movedim(1, 0).reshape(8, -1).median(dim=1).values
    assert per_freq.max() / per_freq.min() < 1.2
    # The square root pulls small coefficients away from zero: |z| = sqrt(|S| / s) > |S| / s below s.
    small = (v.abs() < norm.scale[:, None, None, None]) & (v != 0)
    assert torch.all(z.abs()[small] > (v.abs() / norm.scale[:, None, None, None])[small])


def test_global_normalisation_ablation():
    v = _decaying_volumes()
    glob = SpectralNormalizer(num_freqs=8, per_frequency=False, power=1.0, percentile=95).fit(v)
    assert torch.allclose(glob.scale, glob.scale[0].expand(8))
    z = glob.normalize(v)
    assert torch.allclose(z * glob.scale[0], v)  # linear
    assert torch.allclose(glob.denormalize(z), v, atol=1e-12)
    # High frequencies collapse towards zero under one global scale, unlike the adaptive normalisation.
    adaptive = SpectralNormalizer(num_freqs=8, per_frequency=True, power=0.5, percentile=95).fit(v)
    hi_glob = z[:, -1].abs().median()
    hi_adapt = adaptive.normalize(v)[:, -1].abs().median()
    assert hi_glob < 1e-2 and hi_adapt > 0.3


def test_normaliser_state_and_errors():
    v = _decaying_volumes(n=8, K=4)
    norm = SpectralNormalizer(4, per_frequency=True, power=0.5, percentile=95)
    with pytest.raises(RuntimeError, match="before fit"):
        norm.normalize(v)
    norm.fit([v[:4], v[4:]])  # an iterable of chunks works too
    other = SpectralNormalizer(4, per_frequency=True, power=0.5, percentile=95)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.normalize(v), norm.normalize(v))
    zero = v.clone()
    zero[:, 2] = 0
    with pytest.raises(ValueError, match=r"bins \[2\]"):
        SpectralNormalizer(4, per_frequency=True, power=0.5, percentile=95).fit(zero)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4, H, W\)"):
        norm.normalize(torch.zeros(5, 4, 6, 6))
    with pytest.raises(ValueError, match="percentile"):
        SpectralNormalizer(4, per_frequency=True, power=0.5, percentile=0)


# -- softmax splatting -----------------------------------------------------------------------------------


def test_splat_integer_shift_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g)
    flow = torch.zeros(2, 2, 7, 9)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # 2 right, 1 up
    z = torch.randn(2, 1, 7, 9, generator=g)
    assert torch.equal(softmax_splat(x, flow)[:, :, :6, 2:], x[:, :, 1:, :7])  # bit-exact with equal weights
    out, w = softmax_splat(x, flow, z, return_weight=True)
    assert torch.allclose(out[:, :, :6, 2:], x[:, :, 1:, :7], rtol=1e-6, atol=0)  # x e^z / e^z: rounding only
    assert torch.all(out[:, :, 6:] == 0) and torch.all(out[:, :, :, :2] == 0)  # holes
    assert torch.all(w[:, :, 6:] == 0) and torch.all(w[:, :, :6, 2:] > 0)


def test_splat_zero_flow_is_identity():
    x = torch.randn(1, 4, 5, 6)
    zero = torch.zeros(1, 2, 5, 6)
    assert torch.allclose(softmax_splat(x, zero), x, atol=1e-6)
    assert torch.allclose(softmax_splat(x, zero, torch.randn(1, 1, 5, 6) * 10), x, atol=1e-6)


def test_splat_subpixel_bilinear_weights_and_softmax_occlusion():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 5.0
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, :, 1, 1] = torch.tensor([0.25, 0.5])  # source (1, 1) -> (x 1.25, y 1.5)
    importance = torch.full((1, 1, 4, 4), -1e4)  # the moving pixel dominates everywhere it lands
    importance[0, 0, 1, 1] = 0.0
    out, w = softmax_splat(x, flow, importance, return_weight=True)
    expect = torch.zeros(4, 4)
    expect[1, 1], expect[1, 2], expect[2, 1], expect[2, 2] = 0.75 * 0.5, 0.25 * 0.5, 0.75 * 0.5, 0.25 * 0.5
    assert torch.allclose(w[0, 0], expect, atol=1e-6)  # bilinear weights where it lands, 0 elsewhere
    assert torch.allclose(out[0, 0][expect > 0], torch.full((4,), 5.0), atol=1e-3)
    # Two pixels landing on one target: the importance decides, equal importance averages.
    x = torch.tensor([[[[1.0, 3.0]]]])
    flow = torch.zeros(1, 2, 1, 2)
    flow[0, 0, 0, 0] = 1.0  # pixel 0 moves onto pixel 1
    avg = softmax_splat(x, flow)
    assert torch.allclose(avg[0, 0, 0, 1], torch.tensor(2.0))
    front = softmax_splat(x, flow, torch.tensor([[[[0.0, -30.0]]]]))
    back = softmax_splat(x, flow, torch.tensor([[[[-30.0, 0.0]]]]))
    assert torch.allclose(front[0, 0, 0, 1], torch.tensor(1.0)) and torch.allclose(back[0, 0, 0, 1], torch.tensor(3.0))


def test_splat_is_differentiable():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64) * 1.6 - 0.8 + 0.1).requires_grad_()
    z = torch.randn(1, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, f, i: softmax_splat(a, f, i), (x, flow, z), eps=1e-6, atol=1e-5)


def test_splat_errors():
    with pytest.raises(ValueError, match="flow must be"):
        softmax_splat(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="non-finite"):
        softmax_splat(torch.zeros(1, 3, 4, 4), torch.full((1, 2, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="importance must be"):
        softmax_splat(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
