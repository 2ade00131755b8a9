"""The caption -> CLIP text tokens -> cross-attention path (shared/nn/text_encoder.py, DiffusionModule).

Parity with transformers' CLIPTextModel on a randomly initialised tiny config (nothing is downloaded), the
released checkpoints' layouts (diffusers folder, transformers-5 folder, SD single-file), the tokenizer's ids, and
the module: captions reach the network, caption dropout, CFG with the empty caption, clear errors.
"""
from __future__ import annotations

import json

import pytest
import torch
from conftest import compose

from shared.nn.text_encoder import (
    EOT_ID,
    SOT_ID,
    CLIPTextEncoder,
    CLIPTokenizer,
    TextConditioner,
    load_clip_text_encoder,
)

TINY = dict(width=32, layers=2, heads=4, mlp_dim=64, max_len=16)
CAPTIONS = ["a photo of a cat", "a red circle moving left and a blue square moving up"]


def hf_tiny(seed=0, **config):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, **config)
    return CLIPTextModel(cfg).eval()


def test_tokenizer_ids_match_clip_bpe_with_eot_padding_and_truncation():
    ids = CLIPTokenizer(max_len=10)(["a photo of a cat", "word " * 20])
    assert ids[0].tolist() == [SOT_ID, 320, 1125, 539, 320, 2368, EOT_ID, EOT_ID, EOT_ID, EOT_ID]
    assert ids[1, 0] == SOT_ID and ids[1, -1] == EOT_ID and (ids[1, 1:-1] != EOT_ID).all()  # truncated, EOT kept
    assert CLIPTokenizer(max_len=8, pad_id=0)("a cat")[0].tolist() == [SOT_ID, 320, 2368, EOT_ID, 0, 0, 0, 0]
    with pytest.raises(TypeError, match="caption 0 is int"):
        CLIPTokenizer()([3])


