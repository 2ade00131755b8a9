"""The oscillating-scenes judge's fixed spectral front end and its weight file (architecture in the metadata)."""
from __future__ import annotations

import pytest
import torch

from shared.metrics.oscillation_judge import OscillationJudge, load_oscillation_judge, temporal_spectrum


def test_temporal_spectrum_peaks_at_the_oscillation_frequency_for_any_length():
    freqs = torch.tensor([0.02, 0.05, 0.1, 0.3])
    for T in (40, 150):
        t = torch.arange(T, dtype=torch.float32)
        x = (0.5 + torch.sin(2 * torch.pi * 0.1 * t + 0.3)).reshape(1, 1, T, 1, 1).expand(2, 3, T, 2, 2)
        p = temporal_spectrum(x, freqs)                      # (2, 3 * 4, 2, 2), colour-major
        assert p.shape == (2, 12, 2, 2)
        per_freq = p.reshape(2, 3, 4, 2, 2)[0, 0, :, 0, 0]
        assert int(per_freq.argmax()) == 2 and per_freq[2] > 10 * per_freq[[0, 3]].max()


def test_a_frozen_clip_has_no_motion_power_and_shuffled_frames_spread_it_upwards():
    judge = OscillationJudge()
    T = 150
    t = torch.arange(T, dtype=torch.float32)
    still = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    frozen = still.expand(1, 3, T, 32, 32)
    assert judge.spectrum(frozen).abs().max() < 1e-5
    clip = (still + 0.3 * torch.sin(2 * torch.pi * 0.03 * t).reshape(1, 1, T, 1, 1)).clamp(-1, 1)
    shuffled = clip[:, :, torch.randperm(T, generator=torch.Generator().manual_seed(0))]
    s_clip, s_shuf = (judge.spectrum(v).reshape(3, -1, 32, 32).mean(dim=(0, 2, 3)) for v in (clip, shuffled))
    high = torch.tensor(judge.frequencies) >= 0.2
    assert s_shuf[high].mean() > 5 * s_clip[high].mean()


def test_weights_round_trip_through_the_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    judge = OscillationJudge(frequencies=(0.05, 0.1, 0.4), gain=3.0, motion_width=8, appearance_width=8).eval()
    path = tmp_path / "judge.safetensors"
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path), metadata=judge.metadata())
    loaded = load_oscillation_judge(path)
    assert loaded.frequencies == (0.05, 0.1, 0.4) and loaded.gain == 3.0
    v = torch.rand(2, 3, 12, 32, 32) * 2 - 1
    assert torch.equal(loaded.features(v), judge.features(v))


def test_bad_inputs_are_one_line_errors(tmp_path):
    judge = OscillationJudge()
    with pytest.raises(ValueError, match="at least 2 frames"):
        judge.features(torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        judge.features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="cycles per frame"):
        OscillationJudge(frequencies=(0.0, 0.7))
    with pytest.raises(FileNotFoundError, match="train_oscillation_judge"):
        load_oscillation_judge(tmp_path / "missing.safetensors")
