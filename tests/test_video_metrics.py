"""Video metrics (consistency, flicker, PSNR/SSIM, FVD/KVD, I3D loading) and the MovingDigits video judge."""

from __future__ import annotations

import pytest
import torch

from shared.data.video_worlds import MovingDigits
from shared.metrics.video import (
    frame_consistency,
    frame_difference,
    fvd_from_features,
    i3d_features,
    kvd,
    load_i3d,
    psnr,
    ssim,
)
from shared.metrics.video_judge import (
    DEFAULT_VIDEO_JUDGE_PATH,
    VideoJudge,
    digit_accuracy,
    fvd_judge,
    load_video_judge,
    motion_accuracy,
    video_judge_features,
)


def _batch(ds, start: int, n: int):
    items = [ds[start + i] for i in range(n)]
    return (
        torch.stack([it["x"] for it in items]),
        torch.stack([it["y"] for it in items]),
        torch.stack([it["direction"] for it in items]),
    )


# -- consistency, flicker, PSNR, SSIM ----------


def test_frame_consistency_and_difference():
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 3, 1, 16, 16, generator=g) * 2 - 1
    static = frame.expand(-1, -1, 8, -1, -1)
    assert frame_consistency(static) == pytest.approx(1.0, abs=1e-6)
    assert frame_difference(static) == 0.0
    noisy = torch.rand(3, 3, 8, 16, 16, generator=g) * 2 - 1
    assert frame_consistency(noisy) < 0.5 and frame_difference(noisy) > 0.3
    per_video = frame_consistency(torch.cat([static, noisy]), reduction="none")
    assert per_video.shape == (6,) and torch.all(per_video[:3] > per_video[3:])
    # A custom feature network sees frames (N, C, H, W).
    seen = []

    def feats(x):
        seen.append(x.shape)
        return x.mean(dim=(2, 3))

    assert frame_consistency(static, feats) == pytest.approx(1.0, abs=1e-6)
    assert seen == [(24, 3, 16, 16)]
    # Moving digits are smooth, the same frames shuffled in time flicker.
    v = MovingDigits(n=4)[0]["x"][None]
    shuffled = v[:, :, torch.randperm(16, generator=g)]
    assert frame_difference(shuffled) > frame_difference(v)


def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 4, 32, 32, generator=g) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    mse = ((a - b) ** 2).mean(dim=(1, 3, 4))
    assert psnr(a, b) == pytest.approx(float((10 * torch.log10(4 / mse)).mean()), rel=1e-5)
    assert psnr(a, b, reduction="none").shape == (2, 4)
    assert psnr(a, a) > 100
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert 0 < ssim(a, b) < 0.95
    # Matches torchmetrics frame by frame (same window, data range 2).
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    ref = tm_ssim(a[0, :, 1][None], b[0, :, 1][None], data_range=2.0)
    assert ssim(a, b, reduction="none")[0, 1] == pytest.approx(float(ref), abs=1e-5)
    assert ssim(a[..., :8, :8], b[..., :8, :8]) < 1  # frames smaller than the window
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, b[:, :, :2])


# -- FVD / KVD ----------


def test_fvd_from_features_and_kvd():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g)
    assert fvd_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(300, 16, generator=g)
    shifted = b + 1.0
    assert fvd_from_features(a, shifted) > 10 * fvd_from_features(a, b)
    assert abs(kvd(a, b)) < 0.05 and kvd(a, shifted) > 10 * abs(kvd(a, b))
    assert kvd(a, shifted, subset_size=100, num_subsets=10) == pytest.approx(kvd(a, shifted), rel=0.3)
    # Same estimator as torchmetrics' KID (polynomial kernel, degree 3, unbiased).
    from torchmetrics.image.kid import poly_mmd

    assert kvd(a, shifted) == pytest.approx(float(poly_mmd(a.double(), shifted.double())), rel=1e-6)


def test_i3d_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "i3d_torchscript.pt"
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript\.pt.*nothing is downloaded") as err:
        load_i3d(missing)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="I3D"):
        i3d_features(torch.zeros(1, 3, 4, 8, 8), str(missing))


