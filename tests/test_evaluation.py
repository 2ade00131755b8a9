"""Evaluation follows the experiment: FID/KID/IS (FID Inception from a local file), FVD/KVD (I3D TorchScript on
16-frame clips), CLIPSIM / CLIP frame consistency (open_clip, local weights) — each on small random weights
written here in the real file layout — and ``shared.engine.evaluate`` reading a checkpoint's ``evaluation:``."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, compose

from shared.metrics.fid import image_metrics, inception_score, read_reference, save_stats
from shared.metrics.frechet import fd_from_features, gaussian_stats
from shared.metrics.inception import WEIGHTS_FILE, FIDInceptionV3, load_fid_inception
from shared.metrics.video import clips16, i3d_features, video_metrics


def random_inception_file(folder, seed=0):
    """A random FID Inception state dict saved as pytorch-fid's weights file (its keys, its name)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    state = {}
    for k, v in net.net.state_dict().items():
        if k.endswith("running_var"):
            state[k] = torch.rand_like(v) + 0.5
        elif v.is_floating_point():
            state[k] = torch.randn_like(v) * 0.1
        else:
            state[k] = v
    path = folder / WEIGHTS_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_inception_file(tmp_path_factory.mktemp("inception"))


def test_fid_inception_equals_pytorch_fid_on_the_same_random_weights(inception_file, monkeypatch):
    """Our FID Inception and pytorch-fid's (the reference implementation of the standard protocol), built from the
    same weights file, give the same 2048-d features; pytorch-fid is fed the 8-bit-quantised [0, 1] images a
    PNG would hold, as its CLI does."""
    import pytorch_fid.inception as pfid

    path, state = inception_file
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: state)   # instead of its download
    ref = pfid.InceptionV3([3]).eval()
    ours = load_fid_inception(path)
    x = torch.rand(3, 3, 24, 20) * 2 - 1
    with torch.no_grad():
        expected = ref(((x + 1) * 127.5).round() / 255)[0].flatten(1)
    torch.testing.assert_close(ours.features(x), expected, rtol=0, atol=1e-5)
    assert ours.logits(x).shape == (3, 1008)


def test_inception_file_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*nothing is downloaded"):
        load_fid_inception(tmp_path / "nope.pth")
    bad = tmp_path / WEIGHTS_FILE
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an FID Inception state dict"):
        load_fid_inception(bad)


def test_reference_files_stats_and_images_give_the_same_fid(inception_file, tmp_path):
    """pytorch-fid's stats file and an ADM reference batch (arr_0) of the same images give the same FID, equal to
    the Fréchet distance of the features; a stats-only file cannot give KID (one line). (The FID Inception runs
    at 299x299, about half a second per image on one core: few images.)"""
    from shared.metrics.fid import image_metrics_from_features

    net = load_fid_inception(inception_file[0])
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(5, 8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
    fake = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    real_x = torch.as_tensor(real).permute(0, 3, 1, 2).float() / 127.5 - 1
    feats_real = net.features(real_x).double()
    stats = save_stats(tmp_path / "stats.npz", *gaussian_stats(feats_real))         # pytorch-fid --save-stats
    np.savez(tmp_path / "ref_batch.npz", arr_0=real)                                 # an ADM reference batch
    assert set(read_reference(stats)) == {"mu", "sigma"}
    assert set(read_reference(tmp_path / "ref_batch.npz")) == {"images"}
    by_images = image_metrics(fake, tmp_path / "ref_batch.npz", net, metrics=["fid", "kid", "is"])
    pool, logits = net.features_and_logits(fake)
    by_stats = image_metrics_from_features(pool.double(), logits.double(), stats, net, ["fid", "is"])
    assert by_stats["fid"] == pytest.approx(fd_from_features(pool.double(), feats_real), rel=1e-6)
    assert by_images["fid"] == pytest.approx(by_stats["fid"], rel=1e-6)
    assert by_images["is_mean"] == pytest.approx(inception_score(logits, 4)[0])
    assert set(by_images) == {"fid", "kid", "is_mean", "is_std", "num_samples"}
    same = image_metrics_from_features(feats_real, feats_real[:, :1008], stats, net, ["fid"])["fid"]
    assert same == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="KID needs reference images"):
        image_metrics_from_features(pool, logits, stats, net, ["kid"])
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match=r"expected mu and sigma .* or arr_0"):
        read_reference(tmp_path / "other.npz")


