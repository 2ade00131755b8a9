"""LDM KL autoencoder: diffusers/LDM layout parity, strict loading, video/slicing, loss pieces, training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose

from shared.nn.autoencoder import (
    AutoencoderKL,
    DiagonalGaussian,
    ldm_to_diffusers_keys,
    load_autoencoder_weights,
    load_sd_vae,
)
from shared.nn.autoencoder_loss import LPIPS, AutoencoderLoss, hinge_d_loss, kl_loss, psnr
from shared.nn.weights import CheckpointError

diffusers = pytest.importorskip("diffusers")

SMALL = dict(
    in_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2, latent_channels=4, norm_num_groups=4
)
SD = dict(
    in_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)


def diffusers_vae(cfg: dict) -> torch.nn.Module:
    n = len(cfg["block_out_channels"])
    return diffusers.AutoencoderKL(
        in_channels=cfg["in_channels"],
        out_channels=cfg["in_channels"],
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=cfg["norm_num_groups"],
    )


def to_ldm_layout(state: dict, num_levels: int) -> dict:
    """diffusers → original LDM names, written out independently of the code under test (checked
    against diffusers' own LDM converter below)."""
    out = {}
    for k, v in state.items():
        p = k.split(".")
        if p[1] == "down_blocks":
            rest = ".".join(p[5:]) if p[3] == "resnets" else ".".join(p[5:])
            new = f"{p[0]}.down.{p[2]}." + (
                f"block.{p[4]}.{rest}" if p[3] == "resnets" else f"downsample.{rest}"
            )
        elif p[1] == "up_blocks":
            lvl = num_levels - 1 - int(p[2])
            rest = ".".join(p[5:])
            new = f"{p[0]}.up.{lvl}." + (f"block.{p[4]}.{rest}" if p[3] == "resnets" else f"upsample.{rest}")
        elif p[1] == "mid_block" and p[2] == "resnets":
            new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{'.'.join(p[4:])}"
        elif p[1] == "mid_block":
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[p[4]]
            new = f"{p[0]}.mid.attn_1.{name}.{p[-1]}"
            if name != "norm" and p[-1] == "weight":
                v = v[:, :, None, None]  # LDM's attention projections are 1x1 convs
        elif p[1] == "conv_norm_out":
            new = f"{p[0]}.norm_out.{p[2]}"
        else:
            new = k
        out[new.replace("conv_shortcut", "nin_shortcut")] = v
    return out


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return diffusers_vae(SMALL).eval()


def test_matches_diffusers_from_safetensors_folder(reference, tmp_path):
    reference.save_pretrained(tmp_path / "vae", safe_serialization=True)  # config.json + safetensors, offline
    ours = load_sd_vae(tmp_path / "vae").eval()
    assert ours.block_out_channels == SMALL["block_out_channels"] and ours.latent_channels == 4
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_post, post = reference.encode(x).latent_dist, ours.encode(x)
        torch.testing.assert_close(post.mean, ref_post.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(post.logvar, ref_post.logvar, atol=1e-5, rtol=0)
        torch.testing.assert_close(post.kl(), ref_post.kl(), atol=1e-4, rtol=1e-5)
        z = ref_post.mean
        ref, out = reference.decode(z).sample, ours.decode(z)
        torch.testing.assert_close(out, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=0)


def test_bin_and_ldm_layouts_load(reference, tmp_path):
    state = reference.state_dict()
    torch.save(state, tmp_path / "vae.bin")
    a = load_autoencoder_weights(AutoencoderKL(**SMALL), tmp_path / "vae.bin")
    ldm = to_ldm_layout(state, 3)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = {"down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3}
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, cfg)
    assert theirs.keys() == state.keys() and all(
        torch.equal(theirs[k], state[k]) for k in state
    )  # test map is LDM's
    ours = ldm_to_diffusers_keys(
        {**{f"first_stage_model.{k}": v for k, v in ldm.items()}, "model.diffusion_model.x": torch.zeros(1)}
    )
    assert ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in state)
    torch.save({"state_dict": {**ldm, "loss.logvar": torch.zeros(())}}, tmp_path / "ldm.ckpt")
    b = load_autoencoder_weights(AutoencoderKL(**SMALL), tmp_path / "ldm.ckpt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, state[k])


def test_strict_loading_names_keys(reference, tmp_path):
    from safetensors.torch import save_file

    state = dict(reference.state_dict())
    state.pop("decoder.conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"1 missing key\(s\) \['decoder.conv_out.bias'\].*extra.weight"
    ):
        load_autoencoder_weights(AutoencoderKL(**SMALL), tmp_path / "bad.safetensors")
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for \d+ key\(s\), e.g. \S+: checkpoint \(8,\) vs model \(4,\)"
    ):
        load_autoencoder_weights(
            AutoencoderKL(**{**SMALL, "block_out_channels": (4, 16, 16)}), tmp_path / "bad.safetensors"
        )
    with pytest.raises(CheckpointError, match="not found"):
        load_sd_vae(tmp_path / "missing.safetensors")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"down_block_types": ["DownEncoderBlock2D"]}))
    with pytest.raises(CheckpointError, match="no VAE weights"):
        load_sd_vae(tmp_path / "cfg")


def test_sd_config_layout_on_meta_device():
    with torch.device("meta"):
        ours = AutoencoderKL()  # defaults = SD-1.x (conf/model/autoencoder_sd.yaml)
        theirs = diffusers_vae(SD)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == b
    assert ours.downsample_factor == 8 and ours.scaling_factor == 0.18215
    ldm = to_ldm_layout(theirs.state_dict(), 4)
    assert {k: tuple(v.shape) for k, v in ldm_to_diffusers_keys(ldm).items()} == b
    n = sum(v.numel() for v in ours.state_dict().values())
    assert 83e6 < n < 84e6  # SD-1.x VAE: 83.65M parameters