class _FakeI3D(torch.nn.Module):
    """The calling convention of the StyleGAN-V I3D TorchScript detector, randomly initialised."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_i3d_torchscript_loader_and_features(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    detector = load_i3d(path)
    seen = []
    detector_calls = detector.forward

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = detector

        def forward(self, x, rescale=True, resize=True, return_features=False):
            seen.append((tuple(x.shape), float(x.min()), float(x.max())))
            return detector_calls(x, rescale=rescale, resize=resize, return_features=return_features)

    videos = torch.rand(3, 1, 5, 16, 24) * 2 - 1
    feats = i3d_features(videos, Spy(), batch_size=2)
    assert feats.shape == (3, 400)
    assert seen[0][0] == (2, 3, 5, 224, 224) and seen[0][1] >= -1 and seen[0][2] <= 1
    assert torch.allclose(i3d_features(videos, str(path)), feats, atol=1e-5)


# -- the MovingDigits video judge ----------


@pytest.fixture(scope="module")
def judge() -> VideoJudge:
    return load_video_judge()


def test_video_judge_accuracy_on_held_out_videos(judge):
    for frames, size, n in ((16, 32, 150), (8, 16, 150)):
        x, y, d = _batch(MovingDigits(n=n, frames=frames, size=size, split="test", seed=4242), 0, n)
        assert digit_accuracy(x, y, judge) > 0.85, (frames, size)
        assert motion_accuracy(x, d, judge) > 0.9, (frames, size)


def test_fvd_judge(judge):
    from shared.metrics.frechet import gaussian_stats

    test = MovingDigits(n=300, split="test", seed=7)
    a, _, _ = _batch(test, 0, 150)
    b, _, _ = _batch(test, 150, 150)
    fb = video_judge_features(b, judge)
    assert fb.shape == (150, judge.feature_dim)
    real = fvd_judge(a, gaussian_stats(fb), judge)  # reference given as precomputed statistics
    assert real == pytest.approx(fvd_from_features(video_judge_features(a, judge), fb), rel=1e-6)
    assert fvd_from_features(fb, fb) == pytest.approx(0.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    static = a[:, :, :1].expand_as(a).contiguous()  # frozen first frame: no motion
    shuffled = a[:, :, torch.randperm(a.shape[2], generator=g)]  # the same frames out of order
    noisy = (a + 0.6 * torch.randn(a.shape, generator=g)).clamp(-1, 1)

    def fvd(x):
        return fvd_from_features(video_judge_features(x, judge), fb)

    assert fvd(static) > 5 * real
    assert fvd(shuffled) > 2 * real and fvd(noisy) > 2 * real
    grey = video_judge_features(a[:4], judge)
    rgb = video_judge_features(a[:4].expand(-1, 3, -1, -1, -1), judge)  # colour is averaged
    assert torch.allclose(grey, rgb, atol=1e-5)


def test_video_judge_mismatched_weights_name_the_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(DEFAULT_VIDEO_JUDGE_PATH))
    state["extra.weight"] = state.pop("digit_head.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=VideoJudge().metadata())
    with pytest.raises(
        RuntimeError, match=r"missing key\(s\) \['digit_head.weight'\].*unexpected key\(s\) \['extra.weight'\]"
    ):
        load_video_judge(bad)
    with pytest.raises(FileNotFoundError, match="train_video_judge"):
        load_video_judge(tmp_path / "none.safetensors")


def test_retrain_command_smoke_is_deterministic(tmp_path):
    import json

    from shared.metrics.train_video_judge import main

    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            main(["--out", str(tmp_path / f"{name}.safetensors"), "--steps", "3", "--eval-videos", "8"])
    finally:
        torch.set_num_threads(threads)
    rec_a = json.loads((tmp_path / "a.json").read_text())
    rec_b = json.loads((tmp_path / "b.json").read_text())
    assert rec_a["state_sha256"] == rec_b["state_sha256"]
    assert rec_a["command"].startswith("python -m shared.metrics.train_video_judge")
    assert {"t16_s32", "t8_s16"} <= rec_a.keys() and "test_digit_accuracy" in rec_a["t16_s32"]
    load_video_judge(tmp_path / "a.safetensors")


def test_committed_judge_record_matches_weights():
    import json

    from shared.metrics.train_judge import state_sha256

    record = json.loads(DEFAULT_VIDEO_JUDGE_PATH.with_suffix(".json").read_text())
    assert record["state_sha256"] == state_sha256(load_video_judge().state_dict())
    assert record["command"].startswith("python -m shared.metrics.train_video_judge")
