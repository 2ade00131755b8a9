"""SD-compatible U-Net (shared/nn/spatial_transformer.py, shared/nn/sd_unet.py): parity with diffusers'
``UNet2DConditionModel`` on a tiny random model (state-dict conversion and folder loading), SD-1.5's parameter
count, the clear error on mismatched weights, and video inflation with text context."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.nn.motion_module import from_image_model
from shared.nn.sd_unet import (
    compvis_to_ours,
    diffusers_key_map,
    diffusers_to_ours,
    kwargs_from_diffusers_config,
    load_sd_unet,
    sd15_unet_kwargs,
)
from shared.nn.spatial_transformer import SpatialTransformer
from shared.nn.unet import UNet, count_parameters
from shared.nn.video import vdm_temporal, video_from_image

diffusers = pytest.importorskip("diffusers")

TINY = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=8,
            norm_num_groups=8)
TINY_OURS = dict(in_channels=4, out_channels=4, image_size=16, base_channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(16,), num_heads=8, norm_groups=8, context_dim=16,
                 transformer_depth=1, use_linear_proj=False, norm_eps=1e-5)


def randomise(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Perturb every parameter (zero-initialised ones included) so no layer is trivially the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(scope="module")
def tiny_diffusers():
    torch.manual_seed(0)
    return randomise(diffusers.UNet2DConditionModel(**TINY)).eval()


def inputs(seed: int = 1, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([17.0, 903.0][:batch])
    ctx = torch.randn(batch, 5, 16, generator=g)
    return x, t, ctx


def max_diff_vs_diffusers(ref, ours) -> float:
    x, t, ctx = inputs()
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample
        got = ours(x, t, context=ctx)
    return (want - got).abs().max().item(), want.abs().max().item()


def test_config_translation_matches_hand_kwargs(tiny_diffusers):
    kwargs = kwargs_from_diffusers_config(dict(tiny_diffusers.config))
    for k, v in TINY_OURS.items():
        assert kwargs[k] == v, k


def test_diffusers_state_dict_parity(tiny_diffusers):
    ours = UNet(**TINY_OURS).eval()
    ours.load_state_dict(diffusers_to_ours(tiny_diffusers.state_dict(), ours), strict=True)
    diff, scale = max_diff_vs_diffusers(tiny_diffusers, ours)
    assert scale > 0.1  # a non-trivial output
    assert diff < 1e-4, diff
    # the time embedding, context and every layer matter: a different context changes the output
    x, t, ctx = inputs()
    with torch.no_grad():
        assert (ours(x, t, context=ctx) - ours(x, t, context=ctx + 1)).abs().max() > 1e-3


def test_load_sd_unet_from_folder(tiny_diffusers, tmp_path):
    tiny_diffusers.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "unet"):
        ours = load_sd_unet(path).eval()
        assert isinstance(ours.middle_block[1], SpatialTransformer)
        diff, _ = max_diff_vs_diffusers(tiny_diffusers, ours)
        assert diff < 1e-4, diff
    # a single safetensors file of diffusers keys, with the architecture given as overrides
    single = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    ours = load_sd_unet(single, **TINY_OURS).eval()
    assert max_diff_vs_diffusers(tiny_diffusers, ours)[0] < 1e-4


def test_compvis_layout_round_trip(tiny_diffusers, tmp_path):
    """The CompVis single-file layout (model.diffusion_model.*) loads to the same network."""
    from safetensors.torch import save_file

    ref = UNet(**TINY_OURS).eval()
    ref.load_state_dict(diffusers_to_ours(tiny_diffusers.state_dict(), ref))
    compvis = {"model.diffusion_model." + theirs: ref.state_dict()[ours].clone()
               for ours, theirs in diffusers_key_map(ref, "compvis").items()}
    assert "model.diffusion_model.input_blocks.1.0.in_layers.0.weight" in compvis
    assert "model.diffusion_model.out.2.weight" in compvis
    compvis["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other modules are ignored
    path = tmp_path / "sd.safetensors"
    save_file(compvis, str(path))
    ours = load_sd_unet(path, **TINY_OURS).eval()
    assert max_diff_vs_diffusers(tiny_diffusers, ours)[0] < 1e-4
    assert compvis_to_ours(compvis, ref).keys() == ref.state_dict().keys()


def test_mismatched_state_dict_raises_one_clear_error(tiny_diffusers):
    ours = UNet(**TINY_OURS)
    state = dict(tiny_diffusers.state_dict())
    state.pop("conv_in.weight")
    state["extra.weight"] = torch.zeros(1)
    state["conv_out.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as err:
        diffusers_to_ours(state, ours)
    msg = str(err.value)
    assert "missing: conv_in.weight" in msg and "unexpected: extra.weight" in msg
    assert "mis-shaped: conv_out.bias (7,)" in msg
    wrong = UNet(**{**TINY_OURS, "context_dim": 32})  # cross-attention k/v widths differ
    with pytest.raises(ValueError, match="mis-shaped: .*attn2.to_k.weight"):
        diffusers_to_ours(tiny_diffusers.state_dict(), wrong)
    with pytest.raises(FileNotFoundError, match="no SD U-Net weights"):
        load_sd_unet("/nonexistent/stable-diffusion-v1-5")


def test_sd15_parameter_count_matches_diffusers():
    with torch.device("meta"):
        ours = UNet(**sd15_unet_kwargs())
        ref = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # defaults = SD-1.x layout
    assert count_parameters(ours) == count_parameters(ref) == 859_520_964
    assert kwargs_from_diffusers_config(dict(ref.config)) == {**sd15_unet_kwargs(), "channel_mult": (1, 2, 4, 4),
                                                               "attention_resolutions": (64, 32, 16)}
    mapping = diffusers_key_map(ours)
    assert sorted(mapping.values()) == sorted(ref.state_dict().keys())
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert all(ours.state_dict()[k].shape == shapes[v] for k, v in mapping.items())


def test_defaults_unchanged():
    """No context_dim: the DDPM/ADM network, GroupNorm eps 1e-6 everywhere, no transformer."""
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), norm_groups=4)
    assert not any(isinstance(m, SpatialTransformer) for m in net.modules())
    assert all(m.eps == 1e-6 for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_video_inflation_equals_image_model_with_context(tiny_diffusers):
    image = UNet(**TINY_OURS).eval()
    image.load_state_dict(diffusers_to_ours(tiny_diffusers.state_dict(), image))
    x, t, ctx = inputs(batch=2)
    frames = 3
    video_x = torch.stack([x.roll(k, dims=-1) for k in range(frames)], dim=2)  # (B, C, T, H, W)
    with torch.no_grad():
        want = torch.stack([image(video_x[:, :, k], t, context=ctx) for k in range(frames)], dim=2)
        motion = from_image_model(image, dict(heads=4, norm_groups=8), position="before_resample").eval()
        assert len(motion.temporal_names) == 7  # 2 down residual stages + middle + 2 levels x 2 up stages
        got = motion(video_x, t, context=ctx)
        assert (got - want).abs().max().item() < 1e-5
        vdm = video_from_image(image, lambda c: vdm_temporal(c, num_heads=4, norm_groups=8),
                               insert="attention").eval()
        got = vdm(video_x, t, context=ctx)
        assert (got - want).abs().max().item() < 1e-5
    blocks = dict(vdm.named_modules())
    parents = [blocks[name.rsplit(".", 1)[0]] for name in vdm.temporal_names]
    assert parents and all(any(isinstance(m, SpatialTransformer) for m in b) for b in parents)
    # input block 1 (level 0), middle block, output blocks 2 and 3 (level 0) carry spatial transformers
    assert len(parents) == 4
    # the temporal layers do see the frames once they are non-zero
    randomise(motion, seed=3)
    with torch.no_grad():
        assert (motion(video_x, t, context=ctx) - want).abs().max() > 1e-3


def test_sd2_style_variant_parity():
    """Linear projections, transformer depth 2, per-level heads of one width (SD-2's attention_head_dim list),
    2 residual blocks, a plain last level: the config translation and the weights still match diffusers."""
    torch.manual_seed(0)
    cfg = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=2,
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
               attention_head_dim=(2, 4, 4), norm_num_groups=8, use_linear_projection=True,
               transformer_layers_per_block=2)
    ref = randomise(diffusers.UNet2DConditionModel(**cfg)).eval()
    kwargs = kwargs_from_diffusers_config(dict(ref.config))
    assert (kwargs["head_channels"], kwargs["transformer_depth"], kwargs["attention_resolutions"]) == (8, 2, (16, 8))
    ours = UNet(**kwargs).eval()
    ours.load_state_dict(diffusers_to_ours(ref.state_dict(), ours), strict=True)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 3, 12, generator=g)
    t = torch.tensor([5.0, 640.0])
    with torch.no_grad():
        assert (ref(x, t, encoder_hidden_states=ctx).sample - ours(x, t, context=ctx)).abs().max() < 1e-4


def test_unet_sd15_config_builds_sd15():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "unet_sd15.yaml")
    with torch.device("meta"):
        net = instantiate(cfg)
    assert count_parameters(net) == 859_520_964 and net.context_dim == 768
