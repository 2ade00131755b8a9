"""Sampling from released weights (``shared.engine.generate``): DiT-XL/2's official checkpoint file + the SD VAE
folder, SD-1.5 text-to-image from a diffusers folder, SD-1.5 + an AnimateDiff motion module (official layout)
text-to-video as GIF/MP4, DDIM inversion of a user image — all on tiny random weights written here in the released
layouts (diffusers' own ``save_pretrained`` for the SD folder) — and the one-line errors naming each file."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose

diffusers = pytest.importorskip("diffusers")

from test_sd_unet import TINY, randomise  # noqa: E402  (the toy SD U-Net of the parity tests)
from test_text_encoder import hf_tiny  # noqa: E402  (the toy CLIP text tower)

from shared.engine.generate import WeightsError, build, generate, motion_module_version  # noqa: E402

VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
           norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
VAE_OVERRIDES = ["module.latent.autoencoder.block_out_channels=[8,8]", "module.latent.autoencoder.layers_per_block=1",
                 "module.latent.autoencoder.norm_num_groups=4"]


def write_vae(folder):
    torch.manual_seed(1)
    randomise(diffusers.AutoencoderKL(**VAE), std=0.05).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A Stable Diffusion folder in diffusers' layout: unet/, text_encoder/, vae/ (tiny, random)."""
    root = tmp_path_factory.mktemp("sd") / "stable-diffusion-v1-5"
    torch.manual_seed(0)
    randomise(diffusers.UNet2DConditionModel(**{**TINY, "cross_attention_dim": 32})).save_pretrained(
        root / "unet", safe_serialization=True)
    hf_tiny().save_pretrained(root / "text_encoder")
    write_vae(root / "vae")
    return root


def _cfg(*overrides):
    return compose(list(overrides), config_name="generate")


def test_dit_from_the_official_checkpoint_file_and_the_vae_folder(tmp_path):
    over = ["model.input_size=4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
            "module.sample_shape=[4,4,4]", *VAE_OVERRIDES]
    # the official file: DiT's own state dict (facebookresearch/DiT names), here of a tiny random DiT
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = randomise(instantiate(compose(["experiment=dit/imagenet256_xl2", *over]).model), std=0.05)
    ckpt = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save(net.state_dict(), ckpt)
    vae = write_vae(tmp_path / "sd-vae-ft-ema")
    args = [f"weights={ckpt}", f"vae={vae}", "steps=3", "labels=[1,2]", f"overrides={over}"]
    module, defaults = build(_cfg("task=dit", *args))
    assert defaults == {"name": "ddpm", "steps": 250, "guidance_scale": 4.0}
    for (k, a), b in zip(module.net.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    res = generate(_cfg("task=dit", *args, f"out={tmp_path / 'dit.png'}"))
    from PIL import Image

    assert Image.open(res["paths"][0]).size == (8 + 2 * 2, 2 * 8 + 3 * 2)   # 2 images of 8x8, one per row, padded
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="DiT checkpoint does not match"):
        build(_cfg("task=dit", f"weights={tmp_path / 'bad.pt'}", f"vae={vae}", f"overrides={over}"))


def test_text2image_text2video_and_inversion_from_an_sd_folder(sd_folder, tmp_path):
    from PIL import Image

    from shared.nn.motion_module import POSITION_ENCODING_SUFFIX, motion_module_state_dict, to_official

    base = [f"sd={sd_folder}", "height=32", "width=32", "steps=2", "prompt=a red ball", f"overrides={VAE_OVERRIDES}"]
    img = generate(_cfg("task=text2image", *base, f"out={tmp_path / 't2i.png'}"))
    assert Image.open(img["paths"][0]).size == (32, 32)
    # a v1 motion module in the released layout (mm_sd_v15.ckpt): the animate-stage network's modules, renamed
    module, _ = build(_cfg("task=text2image", *base))   # (image stage) -> build the video net for its layout
    from hydra.utils import instantiate

    vcfg = compose(["experiment=animatediff/webvid_sd15", f"model.image.weights={sd_folder}", "model.stage=motion",
                    "model.image.use_checkpoint=false"])
    video = instantiate(vcfg.model)
    torch.manual_seed(3)
    # random weights; the position encoding stays the sinusoidal one a released file stores
    state = {k: v if k.endswith(POSITION_ENCODING_SUFFIX) else torch.randn_like(v) * 0.05
             for k, v in motion_module_state_dict(video).items()}
    mm = tmp_path / "mm_sd_v15.ckpt"
    torch.save(to_official(state, video), mm)
    assert motion_module_version(mm) == 1
    for out in ("t2v.gif", "t2v.mp4"):
        res = generate(_cfg("task=text2video", *base, f"motion_module={mm}", "frames=4", f"out={tmp_path / out}"))
        assert (tmp_path / out).stat().st_size > 0 and res["sampler"]["steps"] == 2
    frames = Image.open(tmp_path / "t2v.gif")
    assert frames.n_frames == 4
    # DDIM inversion of a user image: noise file, reconstruction beside the input (and the edit)
    torch.manual_seed(0)
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / "photo.png")
    res = generate(_cfg("task=invert", *base, f"image={tmp_path / 'photo.png'}", "edit_prompt=a blue ball",
                        f"out={tmp_path / 'inv.png'}"))
    assert Image.open(tmp_path / "inv.png").size == (3 * 32 + 4 * 2, 32 + 2 * 2)
    saved = torch.load(tmp_path / "inv.pt", weights_only=True)
    assert saved["x_T"].shape == (1, 4, 16, 16) and torch.isfinite(saved["x_T"]).all()
    assert res["reconstruction_psnr_db"] == res["reconstruction_psnr_db"]   # finite, not NaN


def test_missing_released_files_are_one_line_errors_naming_the_file(tmp_path, sd_folder):
    cases = [
        (["task=dit", f"weights={tmp_path / 'x.pt'}"], "expected DiT-XL-2-256x256.pt of facebookresearch/DiT"),
        (["task=text2image", f"sd={tmp_path}"], "expected a diffusers folder with unet/, text_encoder/ and vae/"),
        (["task=text2video", f"sd={sd_folder}", f"motion_module={tmp_path / 'mm.ckpt'}"],
         "expected mm_sd_v15.ckpt (v1) or mm_sd_v15_v2.ckpt (v2)"),
        (["task=invert", f"sd={sd_folder}", "prompt=x", f"image={tmp_path / 'none.png'}",
          f"overrides={VAE_OVERRIDES}"], "input image not found"),
    ]
    for args, msg in cases:
        with pytest.raises(WeightsError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            generate(_cfg(*args))
    r = subprocess.run([sys.executable, "-m", "shared.engine.generate", "task=dit", "weights=nowhere.pt"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: DiT checkpoint not found at 'nowhere.pt'")
