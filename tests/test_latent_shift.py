"""Latent-Shift (papers/latent_shift): the config-built video net loads the image model's weights strictly and adds no
parameter, shift 0 is the image model, the cost case of tools/bench runs, the SD-1.5 paper-scale config loads a
local SD folder and trains a step; the Sprites claim shares the Sprites image stage, its no-shift control is the image
model frame by frame, and its quick run gives every per-seed score."""
from __future__ import annotations

import pytest
import torch
from conftest import compose, image_stage_key
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


def test_sprites_claim_shares_the_sprites_image_stage_and_its_control_is_the_image_model(tmp_path):
    """The Sprites claim fine-tunes the shared Sprites image stage (one teacher-cache key with Text2Video-Zero's
    Sprites claim), with the image stage's objective; its ``no_shift`` control (shift fraction 0) is exactly the
    image model frame by frame, Latent-Shift is not, and neither adds a parameter."""
    from shared.engine.claims import variant_config

    cfg = compose(["experiment=latent_shift/sprites_claim", "run_dir=/tmp/unused"])
    assert image_stage_key("latent_shift/sprites_claim", 0) == image_stage_key("text2video_zero/sprites_claim", 0)
    assert image_stage_key("latent_shift/sprites_claim", 0) != image_stage_key("latent_shift/sprites_claim", 1)
    assert cfg.module.prediction == cfg.claim.image.module.prediction == "v"
    assert cfg.module.schedule == cfg.claim.image.module.schedule
    assert list(cfg.module.sample_shape) == [3, int(cfg.data.frames), 16, 16] and not cfg.data.train.frames_only
    assert len(cfg.claim.seeds) >= 2 and cfg.expected and 99 not in cfg.claim.seeds   # 99: the development seed
    torch.manual_seed(0)
    image = instantiate(cfg.claim.image.model)
    for p in image.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = save_weights(image, tmp_path / "image.safetensors")
    image.eval()
    nets = {}
    for variant in cfg.claim.variants:
        over = dict(cfg.claim.variant_overrides.get(variant) or {})
        sub = variant_config(cfg, {**over, "model.weights": str(path)})
        nets[variant] = instantiate(sub.model).eval()
        assert sum(p.numel() for p in nets[variant].parameters()) == sum(p.numel() for p in image.parameters())
    x, t, y = torch.randn(2, 3, 8, 16, 16), torch.tensor([0.1, 0.8]), torch.tensor([1, 3])
    with torch.no_grad():
        per_frame = torch.stack([image(x[:, :, f], t, y=y) for f in range(8)], 2)
        torch.testing.assert_close(nets["no_shift"](x, t, y=y), per_frame, rtol=0, atol=1e-5)
        assert (nets["latent_shift"](x, t, y=y) - per_frame).abs().max() > 1e-3


def test_sprites_claim_quick_run_gives_per_seed_metrics(tmp_path):
    import json

    from shared.engine.train import run

    run(compose(["experiment=latent_shift/sprites_claim", "quick=true", "logger=none", f"run_dir={tmp_path}"]))
    m = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert m["judge_checks"]["real"]["coherent"] == 1.0 and m["judge_checks"]["swapped"]["identity_consistent"] == 0
    assert m["judge_checks"]["shuffled"]["motion_coherent"] == 0
    for method in ("per_frame", "no_shift", "latent_shift"):
        for score in ("frame_validity", "coherent", "identity_consistent", "motion_coherent", "identity_accuracy",
                      "frame_identity_accuracy", "appearance"):
            assert len(m[f"{score}_{method}"]["per_seed"]) == 1, (score, method)
    assert m["extra_params_latent_shift"]["per_seed"] == [0.0] and m["forward_ratio_latent_shift"]["mean"] > 0
    assert "coherent_gain_latent_shift_over_no_shift" in m and "coherent_gain_latent_shift_over_per_frame" in m
    assert (tmp_path / "per_frame_vs_latent_shift.gif").exists()


def test_sprites_claim_unknown_variant_is_one_line_error(tmp_path):
    from shared.engine.train import run

    cfg = compose(["experiment=latent_shift/sprites_claim", "quick=true", "logger=none", f"run_dir={tmp_path}",
                   "claim.variants=[latent_shift,temporal_attention]"])
    with pytest.raises(ValueError, match=r"claim.variants: unknown variant\(s\) \['temporal_attention'\]"):
        run(cfg)
