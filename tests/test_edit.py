"""Video editing by DDIM inversion (``shared.methods.editing``, ``python -m shared.engine.edit``): Tune-A-Video's
editing path at paper scale, run here on the tiny SD-architecture checkpoint of ``tune_a_video/sd14_one_video``'s
quick mode (tuned on a frame folder the test writes). Inversion then regeneration under the source condition
reconstructs the clip of a fixed network closely at many steps; edits change the video; bad input is one line;
a stored config cannot make the clip loader call anything outside ``shared.data``."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose
from test_engine import TINY, write_frame_folder

from shared.engine.train import run
from shared.methods.editing import invert, invert_and_edit, regenerate


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The quick one-shot tuning run of Tune-A-Video's paper-scale config: (checkpoint, frames root)."""
    tmp = tmp_path_factory.mktemp("tav")
    root = write_frame_folder(tmp / "frames")
    cfg = compose(["experiment=tune_a_video/sd14_one_video", "quick=true", *TINY, f"run_dir={tmp / 'run'}",
                   f"data.root={root}"])
    run(cfg)
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt, root


def _edit(*overrides):
    from shared.engine.edit import edit

    return edit(compose(list(overrides), config_name="edit"))


def test_inversion_round_trip_converges_and_edits_differ_on_a_pixel_model():
    """The shared functions on a small class-conditional pixel model with random (smooth: small) weights: the DDIM
    round trip under the source label converges to the input as the steps grow (about first order: 4x the steps,
    < 0.4x the error), and sampling the inverted noise under another label (guided) lands far from it."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    cfg = compose(["data.size=8", "model.base_channels=8", "model.norm_groups=4", "+model.num_classes=3",
                   "module.sample_shape=[1,8,8]", "module.clip_x0=null"])
    module = instantiate(cfg.module, net=instantiate(cfg.model)).eval()
    with torch.no_grad():   # a fresh U-Net's zero-initialised output would make every round trip exact
        for p in module.net.parameters():
            p.add_(0.003 * torch.randn_like(p))
    x0 = torch.randn(2, 1, 8, 8).clamp(-1, 1) * 0.5
    y, other = {"y": torch.tensor([0, 1])}, {"y": torch.tensor([2, 2])}
    err = {}
    for steps in (20, 80):
        rec = regenerate(module, invert(module, x0, y, steps, use_ema=False), y, steps, use_ema=False)
        err[steps] = float((rec - x0).abs().mean())
    assert err[80] < 0.4 * err[20], err
    edited = invert_and_edit(module, x0, y, other, 80, guidance_scale=3.0, use_ema=False)
    assert float((edited - x0).abs().mean()) > 10 * err[80]


def test_edit_the_clip_the_run_tuned_on(tuned, tmp_path):
    ckpt, _ = tuned
    res = _edit(f"ckpt={ckpt}", "edit_prompt=[a dog is skiing, a cat is skiing]", "steps=4", f"out={tmp_path}")
    gif, pt = res["paths"]
    assert gif.endswith("edit.gif") and (tmp_path / "edit.gif").is_file()
    saved = torch.load(pt, weights_only=True)
    assert saved["source"]["caption"] == ["a man is skiing"] and saved["edits"] == ["a dog is skiing",
                                                                                  "a cat is skiing"]
    assert saved["x_T"].shape[0] == 1 and res["steps"] == 4 and res["reconstruction_psnr_db"] > 0


def test_edit_a_user_frame_folder_and_one_line_errors(tuned, tmp_path):
    ckpt, root = tuned
    clip = root / "video" / "clip"
    res = _edit(f"ckpt={ckpt}", f"video={clip}", "prompt=a man is skiing", "edit_prompt=a dog", "steps=2",
                f"out={tmp_path / 'a'}")
    assert (tmp_path / "a" / "edit.gif").is_file() and res["steps"] == 2
    r = subprocess.run([sys.executable, "-m", "shared.engine.edit", f"ckpt={ckpt}", f"video={clip}", "frames=20",
                        "edit_prompt=a dog", f"out={tmp_path / 'b'}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "video" in lines[0] and "has 8 frames" in lines[0], lines
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="edit_prompt"):
        _edit(f"ckpt={ckpt}", f"out={tmp_path / 'c'}")
    with pytest.raises(ValueError, match="not a dataset class of shared.data|must be a dataset class"):
        from papers.tune_a_video.data import OneVideo

        OneVideo("subprocess.Popen", index=0, args=["true"])