@pytest.mark.parametrize("layout", ["transformers5_folder", "sd_root_with_text_model_prefix", "sd_single_file"])
def test_released_layouts_load_and_match_transformers_clip_text_model(layout, tmp_path):
    from safetensors.torch import save_file

    hf = hf_tiny()
    hf.save_pretrained(tmp_path / "te")  # transformers >= 5: keys without the text_model. prefix
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if layout == "transformers5_folder":
        path = tmp_path / "te"
    elif layout == "sd_root_with_text_model_prefix":  # a diffusers SD folder written by transformers 4
        (tmp_path / "sd" / "text_encoder").mkdir(parents=True)
        (tmp_path / "sd" / "text_encoder" / "config.json").write_text((tmp_path / "te" / "config.json").read_text())
        save_file({"text_model." + k: v for k, v in state.items()} | {"text_model.embeddings.position_ids":
                  torch.arange(16)[None]}, str(tmp_path / "sd" / "text_encoder" / "model.safetensors"))
        path = tmp_path / "sd"
    else:  # an SD .ckpt: the text tower under cond_stage_model.transformer., next to the U-Net's keys
        path = tmp_path / "sd.ckpt"
        torch.save({"state_dict": {"cond_stage_model.transformer.text_model." + k: v for k, v in state.items()}
                    | {"model.diffusion_model.out.0.weight": torch.ones(4)}}, path)
    kwargs = {} if layout != "sd_single_file" else dict(width=32, layers=2, heads=4, mlp_dim=64, max_len=16)
    ours = load_clip_text_encoder(path, **kwargs)
    ids = CLIPTokenizer(max_len=16)(CAPTIONS)
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
        got = ours(ids)
    assert got.shape == (2, 16, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_every_hidden_act_of_the_config_matches_transformers(act, tmp_path):
    """The config's ``hidden_act`` is honoured: ``gelu_new`` (and ``gelu_pytorch_tanh``) is GELU's tanh approximation,
    not the exact GELU (it used to be mapped to ``gelu``)."""
    hf = hf_tiny(hidden_act=act)
    with torch.no_grad():  # larger MLP pre-activations, so the activations' differences show
        for name, module in hf.named_modules():
            if name.endswith(("mlp.fc1", "mlp.fc2")):
                module.weight.mul_(20)
    hf.save_pretrained(tmp_path / "te")
    ours = load_clip_text_encoder(tmp_path / "te")
    assert ours.text_model.encoder.layers[0].mlp.act == act
    ids = CLIPTokenizer(max_len=16)(CAPTIONS)
    with torch.no_grad():
        want, got = hf(input_ids=ids).last_hidden_state, ours(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)   # measured: 0 (2.4e-7 for gelu_new)
    if act == "gelu_new":
        exact = load_clip_text_encoder(tmp_path / "te", act="gelu")
        with torch.no_grad():
            assert (exact(ids) - want).abs().max() > 2e-5   # the exact GELU is 6.7e-5 off here: the check has teeth
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        CLIPTextEncoder(**TINY, act="relu")


def test_mismatched_or_missing_weights_are_one_line_errors(tmp_path):
    hf_tiny().save_pretrained(tmp_path / "te")
    cfg = json.loads((tmp_path / "te" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "te" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"does not match a CLIP text encoder .*missing .'text_model.encoder.layers.2"):
        load_clip_text_encoder(tmp_path / "te")
    with pytest.raises(FileNotFoundError, match="no CLIP text-encoder weights"):
        load_clip_text_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="exceed the encoder's 16 positions"):
        CLIPTextEncoder(**TINY)(torch.zeros(1, 17, dtype=torch.long))


def test_frozen_conditioner_has_no_gradients_and_stays_in_eval():
    cond = TextConditioner(CLIPTextEncoder(**TINY), trainable=False).train()
    assert not cond.encoder.training and not any(p.requires_grad for p in cond.parameters())
    assert cond(CAPTIONS).requires_grad is False
    trainable = TextConditioner(CLIPTextEncoder(**TINY), trainable=True).train()
    assert trainable.encoder.training and trainable(CAPTIONS).requires_grad


def test_caption_dropout_rate_and_determinism():
    from shared.methods.conditions import TextCondition

    def drop(captions, p, g=None):   # the seam's dropout, without the encoder
        c = TextCondition(torch.nn.Identity(), drop_prob=p)
        return c.network_value(captions, g, drop=True)

    out = drop(["x"] * 4000, 0.1, torch.Generator().manual_seed(0))
    assert 0.08 < out.count("") / 4000 < 0.12
    assert drop(["x"] * 50, 0.5, torch.Generator().manual_seed(1)) == drop(["x"] * 50, 0.5,
                                                                          torch.Generator().manual_seed(1))
    assert drop(["x", "y"], 0.0) == ["x", "y"]


def text_module(cond_drop_prob=0.0):
    from shared.diffusion.schedules import DiscreteVP
    from shared.methods.diffusion_module import DiffusionModule
    from shared.nn.unet import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_heads=2, norm_groups=8, context_dim=32)
    for p in net.parameters():  # SD zero-initialises proj_out; perturb so the context visibly reaches the output
        p.data.add_(0.02 * torch.randn_like(p))
    text = TextConditioner(CLIPTextEncoder(**TINY), trainable=True)
    return DiffusionModule(net, DiscreteVP(num_steps=100), ema_decay=None, cond_drop_prob=cond_drop_prob,
                           text_encoder=text, sample_shape=(1, 8, 8))


def test_captions_reach_the_network_and_dropout_uses_the_empty_caption():
    m = text_module()
    x = torch.randn(2, 1, 8, 8)

    def loss(captions, module=m):
        return module.training_loss({"x": x, "caption": captions}, torch.Generator().manual_seed(0)).item()

    assert loss(CAPTIONS) != loss(["", ""])
    dropped = text_module(cond_drop_prob=1.0)  # every caption dropped to the null caption: captions do not matter
    assert loss(CAPTIONS, dropped) == loss(["", ""], dropped) == loss(["x", "y"], dropped)
    with pytest.raises(ValueError, match="batch has no 'caption'"):
        m.training_loss({"x": x}, torch.Generator().manual_seed(0))
    opt = m.configure_optimizers()
    text_encoder = m.conditions["caption"].encoder
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for p in [*m.net.parameters(), *text_encoder.parameters()] if p.requires_grad)


