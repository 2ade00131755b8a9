"""ControlNet (shared/nn/controlnet.py): the zero-initialised copy leaves the base unchanged (image and video
models), the residuals reach the skips and the middle block, parity with diffusers' ``ControlNetModel`` on a tiny
random model (its state dict converted, the residuals and the controlled U-Net's output), the original ``cldm``
layout (``control_model.*``, ``input_hint_block.{0,2,...}``, ``zero_convs.i.0``, ``middle_block_out.0``) loading
strictly from a file the test writes, one-line errors for a wrong file, and SD-1.5's key count."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shared.nn.controlnet import (
    ControlCondEmbedding,
    ControlledUNet,
    ControlNet,
    controlled_unet,
    controlnet_key_map,
    convert_controlnet_state_dict,
    load_controlnet,
    sd15_controlnet,
)
from shared.nn.motion_module import from_image_model
from shared.nn.sd_unet import diffusers_to_ours, sd15_unet_kwargs
from shared.nn.unet import UNet
from shared.nn.video import vdm_temporal, video_from_image

TINY_OURS = dict(in_channels=4, out_channels=4, image_size=16, base_channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(16,), num_heads=8, norm_groups=8, context_dim=16,
                 transformer_depth=1, use_linear_proj=False, norm_eps=1e-5)
TINY_DIFFUSERS = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                      attention_head_dim=8, norm_num_groups=8)
HINT = (8, 16)   # one halving: a 32x32 control image for 16x16 latents


def randomise(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([17.0, 903.0][:batch]),
            torch.randn(batch, 5, 16, generator=g), torch.randn(batch, 3, 32, 32, generator=g))


def tiny_base(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return randomise(UNet(**TINY_OURS), seed=seed).eval()


def test_zero_initialised_controlnet_leaves_the_base_unchanged_bit_for_bit():
    base = tiny_base()
    x, t, ctx, hint = inputs()
    net = ControlledUNet(base, ControlNet.from_unet(base, 3, HINT)).eval()
    with torch.no_grad():
        want = base(x, t, context=ctx)
        assert torch.equal(net(x, t, control=hint, context=ctx), want)
        assert torch.equal(net(x, t, context=ctx), want)            # no control: the base itself
        down, mid = net.controlnet(x, t, hint, context=ctx)
    assert len(down) == len(base.input_blocks) and all(float(d.abs().max()) == 0 for d in down)
    assert float(mid.abs().max()) == 0
    # the copy starts as the base's encoder (Sec. 3.2: cloned weights), the base is frozen, the copy trains
    assert torch.equal(net.controlnet.input_blocks[1][0].conv1.weight, base.input_blocks[1][0].conv1.weight)
    assert not any(p.requires_grad for p in net.base.parameters())
    assert all(p.requires_grad for p in net.controlnet.parameters())


def test_zero_init_identity_on_a_video_model_with_temporal_layers():
    """The copy leaves the temporal layers out (a per-frame ControlNet on an AnimateDiff-style video U-Net) and the
    controlled video model equals the video model at initialisation."""
    image = tiny_base()
    video = from_image_model(image, dict(heads=4, norm_groups=8), position="before_resample").eval()
    randomise(video, seed=5)
    cn = ControlNet.from_unet(video, 1, HINT)
    assert not any("temporal" in k or "attention_blocks" in k for k in cn.state_dict())
    assert set(ControlNet.from_unet(image, 1, HINT).state_dict()) == set(cn.state_dict())
    net = ControlledUNet(video, cn).eval()
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 3, 16, 16, generator=g), torch.tensor([5.0, 500.0])
    ctx, hint = torch.randn(2, 5, 16, generator=g), torch.randn(2, 1, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(net(x, t, control=hint, context=ctx), video(x, t, context=ctx))
        randomise(cn, seed=7)  # a trained ControlNet steers every frame
        assert (net(x, t, control=hint, context=ctx) - video(x, t, context=ctx)).abs().max() > 1e-3


def test_residuals_enter_the_skips_and_the_middle_block():
    """With non-zero zero-convs the controlled output equals the base run with the residuals added by hand, and a
    scale of 0 switches the control off."""
    base = tiny_base()
    x, t, ctx, hint = inputs()
    cn = randomise(ControlNet.from_unet(base, 3, HINT), seed=3).eval()
    net = ControlledUNet(base, cn, conditioning_scale=0.5).eval()
    with torch.no_grad():
        down, mid = cn(x, t, hint, context=ctx)
        want = base(x, t, context=ctx, down_residuals=[0.5 * d for d in down], mid_residual=0.5 * mid)
        assert torch.allclose(net(x, t, control=hint, context=ctx), want, atol=1e-6)
        assert torch.equal(net(x, t, control=hint, context=ctx, conditioning_scale=0.0), base(x, t, context=ctx))
        assert (want - base(x, t, context=ctx)).abs().max() > 1e-3


def test_hint_encoder_halvings_and_bad_hints_fail_in_one_line():
    enc = ControlCondEmbedding(1, 32, (16, 32, 96, 256))
    assert enc.downsample == 8 and len(enc.blocks) == 6
    with torch.no_grad():
        out = enc(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 32, 8, 8) and float(out.abs().max()) == 0  # zero-initialised conv_out
    base = tiny_base()
    cn = ControlNet.from_unet(base, 3, HINT)
    x, t, ctx, hint = inputs()
    with pytest.raises(ValueError, match=r"the hint is \(16, 16\), expected \(32, 32\)"):
        cn(x, t, hint[..., :16, :16], context=ctx)
    with pytest.raises(ValueError, match="the hint has 1 channels, this ControlNet takes 3"):
        cn(x, t, hint[:, :1], context=ctx)


def test_controlled_unet_factory_loads_the_base_strictly(tmp_path):
    base = tiny_base()
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(path))
    net = controlled_unet(UNet(**TINY_OURS), 3, HINT, base_weights=str(path)).eval()
    x, t, ctx, hint = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, t, control=hint, context=ctx), base(x, t, context=ctx))
    save_file({k: v.contiguous() for k, v in list(base.state_dict().items())[1:]}, str(path))
    with pytest.raises(Exception, match="missing key"):
        controlled_unet(UNet(**TINY_OURS), 3, HINT, base_weights=str(path))


# ---------------------------------------------------------------------------------- parity with diffusers
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_diffusers():
    torch.manual_seed(0)
    unet = randomise(diffusers.UNet2DConditionModel(**TINY_DIFFUSERS)).eval()
    cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT)
    return unet, randomise(cn, seed=1).eval()


def test_diffusers_controlnet_parity(tiny_diffusers):
    ref_unet, ref_cn = tiny_diffusers
    base = UNet(**TINY_OURS).eval()
    base.load_state_dict(diffusers_to_ours(ref_unet.state_dict(), base), strict=True)
    cn = ControlNet(TINY_OURS, 3, HINT).eval()
    cn.load_state_dict(convert_controlnet_state_dict(ref_cn.state_dict(), cn), strict=True)
    x, t, ctx, hint = inputs()
    with torch.no_grad():
        r_down, r_mid = ref_cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        down, mid = cn(x, t, hint, context=ctx)
        assert len(down) == len(r_down)
        assert max(float((a - b).abs().max()) for a, b in zip(down, r_down)) < 1e-4
        assert float((mid - r_mid).abs().max()) < 1e-4
        want = ref_unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=r_down,
                        mid_block_additional_residual=r_mid).sample
        got = ControlledUNet(base, cn)(x, t, control=hint, context=ctx)
        assert float((got - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))


def test_load_diffusers_folder_and_original_layout(tiny_diffusers, tmp_path):
    _, ref_cn = tiny_diffusers
    ref_cn.save_pretrained(tmp_path / "cn", safe_serialization=True)
    cn = load_controlnet(tmp_path / "cn").eval()   # architecture from config.json
    x, t, ctx, hint = inputs()
    with torch.no_grad():
        r_down, r_mid = ref_cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        down, mid = cn(x, t, hint, context=ctx)
    assert float((mid - r_mid).abs().max()) < 1e-4
    # the original cldm layout, written here from the public names: a full control_sd15-style file whose
    # control_model.* sits beside (ignored) SD weights
    ours = convert_controlnet_state_dict(ref_cn.state_dict(), cn)
    mapping = controlnet_key_map(cn, "original")
    original = {f"control_model.{mapping[k]}": v for k, v in ours.items()}
    assert "control_model.input_hint_block.0.weight" in original
    assert "control_model.input_hint_block.4.weight" in original          # blocks.1 (SiLUs at odd indices)
    assert "control_model.input_hint_block.6.weight" in original          # conv_out after 2 blocks
    assert "control_model.zero_convs.0.0.weight" in original and "control_model.middle_block_out.0.bias" in original
    assert "control_model.time_embed.0.weight" in original and "control_model.input_blocks.1.0.in_layers.0.weight" \
        in original
    original["model.diffusion_model.out.2.weight"] = torch.zeros(1)
    torch.save(original, tmp_path / "control_tiny.pth")
    loaded = load_controlnet(tmp_path / "control_tiny.pth", into=ControlNet(TINY_OURS, 3, HINT)).eval()
    with torch.no_grad():
        assert float((loaded(x, t, hint, context=ctx)[1] - r_mid).abs().max()) < 1e-4
    # strict: a tensor missing or one too many is one line naming it
    bad = {k: v for k, v in original.items() if "zero_convs.1." not in k}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: original ControlNet state dict does not fit.*missing: "
                                         r"zero_convs\.1\.0\.weight"):
        load_controlnet(tmp_path / "bad.pth", into=ControlNet(TINY_OURS, 3, HINT))
    with pytest.raises(FileNotFoundError, match="no ControlNet weights at"):
        load_controlnet(tmp_path / "absent.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pth")
    with pytest.raises(ValueError, match="not a ControlNet state dict"):
        load_controlnet(tmp_path / "foo.pth", into=ControlNet(TINY_OURS, 3, HINT))


def test_sd15_controlnet_layout_has_the_released_key_names():
    """SD-1.5's ControlNet: 12 zero convs, the 16-32-96-256 hint encoder into 320 channels, and a one-to-one key map
    onto both public layouts (built on the meta device: no memory for 361M parameters)."""
    with torch.device("meta"):
        cn = sd15_controlnet(3)
    orig, diff = controlnet_key_map(cn, "original"), controlnet_key_map(cn, "diffusers")
    assert len(orig) == len(cn.state_dict()) == len(set(orig.values())) == len(set(diff.values()))
    assert {f"zero_convs.{i}.0.weight" for i in range(12)} <= set(orig.values())
    assert {f"input_hint_block.{i}.weight" for i in range(0, 16, 2)} <= set(orig.values())
    assert "controlnet_cond_embedding.blocks.5.weight" in diff.values()
    assert tuple(cn.state_dict()["hint_embed.conv_out.weight"].shape) == (320, 256, 3, 3)
    assert tuple(cn.state_dict()["middle_out.weight"].shape) == (1280, 1280, 1, 1)
    n = sum(p.numel() for p in cn.parameters())
    assert 360_000_000 < n < 362_000_000, n     # SD-1.5 ControlNet: 361.3M parameters
    assert sd15_unet_kwargs()["base_channels"] == 320


def test_video_inflated_base_keeps_image_names_for_the_controlnet_copy():
    image = tiny_base()
    vdm = video_from_image(image, lambda c: vdm_temporal(c, num_heads=4, norm_groups=8), insert="attention")
    cn = ControlNet.from_unet(vdm, 3, HINT)
    assert set(cn.state_dict()) == set(ControlNet.from_unet(image, 3, HINT).state_dict())


def test_paper_scale_factory_sd_layout_with_motion_modules(tmp_path):
    """papers/controlnet_video/nets.py: the image U-Net inflated with (loaded) motion modules, frozen, steered per frame
    by a ControlNet copied from the image layers or loaded from a file; at initialisation the video model itself."""
    from papers.controlnet_video.nets import animatediff_controlnet
    from shared.nn.motion_module import motion_module_state_dict

    mm = dict(heads=4, norm_groups=8)
    ref_video = from_image_model(tiny_base(), mm, where=("input", "output"), position="before_resample").eval()
    randomise(ref_video, seed=11)
    mm_file = tmp_path / "mm.safetensors"
    save_file({k: v.contiguous() for k, v in motion_module_state_dict(ref_video).items()}, str(mm_file))
    net = animatediff_controlnet(tiny_base(), mm, motion_weights=str(mm_file), hint_channels=1, hint_block=HINT).eval()
    assert not any(p.requires_grad for p in net.base.parameters())
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 4, 3, 16, 16, generator=g), torch.tensor([50.0])
    ctx, hint = torch.randn(1, 5, 16, generator=g), torch.randn(1, 1, 3, 32, 32, generator=g)
    with torch.no_grad():
        base_out = net.base(x, t, context=ctx)
        assert torch.equal(net(x, t, control=hint, context=ctx), base_out)
        # the motion modules did load: the video model differs from the image model run frame by frame
        image = tiny_base().eval()
        frames = torch.stack([image(x[:, :, k], t, context=ctx) for k in range(3)], 2)
        assert (base_out - frames).abs().max() > 1e-3
    cn = randomise(ControlNet.from_unet(tiny_base(), 1, HINT), seed=4)
    cn_file = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(cn_file))
    loaded = animatediff_controlnet(tiny_base(), mm, controlnet_weights=str(cn_file), hint_channels=1,
                                    hint_block=HINT)
    assert all(torch.equal(a, b) for a, b in zip(loaded.controlnet.state_dict().values(), cn.state_dict().values()))


def test_pose_claim_sources_are_held_out_motions_of_seen_identities():
    """controlnet_video/puppets_pose_claim: the control sources are poses the base never trained on (held-out
    motions) of identities it did (the identity label is its prompt); training clips are seen x seen."""
    from conftest import compose

    from shared.data.puppets import HELDOUT_MOTIONS, MOTIONS, Puppets
    from shared.engine.claims import world_items

    cfg = compose(["experiment=controlnet_video/puppets_pose_claim"])
    world = dict(cfg.claim.source_world)
    motion, identity = world_items(cfg, 12, int(cfg.claim.real_seed), keys=("motion", "identity"), **world)
    assert {MOTIONS[int(m)] for m in motion} <= set(HELDOUT_MOTIONS)
    train = Puppets(**{k: v for k, v in cfg.data.train.items() if k != "_target_"})
    assert set(identity.tolist()) <= set(train.identity_pool)
    assert not {MOTIONS[m] for m in train.motion_pool} & set(HELDOUT_MOTIONS)
    assert int(cfg.claim.prompt.num_classes) == train.num_identities


def test_pose_claim_judges_separate_own_from_other_poses_and_reject_an_unknown_world():
    """The pose control error (the avatar judge's keypoints vs the driving keypoints) is small for a real clip
    against its own pose and large against another clip's; an unknown claim.world is one line naming it."""
    from omegaconf import OmegaConf

    from papers.controlnet_video.claim import judges_for
    from shared.data.puppets import Puppets

    judges = judges_for(OmegaConf.create({"world": "puppets", "judge_path": None}))
    ds = Puppets(n=16, frames=4, size=16, split="test", seed=5, motion_split="unseen")
    items = [ds[i] for i in range(16)]
    x = torch.stack([it["x"] for it in items])
    src = {"keypoints": torch.stack([it["keypoints"] for it in items])}
    own = judges.errors(x, src)["kp_err"]
    other = judges.errors(x.roll(1, dims=0), src)["kp_err"]
    assert own < 0.5 * other
    assert judges.fd(x, judges.stats(x)) < 1e-3
    with pytest.raises(ValueError, match="claim.world='moon'"):
        judges_for(OmegaConf.create({"world": "moon"}))
