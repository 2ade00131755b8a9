"""Latent-Shift (papers/latent_shift): the config-built video net loads the image model's weights strictly and adds no
parameter, shift 0 is the image model, the cost case of tools/bench runs, and the SD-1.5 paper-scale config loads a
local SD folder and trains a step."""
from __future__ import annotations

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from shared.nn.weights import save_weights


def test_config_net_loads_image_weights_strictly_and_adds_no_parameters(tmp_path):
    cfg = compose(["experiment=latent_shift/moving_digits_claim", "run_dir=/tmp/unused"])
    torch.manual_seed(0)
    image = instantiate(cfg.claim.image.model)
    for p in image.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = save_weights(image, tmp_path / "image.safetensors")
    net = instantiate(cfg.model, weights=str(path)).eval()
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in image.parameters())
    x, t, y = torch.randn(2, 1, 8, 16, 16), torch.tensor([20.0, 800.0]), torch.tensor([3, 7])
    with torch.no_grad():
        per_frame = torch.stack([image(x[:, :, f], t, y=y) for f in range(8)], 2)
        assert (net(x, t, y=y) - per_frame).abs().max() > 1e-3
        zero = instantiate(cfg.model, weights=str(path), fraction=0.0).eval()
        torch.testing.assert_close(zero(x, t, y=y), per_frame, rtol=0, atol=1e-5)
    bad = save_weights({"nope": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(Exception, match="missing"):
        instantiate(cfg.model, weights=str(bad))


def test_bench_shift_case_has_zero_extra_parameters_and_runs():
    from tools import bench

    case = bench.build_case("shift", "tiny")
    ours, theirs, batch = case.ours(), case.theirs(), case.batch()
    from shared.nn.unet import UNet

    c = case.config
    image = UNet(in_channels=c["in_ch"], image_size=c["res"], base_channels=c["base"], channel_mult=c["mult"],
                 num_res_blocks=c["blocks"], attention_resolutions=c["attn"], head_channels=c["head"],
                 norm_groups=c["groups"])
    assert bench.count_params(ours.model) == bench.count_params(image) < bench.count_params(theirs.model)
    with torch.no_grad():
        assert ours.forward(ours.model, batch).shape == theirs.forward(theirs.model, batch).shape == batch["x"].shape


def test_paper_scale_config_loads_a_local_sd_folder_and_trains_a_step(tmp_path):
    from test_text_encoder import write_tiny_sd_folder

    from shared.engine.run import build
    from shared.engine.train import run
    from shared.nn.temporal_shift import shifted_blocks

    sd = write_tiny_sd_folder(tmp_path / "sd")
    overrides = ["experiment=latent_shift/webvid_sd15", "data=shapes_video", "data.size=16", "data.frames=4",
                 "data.batch_size=2", "data.num_workers=0", "data.train.n=4", "trainer=cpu",
                 "trainer.precision=32-true",
                 "callbacks.samples=null", "logger=none", f"model.net.weights={sd}", "data.root=null",
                 f"module.text_encoder.weights={sd}", "model.net.use_checkpoint=false",
                 f"module.latent.autoencoder.weights_path={sd}/vae/diffusion_pytorch_model.safetensors",
                 "module.latent.autoencoder.block_out_channels=[16,32]", "module.latent.autoencoder.layers_per_block=1",
                 "module.latent.autoencoder.norm_num_groups=8", "module.latent.chunk_size=null",
                 "module.sample_shape=[4,4,8,8]", "trainer.fast_dev_run=true", f"run_dir={tmp_path / 'run'}",
                 "~data.train.csv_path", "data.stride=null"]
    cfg = compose(overrides)
    _, module = build(cfg)
    from safetensors.torch import load_file

    unet_file = load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert shifted_blocks(module.net) > 0 and module.net.context_dim == 32
    # the SD U-Net's tensors, all trainable (Latent-Shift fine-tunes the whole U-Net), and nothing else
    assert sum(v.numel() for v in unet_file.values()) == sum(p.numel() for p in module.net.parameters()
                                                             if p.requires_grad)
    run(cfg)