def test_text_guided_sampling_scale_one_is_conditional_and_errors_are_clear():
    m = text_module().eval()
    x_T = torch.randn(2, 1, 8, 8)
    kw = dict(x_T=x_T, sampler={"name": "ddim", "steps": 4, "eta": 0.0}, use_ema=False)
    cond = m.sample(cond={"caption": CAPTIONS}, **kw)
    assert not torch.allclose(cond, m.sample(cond={"caption": ["", ""]}, **kw))
    guided = m.sample(cond={"caption": CAPTIONS}, **{**kw, "sampler": {**kw["sampler"], "guidance_scale": 3.0}})
    assert guided.shape == cond.shape and not torch.allclose(guided, cond)
    with pytest.raises(ValueError, match="do not match the 2 samples"):
        m.sample(cond={"caption": CAPTIONS[:1]}, **kw)
    with pytest.raises(ValueError, match="unknown condition"):
        m.sample(cond={"captions": CAPTIONS}, **kw)


def test_a_text_encoder_needs_a_network_with_matching_cross_attention():
    from shared.diffusion.schedules import DiscreteVP
    from shared.methods.diffusion_module import DiffusionModule
    from shared.nn.unet import UNet

    kw = dict(in_channels=1, image_size=8, base_channels=16, channel_mult=(1,), num_res_blocks=1,
              attention_resolutions=(8,), num_heads=2, norm_groups=8)
    text = TextConditioner(CLIPTextEncoder(**TINY))
    with pytest.raises(ValueError, match="no cross-attention"):
        DiffusionModule(UNet(**kw), DiscreteVP(num_steps=10), text_encoder=text)
    with pytest.raises(ValueError, match="32-dim tokens, the network's context_dim is 48"):
        DiffusionModule(UNet(**kw, context_dim=48), DiscreteVP(num_steps=10), text_encoder=text)


def test_animatediff_on_the_sd_unet_fresh_motion_module_equals_the_image_model_with_text():
    """The paper-scale config's structure at toy widths: SD's U-Net with cross-attention, motion modules inflated,
    captions as context — a fresh (zero-init) motion module leaves every frame equal to the image model's output,
    and only the motion modules train (U-Net and CLIP frozen)."""
    from hydra.utils import instantiate

    cfg = compose(["experiment=animatediff/webvid_sd15", *compose(["experiment=animatediff/webvid_sd15"])
                   .quick_overrides, "model.stage=image", "run_dir=/tmp/unused"])
    torch.manual_seed(0)
    image = instantiate(cfg.model)
    for p in image.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    text = instantiate(cfg.module.text_encoder)
    from shared.nn.motion_module import from_image_model, motion_module

    video = from_image_model(image, motion_module(heads=2, norm_groups=8), where=("input", "output"),
                             copy=True, position="before_resample")
    ctx = text(CAPTIONS)
    x, t = torch.randn(2, 2, 4, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        out = video(x, t, context=ctx)
        frames = torch.stack([image(x[:, :, f], t, context=ctx) for f in range(4)], 2)
    torch.testing.assert_close(out, frames, rtol=0, atol=1e-5)
    cfg = compose(["experiment=animatediff/webvid_sd15", *cfg.quick_overrides, "run_dir=/tmp/unused"])
    module = instantiate(cfg.module, net=instantiate(cfg.model))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".motion_modules." in n or "temporal" in n for n in trainable), sorted(trainable)[:3]
    assert not any(p.requires_grad for p in module.conditions["caption"].encoder.parameters())