def test_video_and_slicing_leave_outputs_unchanged():
    torch.manual_seed(0)
    ae = AutoencoderKL(
        in_channels=1, block_out_channels=(8, 16), layers_per_block=1, latent_channels=2, norm_num_groups=4
    ).eval()
    v = torch.randn(2, 1, 3, 8, 8)
    with torch.no_grad():
        post = ae.encode(v)
        assert post.mean.shape == (2, 2, 3, 4, 4)
        frame = ae.encode(v[:, :, 1]).mean
        torch.testing.assert_close(post.mean[:, :, 1], frame, atol=1e-6, rtol=0)
        torch.testing.assert_close(ae.encode(v, chunk_size=2).mean, post.mean, atol=1e-5, rtol=0)
        rec = ae.decode(post.mean)
        assert rec.shape == v.shape
        torch.testing.assert_close(ae.decode(post.mean, chunk_size=1), rec, atol=1e-5, rtol=0)


def test_posterior_and_loss_pieces():
    m = torch.zeros(2, 4, 3, 3)
    std_normal = DiagonalGaussian(m, torch.zeros_like(m))
    assert torch.allclose(std_normal.kl(), torch.zeros(2))
    q = DiagonalGaussian(torch.ones_like(m), torch.zeros_like(m))
    assert torch.allclose(q.kl(), torch.full((2,), 0.5 * 36)) and torch.allclose(
        kl_loss(q), torch.tensor(18.0)
    )
    assert torch.allclose(q.kl(std_normal), q.kl())
    z = q.sample(torch.Generator().manual_seed(0))
    assert torch.equal(z, q.sample(torch.Generator().manual_seed(0))) and torch.equal(q.mode(), q.mean)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert psnr(x, x + 0.02).item() == pytest.approx(
        20 * torch.log10(torch.tensor(2 / 0.02)).item(), rel=1e-4
    )
    assert hinge_d_loss(torch.full((3,), 2.0), torch.full((3,), -2.0)).item() == 0.0


def test_adversarial_term_trains_each_part_on_its_own_objective():
    torch.manual_seed(0)
    ae = AutoencoderKL(
        in_channels=1, block_out_channels=(8, 16), layers_per_block=1, latent_channels=2, norm_num_groups=4
    )
    loss_fn = AutoencoderLoss(disc_weight=0.5, disc={"in_channels": 1, "ndf": 8, "n_layers": 1}, disc_start=0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    rec, post = ae(x, generator=torch.Generator().manual_seed(0))
    loss, logs = loss_fn(x, rec, post, step=0, last_layer=ae.last_layer)
    loss.backward()
    d_grads = [p.grad.clone() for p in loss_fn.discriminator.parameters()]
    # the discriminator's gradient is that of its own (hinge) loss alone, scaled by disc_factor
    loss_fn.zero_grad()
    state = {k: v.clone() for k, v in loss_fn.discriminator.state_dict().items()}
    loss_fn.discriminator.load_state_dict(state)
    hinge_d_loss(loss_fn.discriminator(x), loss_fn.discriminator(rec.detach())).backward()
    for g, p in zip(d_grads, loss_fn.discriminator.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)
    assert {"g_loss", "d_loss", "d_weight"} <= logs.keys() and logs["d_weight"] > 0
    assert all(p.grad is not None for p in ae.parameters())
    # before disc_start the term is absent
    late = AutoencoderLoss(disc_weight=0.5, disc={"in_channels": 1, "ndf": 8, "n_layers": 1}, disc_start=10)
    assert "g_loss" not in late(x, rec.detach(), post, step=3)[1]


def test_lpips_from_local_files_only(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg_path.*nothing is downloaded"):
        LPIPS(None, str(tmp_path / "lin.pth"))
    vgg = pytest.importorskip("torchvision.models.vgg")
    torch.manual_seed(0)
    feats = vgg.make_layers(vgg.cfgs["D"]).state_dict()  # torchvision vgg16's features.* layout, random
    torch.save(
        {f"features.{k}": v for k, v in feats.items() if int(k.split(".")[0]) < 30}, tmp_path / "vgg.pth"
    )
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)},
        tmp_path / "lin.pth",
    )
    lp = LPIPS(str(tmp_path / "vgg.pth"), str(tmp_path / "lin.pth"))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    d_same, d_diff = lp(x, x), lp(x, x.flip(-1))
    assert d_same.shape == (2, 1, 1, 1) and d_same.abs().max() < 1e-6 and (d_diff > 0).all()
    assert not any(p.requires_grad for p in lp.parameters())


TRAIN = [
    "model=autoencoder_tiny",
    "module=autoencoder_kl",
    "data.size=8",
    "data.batch_size=16",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=none",
]


def test_module_fast_dev_run(tmp_path):
    from shared.engine.run import fit

    fit(compose([*TRAIN, "trainer.fast_dev_run=true", "module.loss.disc_weight=0.5", f"run_dir={tmp_path}"]))


def test_reconstruction_improves_on_digits(tmp_path):
    from shared.engine.run import fit

    cfg = compose([*TRAIN, "trainer.max_steps=100", f"run_dir={tmp_path}", "seed=0"])
    from hydra.utils import instantiate

    val = instantiate(cfg.data).val_set
    x = torch.stack([val[i]["x"] for i in range(128)])
    module, _, _ = fit(cfg)
    torch.manual_seed(0)
    fresh = instantiate(cfg.model).eval()
    with torch.no_grad():
        before = psnr(x, fresh.decode(fresh.encode(x).mode())).item()
    after = psnr(x, module.reconstruct(x)).item()
    assert after > before + 5 and after > 15, (before, after)
