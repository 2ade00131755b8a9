"""Latent diffusion wrapper: scale factor, encode/decode, VAE slicing, cached latents (images and videos),
and any diffusion module trained and sampled in the latent space."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from torch.utils.data import Subset

from shared.data.datamodule import ImageDataModule
from shared.data.digits import DigitsDataset
from shared.data.video_worlds import MovingDigits
from shared.diffusion.latent import LatentCache, LatentSpace
from shared.diffusion.schedules import FlowSchedule
from shared.methods.latent_module import latent_module_class
from shared.nn.autoencoder import AutoencoderKL
from shared.nn.unet import UNet


def tiny_ae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=4,
        scaling_factor=0.5,
    )


def digits(n=48):
    return Subset(DigitsDataset(split="train", size=8), range(n))


def test_scale_factor_given_from_autoencoder_or_data():
    ae = tiny_ae()
    x = torch.stack([digits()[i]["x"] for i in range(32)])
    assert LatentSpace(ae).scale_factor == 0.5 and LatentSpace(ae, 0.18215).scale_factor == pytest.approx(
        0.18215
    )
    space = LatentSpace(ae, "data")
    with pytest.raises(RuntimeError, match="not fitted"):
        space.encode(x)
    s = space.fit_scale_factor(x)
    assert s == pytest.approx(1 / ae.encode(x).mode().std().item(), rel=1e-5)
    z = space.encode(x)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4) and z.shape == (32, 2, 4, 4)
    assert space.latent_shape((1, 8, 8)) == (2, 4, 4) and space.latent_shape((1, 5, 8, 8)) == (2, 5, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(space.decode(z), ae.decode(ae.encode(x).mode()), atol=1e-5, rtol=0)
    shifted = LatentSpace(ae, 2.0, shift_factor=0.1)
    torch.testing.assert_close(shifted.encode(x), (ae.encode(x).mode() - 0.1) * 2.0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sampled = LatentSpace(ae, 1.0, sample_posterior=True)
    assert torch.equal(sampled.encode(x, g()), sampled.encode(x, g())) and not torch.equal(
        sampled.encode(x, g()), space.encode(x) / s
    )
    assert "scale" in space.state_dict() and not any(p.requires_grad for p in space.parameters())
    space.train()
    assert not space.autoencoder.training


def test_vae_slicing_leaves_outputs_unchanged():
    ae = tiny_ae()
    x = torch.randn(7, 1, 3, 8, 8)  # a video batch: frames are folded into the chunked batch
    full, sliced = LatentSpace(ae, 0.7), LatentSpace(ae, 0.7, chunk_size=2)
    z = full.encode(x)
    torch.testing.assert_close(sliced.encode(x), z, atol=1e-5, rtol=0)
    torch.testing.assert_close(sliced.decode(z), full.decode(z), atol=1e-5, rtol=0)


def test_latent_cache_images():
    ae = tiny_ae()
    data = digits(40)
    cache = LatentCache(data, ae, batch_size=16)  # scale from data
    assert len(cache) == 40 and cache.latents.std().item() == pytest.approx(1.0, rel=1e-4)
    item = cache[3]
    assert item["x"].shape == (2, 4, 4) and item["y"] == data[3]["y"] and item["is_latent"] is True
    torch.testing.assert_close(item["x"], cache.space.encode(data[3]["x"][None])[0], atol=1e-5, rtol=0)
    fixed = LatentCache(data, LatentSpace(ae, 0.25), batch_size=7)
    assert fixed.scale_factor == 0.25
    torch.testing.assert_close(fixed[3]["x"], item["x"] / cache.scale_factor * 0.25, atol=1e-5, rtol=0)


def test_latent_cache_videos_are_encoded_frame_by_frame():
    ae = tiny_ae()
    videos = MovingDigits(n=4, frames=3, size=8, digit_size=4, seed=0)
    cache = LatentCache(videos, LatentSpace(ae, 1.0), batch_size=3)
    v = videos[1]["x"]
    assert cache[1]["x"].shape == (2, 3, 4, 4)
    for t in range(3):
        frame = ae.encode(v[:, t][None]).mode()[0]
        torch.testing.assert_close(cache[1]["x"][:, t], frame, atol=1e-5, rtol=0)
    assert set(videos[1]) - {"x"} <= set(cache[1])


LATENT = [
    "module=latent_diffusion",
    "model.in_channels=2",
    "model.image_size=4",
    "model.base_channels=8",
    "model.norm_groups=4",
    "model.attention_resolutions=[2]",
    "data.size=8",
    "data.batch_size=16",
    "module.latent.autoencoder.block_out_channels=[8,16]",
    "module.latent.autoencoder.norm_num_groups=4",
    "module.sampler.steps=3",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=none",
]


def test_latent_diffusion_module_trains_on_pixels_and_samples_pixels(tmp_path):
    from shared.engine.run import fit

    module, _, _ = fit(compose([*LATENT, "trainer.fast_dev_run=true", f"run_dir={tmp_path}"]))
    assert (
        type(module).__name__ == "LatentDiffusionModule" and module.latent.fitted
    )  # scale from the 1st batch
    g = torch.Generator().manual_seed(0)
    x = module.sample(3, generator=g)
    z = module.sample(3, generator=torch.Generator().manual_seed(0), decode=False)
    assert x.shape == (3, 1, 8, 8) and z.shape == (3, 2, 4, 4)
    torch.testing.assert_close(x, module.latent.decode(z), atol=1e-5, rtol=0)
    assert any(k.startswith("latent.autoencoder.") for k in module.state_dict())  # checkpoints are complete
    opt = module.configure_optimizers()
    opt_ids = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not opt_ids & {id(p) for p in module.latent.parameters()}  # the autoencoder is not trained


def test_cached_latents_and_other_base_modules(tmp_path):
    from hydra.utils import instantiate

    cfg = compose(LATENT)
    module = instantiate(cfg.module)
    cache = LatentCache(digits(32), module.latent, batch_size=16)
    assert module.latent.fitted
    batch = next(iter(ImageDataModule(cache, batch_size=8).train_dataloader()))
    assert torch.equal(module.to_latent(batch)["x"], batch["x"])  # cached batches pass through
    pixels = {"x": torch.stack([digits()[i]["x"] for i in range(8)])}
    torch.testing.assert_close(module.to_latent(pixels)["x"], module.latent.encode(pixels["x"]))
    with pytest.raises(ValueError, match="channels"):
        module.to_latent({"x": torch.randn(2, 2, 4, 4)})
    assert torch.isfinite(module.training_loss(batch, torch.Generator().manual_seed(0)))
    # any DiffusionModule subclass: rectified flow in the latent space
    cls = latent_module_class("shared.methods.flow_module.RectifiedFlowModule")
    assert cls is latent_module_class("shared.methods.flow_module.RectifiedFlowModule")
    flow = cls(
        net=UNet(
            in_channels=2,
            image_size=4,
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            norm_groups=4,
        ),
        schedule=FlowSchedule(),
        latent=LatentSpace(tiny_ae(), 1.0),
        sample_shape=(2, 4, 4),
        ema_decay=None,
        sampler={"name": "euler", "steps": 2},
    )
    assert torch.isfinite(flow.training_loss(pixels, torch.Generator().manual_seed(0)))
    assert flow.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)