def write_tiny_sd_folder(root):
    """A Stable Diffusion folder in diffusers layout (unet/, vae/, text_encoder/) at toy sizes, written by
    diffusers and transformers themselves: what `weights_dir/sd-v1-5` holds for a user, minus the size."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).save_pretrained(root / "unet")
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                            latent_channels=4, norm_num_groups=8).save_pretrained(root / "vae")
    hf_tiny().save_pretrained(root / "text_encoder")
    return root


@pytest.mark.parametrize("experiment", ["animatediff/webvid_sd15", "video_ldm/webvid_sd_t2v"])
def test_paper_scale_text_to_video_configs_load_a_local_sd_folder_and_train(experiment, tmp_path):
    """The configs' real loading path (U-Net, VAE and CLIP text encoder from one local SD folder), on a toy folder
    and the captioned shapes world: one fast_dev_run step, frozen parts unchanged, captions reaching the U-Net."""
    from shared.engine.run import build
    from shared.engine.train import run

    sd = write_tiny_sd_folder(tmp_path / "sd")
    overrides = [f"experiment={experiment}", "data=shapes_video", "data.size=16", "data.frames=4", "data.batch_size=2",
                 "data.num_workers=0", "data.train.n=4", "trainer=cpu", "trainer.precision=32-true",
                 "callbacks.samples=null", "logger=none", f"model.image.weights={sd}", "data.root=null",
                 f"module.text_encoder.weights={sd}", "model.image.use_checkpoint=false",
                 f"module.latent.autoencoder.weights_path={sd}/vae/diffusion_pytorch_model.safetensors",
                 "module.latent.autoencoder.block_out_channels=[16,32]", "module.latent.autoencoder.layers_per_block=1",
                 "module.latent.autoencoder.norm_num_groups=8", "module.latent.chunk_size=null",
                 "module.sample_shape=[4,4,8,8]", "trainer.fast_dev_run=true", f"run_dir={tmp_path / 'run'}"]
    if experiment.startswith("animatediff"):
        overrides += ["model.motion_module.heads=2", "model.motion_module.norm_groups=8", "~data.train.csv_path",
                      "data.stride=null"]
    else:
        overrides += ["model.temporal.norm_groups=8", "model.temporal.head_channels=-1"]
    cfg = compose(overrides)
    datamodule, module = build(cfg)
    from safetensors.torch import load_file

    unet_file = load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert module.conditions["caption"].encoder.encoder.text_model.encoder.layers[0].mlp.fc1.weight.shape == (64, 32)
    assert module.net.context_dim == 32 and sum(v.numel() for v in unet_file.values()) == sum(
        p.numel() for n, p in module.net.named_parameters() if not p.requires_grad)  # the whole SD U-Net, frozen
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch["caption"][0], str) and batch["caption"][0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        a = module.training_loss(batch, g)
        b = module.training_loss({**batch, "caption": ["" for _ in batch["caption"]]}, torch.Generator().manual_seed(0))
    assert torch.isfinite(a) and a != b  # the caption changes the prediction
    run(cfg)


def test_sample_grid_passes_captions_to_a_text_conditioned_module(tmp_path):
    """The periodic sample grid of a text model samples with captions (configured, else the first batch's) —
    without them SD's cross-attention would get no context."""
    from types import SimpleNamespace

    from shared.engine.callbacks import SampleGrid

    m = text_module().eval()
    seen = {}
    real_sample = m.sample

    def spy(n, **kw):
        seen.update(kw)
        return real_sample(n, **{**kw, "sampler": {**kw["sampler"], "name": "ddim", "steps": 2, "eta": 0.0}})

    m.sample = spy
    trainer = SimpleNamespace(is_global_zero=True, fast_dev_run=False, default_root_dir=str(tmp_path), global_step=1)
    cb = SampleGrid(every_n_steps=1, n=3, guidance_scale=2.0)
    cb.on_train_batch_end(trainer, m, None, {"x": torch.zeros(2, 1, 8, 8), "caption": CAPTIONS}, 0)
    assert seen["cond"]["caption"] == [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]]
    assert seen["sampler"]["guidance_scale"] == 2.0
    assert (tmp_path / "samples" / "step0000001.png").exists()
    SampleGrid(n=2, captions=["a cat"])._save(trainer, m, "final")
    assert seen["cond"]["caption"] == ["a cat", "a cat"]