def test_inception_score_closed_forms():
    assert inception_score(torch.zeros(100, 10), splits=5)[0] == pytest.approx(1.0)      # p(y|x) = p(y)
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert inception_score(confident, splits=5)[0] == pytest.approx(10.0, rel=1e-6)   # balanced, certain


class TinyI3D(torch.nn.Module):
    """The StyleGAN-V I3D TorchScript calling convention, random weights: (B, 3, T, 224, 224) -> (B, 400)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, (3, 16, 16), stride=(2, 16, 16))
        self.proj = torch.nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def test_fvd_kvd_on_16_frame_clips_with_a_torchscript_i3d(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    g = torch.Generator().manual_seed(1)
    real = (torch.rand(6, 20, 8, 8, 3, generator=g) * 255).to(torch.uint8)   # (N, T, H, W, 3), 20 frames
    fake = torch.rand(5, 3, 18, 8, 8, generator=g) * 2 - 1
    np.savez(tmp_path / "ref.npz", arr_0=real.numpy())
    out = video_metrics(fake, tmp_path / "ref.npz", str(path))
    real_v = real.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    f_fake, f_real = i3d_features(fake[:, :, :16], str(path)), i3d_features(real_v[:, :, :16], str(path))
    assert out["fvd"] == pytest.approx(fd_from_features(f_fake, f_real), rel=1e-5)
    assert out["clip_frames"] == 16 and out["kvd"] == pytest.approx(
        __import__("shared.metrics.video", fromlist=["kvd"]).kvd(f_fake.double(), f_real.double()), rel=1e-6)
    save_stats(tmp_path / "stats.npz", *gaussian_stats(f_real))
    assert video_metrics(fake, tmp_path / "stats.npz", str(path), ["fvd"])["fvd"] == pytest.approx(out["fvd"], rel=1e-6)
    with pytest.raises(ValueError, match="16-frame clips; these videos have 8 frames"):
        clips16(torch.zeros(1, 3, 8, 4, 4))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def tiny_clip_files(folder):
    """A tiny open_clip model config (``tiny-clip.json``) and its random weights (a state dict, the layout of
    ``open_clip_pytorch_model.bin``)."""
    import open_clip

    cfg = folder / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    weights = folder / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), weights)
    return cfg, weights, model


def test_clipsim_and_clip_frame_consistency_with_local_open_clip_weights(tmp_path):
    from shared.metrics.clip_score import clip_frame_consistency, clipsim, load_clip

    cfg, weights, model = tiny_clip_files(tmp_path)
    clip = load_clip("tiny-clip", weights, model_config=cfg)
    for (k, a), b in zip(clip.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, 3, 4, 20, 28, generator=g) * 2 - 1
    caps = ["a red ball", "a dog running"]
    per = clipsim(videos, caps, clip, reduction="none")
    # by hand: the cosine of every frame's and its caption's embedding, averaged over frames
    img = clip.image_embeddings(videos.permute(0, 2, 1, 3, 4).reshape(8, 3, 20, 28)).view(2, 4, -1)
    txt = clip.text_embeddings(caps)
    torch.testing.assert_close(per, torch.einsum("btd,bd->bt", img, txt).mean(1))
    static = videos[:, :, :1].expand(-1, -1, 4, -1, -1)
    assert clip_frame_consistency(static, clip) == pytest.approx(1.0, abs=1e-5)
    assert clip_frame_consistency(videos, clip) < 0.9999
    with pytest.raises(FileNotFoundError, match="CLIP weights not found.*nothing is downloaded"):
        load_clip("ViT-L-14", tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="one caption per sample"):
        clipsim(videos, caps[:1], clip)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    from shared.engine.run import fit

    run = tmp_path_factory.mktemp("run")
    cfg = compose(["data.size=8", "data.batch_size=16", "model.base_channels=8", "model.norm_groups=4",
                   "trainer.max_steps=3", "callbacks.samples=null", "logger=none",
                   "trainer.enable_progress_bar=false", f"run_dir={run}"])
    fit(cfg)
    return run / "checkpoints" / "last.ckpt"


def _evaluate(*args):
    return subprocess.run([sys.executable, "-m", "shared.engine.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_evaluate_cli_follows_the_evaluation_block_fid_kid_is(digits_ckpt, inception_file, tmp_path):
    """The printed command form (sampler.name=..., evaluation.*=...) runs; the metrics follow the block."""
    real = (torch.rand(4, 8, 8, 3) * 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "ref.npz", arr_0=real)
    out = tmp_path / "results.json"
    r = _evaluate(f"ckpt={digits_ckpt}", "sampler.name=ddim", "sampler.steps=2", "num_samples=4",
                  "evaluation.metrics=[fid,kid,is]", f"evaluation.reference={tmp_path / 'ref.npz'}",
                  f"evaluation.inception_path={inception_file[0]}", "evaluation.batch_size=3", f"out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert set(rec["metrics"]) == {"fid", "kid", "is_mean", "is_std", "num_samples"} and rec["num_samples"] == 4
    assert rec["evaluation"]["metrics"] == ["fid", "kid", "is"] and rec["sampler"]["steps"] == 2
    assert np.isfinite(rec["metrics"]["fid"]) and rec["metrics"]["is_mean"] >= 1.0
    r = _evaluate(f"ckpt={digits_ckpt}", "evaluation.metrics=[fid]", f"out={out}")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: Inception weights not found")
    from shared.engine.evaluate import EvaluationError, evaluate

    with pytest.raises(EvaluationError, match=r"evaluation.metrics: unknown \['fidd'\]"):
        evaluate(compose([f"ckpt={digits_ckpt}", "evaluation.metrics=[fidd]"], config_name="evaluate"))


def test_evaluate_reads_the_stored_evaluation_block(digits_ckpt, inception_file, tmp_path):
    """A checkpoint whose run config carries an evaluation block (as the paper-scale experiments' do) is
    evaluated by it without any override; overrides merge over it."""
    from omegaconf import OmegaConf

    from shared.engine.evaluate import evaluate
    from shared.nn.weights import read_checkpoint

    ck = read_checkpoint(digits_ckpt)
    np.savez(tmp_path / "ref.npz", arr_0=(torch.rand(3, 8, 8, 3) * 255).to(torch.uint8).numpy())
    ck["run_config"]["evaluation"] = {"metrics": ["fid", "is"], "num_samples": 3, "batch_size": 3,
                                      "reference": str(tmp_path / "ref.npz"),
                                      "inception_path": str(inception_file[0]), "sampler": {"steps": 2}}
    path = tmp_path / "with_block.ckpt"
    torch.save(ck, path)
    cfg = compose([f"ckpt={path}", f"out={tmp_path / 'r.json'}"], config_name="evaluate")
    rec = evaluate(cfg)
    assert set(rec["metrics"]) == {"fid", "is_mean", "is_std", "num_samples"} and rec["num_samples"] == 3
    cfg = compose([f"ckpt={path}", f"out={tmp_path / 'r.json'}", "evaluation.metrics=[fd_judge]"],
                  config_name="evaluate")
    assert set(evaluate(cfg)["metrics"]) == {"fd_judge", "fd_judge_real_floor"}
    assert OmegaConf.to_container(compose(["experiment=dit/imagenet256_xl2"]).evaluation)["metrics"] == \
        ["fid", "kid", "is"]
