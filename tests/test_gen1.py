"""Gen-1's pieces (papers/gen1, shared/nn/structure.py, shared/nn/image_embedding.py, the LevelCondition seam):
structure levels (t_s = 0 is the full-resolution depth, larger t_s lower-frequency), per-item levels in training and
a chosen one at sampling, concatenated structure, temporal guidance at omega_t = 1 equal to the plain video model
(and the extrapolation formula otherwise), joint image-video flags, editing by DDIM inversion, the image embedder,
and CLIP's image tower loading strictly (parity with transformers on a tiny random model)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from papers.gen1.module import Gen1, temporal_guided
from shared.diffusion.schedules import DiscreteVP
from shared.methods.conditions import LevelCondition, TensorCondition
from shared.nn.image_embedding import CLIPImageEncoder, ImageEmbedder, load_clip_image_encoder
from shared.nn.structure import ConcatInputs, StructureEncoder, structure_blur
from shared.nn.unet import UNet
from shared.nn.video import inflate_unet, vdm_temporal


def depth_maps(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.7 * torch.rand(n, 1, size, size, generator=g)


def high_freq_energy(x):
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


def test_structure_level_zero_is_the_full_resolution_depth_and_higher_levels_are_lower_frequency():
    d = depth_maps()
    assert torch.equal(structure_blur(d, 0), d)
    energies = [high_freq_energy(structure_blur(d, k)) for k in range(5)]
    assert all(a > b for a, b in zip(energies, energies[1:])), energies
    # the mean is kept at every level (obscuring, not shifting)
    for k in range(5):
        assert torch.allclose(structure_blur(d, k).mean(dim=(2, 3)), d.mean(dim=(2, 3)), atol=1e-5)
    # per-item levels equal the per-level calls item by item
    lv = torch.tensor([0, 2, 1])
    got = structure_blur(d, lv)
    for i, k in enumerate(lv.tolist()):
        assert torch.equal(got[i:i + 1], structure_blur(d[i:i + 1], k))
    with pytest.raises(ValueError, match="must be >= 0"):
        structure_blur(d, -1)


def test_structure_encoder_maps_depth_videos_to_the_latent_grid():
    enc = StructureEncoder(size=8, depth_range=(0.3, 1.0), max_level=3)
    depth = 0.3 + 0.7 * torch.rand(2, 4, 16, 16)                 # (B, T, H, W) as the worlds give it
    s = enc(depth)
    assert s.shape == (2, 1, 4, 8, 8)
    assert float(s.min()) >= -1 - 1e-5 and float(s.max()) <= 1 + 1e-5
    want = torch.nn.functional.interpolate(((depth - 0.3) / 0.7 * 2 - 1).transpose(0, 1).reshape(-1, 1, 16, 16)
                                           .reshape(4, 2, 16, 16).transpose(0, 1).reshape(8, 1, 16, 16),
                                           size=(8, 8), mode="area")
    assert torch.allclose(s.transpose(1, 2).reshape(8, 1, 8, 8), want, atol=1e-6)
    assert high_freq_energy(enc(depth, level=3)) < high_freq_energy(enc(depth, level=0))
    # with an estimator it takes the video itself
    est = StructureEncoder(size=8, depth_range=(0.3, 1.0), estimator=_MeanDepth())
    assert est(torch.rand(2, 3, 4, 16, 16) * 2 - 1).shape == (2, 1, 4, 8, 8)


class _MeanDepth(nn.Module):
    def forward(self, frames):
        return 0.5 + 0.1 * frames.mean(1)


def test_level_condition_draws_levels_in_training_and_uses_the_chosen_one_at_sampling():
    enc = StructureEncoder(size=None, depth_range=(0.3, 1.0), max_level=3)
    cond = LevelCondition(key="depth", kwarg="structure", drop_prob=0.0, encoder=enc)
    d = depth_maps(n=64)[:, 0]                                           # (B, H, W): images
    g = torch.Generator().manual_seed(0)
    out = cond.network_value(d, g, drop=True)
    levels = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, enc(d, levels))                          # drawn from the step's generator
    assert len(levels.unique()) == 4
    assert torch.equal(cond.network_value(d), enc(d, 0))             # sampling: the encoder's level
    with cond.at_level(2):
        assert torch.equal(cond.network_value(d), enc(d, 2))
    assert cond.level is None
    with pytest.raises(ValueError, match="LevelCondition needs an encoder with max_level"):
        LevelCondition(key="depth", encoder=nn.Identity())


def test_concat_inputs_feeds_the_structure_channel():
    net = UNet(in_channels=5, out_channels=4, image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attention_resolutions=(), norm_groups=4)
    wrapped = ConcatInputs(net, channels=1)
    assert wrapped.in_channels == 4 and wrapped.out_channels == 4
    x, s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([3.0, 300.0])
    with torch.no_grad():
        assert torch.equal(wrapped(x, t, structure=s), net(torch.cat([x, s], 1), t))
        assert torch.equal(wrapped(x, t), net(torch.cat([x, torch.zeros_like(s)], 1), t))
    with pytest.raises(ValueError, match="structure is"):
        wrapped(x, t, structure=s[:, :, :4])


def tiny_gen1(**kwargs) -> Gen1:
    torch.manual_seed(0)
    unet = UNet(in_channels=3, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), norm_groups=4, context_dim=6, num_heads=2)
    inflate_unet(unet, lambda c: vdm_temporal(c, 1, -1, 4, 8, 3), insert="resblock")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # non-zero temporal layers: the video and per-frame models differ
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    net = ConcatInputs(unet, 1)
    conditions = {
        "source": LevelCondition(key="source", kwarg="structure", drop_prob=0.1, drop_encoded=True, guided=False,
                                 optional=True, encoder=StructureEncoder(None, (0.3, 1.0), 0, 2)),
        "content": TensorCondition(key="content", kwarg="context", drop_prob=0.1, drop_encoded=True,
                                   encoder=ImageEmbedder(nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 5)), 5, 6)),
    }
    return Gen1(net, DiscreteVP(100), prediction="v", ema_decay=None, clip_x0=None, sample_shape=(2, 3, 8, 8),
                sampler={"name": "ddim", "steps": 4, "eta": 0.0}, conditions=conditions, **kwargs).eval()


def gen1_cond(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"source": 0.3 + 0.7 * torch.rand(n, 3, 8, 8, generator=g),
            "content": torch.randn(n, 2, 8, 8, generator=g)}


def test_temporal_guidance_at_one_is_the_plain_video_model_and_extrapolates_otherwise():
    m = tiny_gen1()
    cond = gen1_cond()
    x_T = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = m.sample(x_T=x_T, cond=cond)
    assert torch.equal(m.sample(x_T=x_T, cond=cond, sampler={"temporal_scale": 1.0}), plain)
    assert torch.equal(m.sample(x_T=x_T, cond=cond, sampler={"temporal_scale": 1.0, "guidance_scale": 2.0}),
                       m.sample(x_T=x_T, cond=cond, sampler={"guidance_scale": 2.0}))
    assert (m.sample(x_T=x_T, cond=cond, sampler={"temporal_scale": 3.0}) - plain).abs().max() > 1e-4
    # the formula, on the network: frames + w (video - frames)
    ck, uk = m.conditions.guidance_pair(m.prepare_cond(cond), m.device, False)
    x, t = torch.randn(2, 2, 3, 8, 8), torch.tensor([10.0, 60.0])
    flags = torch.zeros(2, 3, dtype=torch.bool)
    with torch.no_grad():
        video = m.net(x, t, **ck)
        frames = m.net(x, t, frame_is_video=flags, **ck)
        assert (video - frames).abs().max() > 1e-4
        m._omega_t = 2.5
        got = m.guided_network(ck, uk, 1.0, use_ema=False)(x, t)
        m._omega_t = 1.0
    assert torch.allclose(got, frames + 2.5 * (video - frames), atol=1e-5)
    f = lambda x, t: x  # noqa: E731
    assert temporal_guided(f, None, 1.0) is f
    with pytest.raises(ValueError, match="temporal_scale must be a finite number"):
        m.sample(x_T=x_T, cond=cond, sampler={"temporal_scale": "abc"})


def test_joint_training_flags_whole_clips_as_images():
    m = tiny_gen1(image_prob=0.5).train()
    seen = {}
    orig = m.objective

    def spy(x0, generator, **kw):
        seen.update(kw)
        return orig(x0, generator, **kw)

    m.objective = spy
    cond = gen1_cond(n=8)
    batch = {"x": torch.randn(8, 2, 3, 8, 8), **cond}
    loss = m.training_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    flags = seen["frame_is_video"]
    assert flags.shape == (8, 3) and (flags.all(1) | ~flags.any(1)).all()   # a clip is all video or all images
    want = torch.rand(8, generator=torch.Generator().manual_seed(0)) >= 0.5
    assert torch.equal(flags[:, 0], want) and 0 < int(want.sum()) < 8
    assert seen["structure"].shape == (8, 1, 3, 8, 8) and seen["context"].shape == (8, 1, 6)


def test_edit_by_ddim_inversion_reconstructs_with_the_same_condition():
    """Inverting a sample under its own conditions and resampling with them gives it back (deterministic DDIM, fine
    grid): editing changes only what the new condition changes."""
    m = tiny_gen1()
    cond = gen1_cond()
    x_T = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    x0 = m.sample(x_T=x_T, cond=cond, sampler={"steps": 50})
    again = m.edit(x0, cond, cond, sampler={"steps": 50})
    other = m.edit(x0, cond, gen1_cond(seed=9), sampler={"steps": 50})
    err_same, err_other = (again - x0).abs().mean(), (other - x0).abs().mean()
    assert err_same < 0.25 * err_other, (err_same, err_other)


def test_image_embedder_tokens_and_frozen_backbone():
    bb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 7))
    emb = ImageEmbedder(bb, 7, 10, tokens=2)
    assert not any(p.requires_grad for p in bb.parameters()) and emb.proj.weight.requires_grad
    img = torch.randn(3, 3, 4, 4)
    assert emb(img).shape == (3, 2, 10)
    assert torch.equal(emb(torch.stack([img, img + 1], 2)), emb(img))   # a video is embedded from frame 0
    emb.train()
    assert not bb.training
    with pytest.raises(ValueError, match="expected \\(B, 8\\)"):
        ImageEmbedder(bb, 8, 10)(img)


# ---------------------------------------------------------------------------------- CLIP's image tower
transformers = pytest.importorskip("transformers")
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                   patch_size=14, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def test_clip_image_encoder_parity_and_strict_loading(tmp_path):
    torch.manual_seed(0)
    ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY_VISION)).eval()
    ref.save_pretrained(tmp_path / "image_encoder", safe_serialization=True)
    ours = load_clip_image_encoder(tmp_path).eval()    # finds the image_encoder/ subfolder
    images = torch.rand(2, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        want = ref(pixel_values=ours.preprocess(images)).image_embeds
        got = ours(images)
    assert float((got - want).abs().max()) < 1e-5
    assert got.shape == (2, 16)
    # strict: one tensor short is one line naming it; an absent path names what was expected
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "image_encoder" / "model.safetensors"))
    state.pop("visual_projection.weight")
    save_file(state, str(tmp_path / "short.safetensors"))
    kwargs = {k: TINY_VISION[k] for k in ("image_size", "patch_size", "projection_dim")}
    with pytest.raises(ValueError, match="missing \\['visual_projection.weight'\\]"):
        load_clip_image_encoder(tmp_path / "short.safetensors", width=32, layers=2, heads=4, mlp_dim=64, **kwargs)
    with pytest.raises(FileNotFoundError, match="no CLIP image-encoder weights at .*absent.*model.safetensors"):
        load_clip_image_encoder(tmp_path / "absent")
    assert isinstance(ours, CLIPImageEncoder)


# ---------------------------------------------------------------------------------- MiDaS DPT (paper scale)
TINY_DPT = dict(vit=dict(image_size=32, patch_size=16, width=32, depth=4, heads=2), hooks=(0, 1, 2, 3),
                reassemble=(8, 16, 32, 32), features=16)


def test_midas_dpt_backbone_is_timms_vit_and_the_released_layout_loads_strictly(tmp_path):
    from shared.nn.dpt import MidasDPT, ViTBackbone, load_midas_dpt

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=4,
                                                           num_heads=2, num_classes=10).eval()
    vit = ViTBackbone(image_size=32, patch_size=16, width=32, depth=4, heads=2, num_classes=10).eval()
    vit.load_state_dict(ref.state_dict(), strict=True)           # timm's key layout, one to one
    outs = []
    hooks = [ref.blocks[i].register_forward_hook(lambda m, i, o: outs.append(o)) for i in (1, 3)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref(x)
        got = vit.hooked(x, (1, 3))
    for h in hooks:
        h.remove()
    assert max(float((a - b).abs().max()) for a, b in zip(outs, got)) < 1e-5
    # the released MiDaS file layout (names written out here from MiDaS's dpt_depth.py / vit.py / blocks.py)
    model = MidasDPT(**TINY_DPT).eval()
    state = {k: torch.randn(v.shape) * 0.1 for k, v in model.state_dict().items()}
    for key in ("pretrained.model.blocks.3.attn.qkv.weight", "pretrained.model.pos_embed",
                "pretrained.act_postprocess1.0.project.0.weight", "pretrained.act_postprocess1.4.weight",
                "pretrained.act_postprocess4.4.weight", "scratch.layer4_rn.weight", "scratch.refinenet4.resConfUnit1."
                "conv1.weight", "scratch.refinenet1.out_conv.bias", "scratch.output_conv.0.weight",
                "scratch.output_conv.2.weight", "scratch.output_conv.4.weight"):
        assert key in state, key
    assert "pretrained.act_postprocess3.4.weight" not in state
    torch.save({"model": state, "optimizer": {}}, tmp_path / "dpt_tiny.pt")
    loaded = load_midas_dpt(tmp_path / "dpt_tiny.pt", **TINY_DPT).eval()
    with torch.no_grad():
        depth = loaded(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert depth.shape == (2, 64, 64) and float(depth.min()) >= 0
    state.pop("scratch.refinenet2.out_conv.weight")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt does not match a MiDaS DPT: missing \['scratch.refinenet2"):
        load_midas_dpt(tmp_path / "bad.pt", **TINY_DPT)
    with pytest.raises(FileNotFoundError, match="no MiDaS DPT weights at .*dpt_large-midas"):
        load_midas_dpt(tmp_path / "absent.pt")
    # as Gen-1's structure estimator: MiDaS's inverse depth normalised per frame
    enc = StructureEncoder(size=8, estimator=loaded, normalize="per_frame")
    s = enc(torch.rand(1, 3, 2, 64, 64) * 2 - 1)
    assert s.shape == (1, 1, 2, 8, 8) and float(s.min()) >= -1 - 1e-5 and float(s.max()) <= 1 + 1e-5
