"""AnimateDiff: the motion module (zero-init identity, only motion weights train, saved alone), the official
checkpoint layout, personalisation / MotionLoRA plumbing, the domain subsets, and the claim check."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import compose
from safetensors.torch import save_file

from papers.animatediff.data import MovingDigitsSubset
from papers.animatediff.module import stage_state_dict
from papers.animatediff.nets import animatediff_net
from shared.nn.lora import lora_parameters, lora_state_dict
from shared.nn.motion_module import (
    from_image_model,
    from_official,
    inject_motion_lora,
    load_motion_module_state_dict,
    load_official_checkpoint,
    motion_module_state_dict,
    official_prefixes,
    to_official,
)
from shared.nn.unet import UNet
from shared.nn.video import spatial_parameters, temporal_parameters

MM = dict(heads=2, norm_groups=4, ff_mult=2, max_len=24)


def image_unet(seed=0, **kw) -> UNet:
    """A tiny class-conditional U-Net with a *non-zero* output conv (a fresh UNet's is zero, which would make
    every identity check trivial)."""
    torch.manual_seed(seed)
    u = UNet(**{"in_channels": 1, "image_size": 16, "base_channels": 8, "channel_mult": [1, 2],
                "num_res_blocks": 1, "attention_resolutions": [8], "num_classes": 10, "norm_groups": 4, **kw})
    torch.nn.init.normal_(u.out_conv.weight, std=0.1)
    return u


def inputs(b=2, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, t, 16, 16, generator=g), torch.randint(0, 1000, (b,), generator=g),
            torch.randint(0, 10, (b,), generator=g))


def per_frame(net, x, t, y):
    return torch.stack([net(x[:, :, i], t, y) for i in range(x.shape[2])], dim=2)


def test_fresh_motion_module_leaves_every_frame_equal_to_the_image_model():
    img = image_unet()
    vid = from_image_model(img, MM)
    assert len(official_prefixes(vid)) == 7          # after every residual stage: 2 down, 1 mid, 4 up
    x, t, y = inputs()
    with torch.no_grad():
        ref = per_frame(img, x, t, y)
        assert ref.abs().max() > 0
        torch.testing.assert_close(vid(x, t, y), ref, rtol=0, atol=1e-6)
    # the motion module is not a no-op once proj_out is non-zero: it mixes frames
    for name, p in vid.named_parameters():
        if "proj_out" in name and "temporal_transformer" in name:
            torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        assert (vid(x, t, y) - ref).abs().max() > 1e-3


def test_only_motion_weights_train_and_the_image_model_stays_bit_identical():
    img = image_unet()
    vid = from_image_model(img, MM)
    before = {k: v.clone() for k, v in vid.state_dict().items()}
    mm_names = set(motion_module_state_dict(vid))
    trainable = [p for p in vid.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in temporal_parameters(vid)}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    for step in range(3):
        x, t, y = inputs(seed=step)
        loss = (vid(x, t, y) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in spatial_parameters(vid))
        opt.step()
    after = vid.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= mm_names                     # only motion-module tensors moved ...
    assert any("proj_out" in k for k in changed)              # ... including the zero-initialised output
    for k in set(before) - mm_names:
        assert torch.equal(before[k], after[k]), k


def test_motion_module_saved_alone_and_plugged_into_another_image_model(tmp_path):
    vid = from_image_model(image_unet(0), MM)
    for p in temporal_parameters(vid):
        torch.nn.init.normal_(p, std=0.1)
    state = motion_module_state_dict(vid)
    assert state and all(any(k.startswith(n + ".") for n in vid.temporal_names) for k in state)
    image_keys = set(image_unet(0).state_dict())
    assert not set(state) & image_keys                         # no 2D weight is repeated
    path = tmp_path / "mm.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    # a *different* (personalised) image model animated with the saved module, through the stage builder
    other = image_unet(5)
    w = tmp_path / "other.safetensors"
    save_file(other.state_dict(), str(w))
    net = animatediff_net(image_unet(9), stage="animate", image_weights=str(w), motion_module=MM,
                          motion_weights=str(path))
    ref = from_image_model(other, MM)
    load_motion_module_state_dict(ref, state)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y), ref(x, t, y))
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="missing"):
        load_motion_module_state_dict(ref, dict(list(state.items())[1:]))


def official_position_encoding(dim: int, max_len: int) -> torch.Tensor:
    """``PositionalEncoding.pe`` as the official code computes it (guoyww/AnimateDiff, motion_module.py)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def official_layout(channels: dict[str, int], ff_mult: int = 2, max_len: int = 24, seed: int = 0):
    """A random motion-module state dict in the released ``mm_sd_v15*.ckpt`` layout, written from the official
    code's module names (guoyww/AnimateDiff, animatediff/models/motion_module.py), one transformer block with
    two temporal self-attentions, no attention bias, GEGLU feed-forward; the position encodings are the sinusoidal
    buffers the released files carry."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, c in channels.items():
        p = f"{prefix}.temporal_transformer"
        shapes = {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.proj_in.weight": (c, c),
                  f"{p}.proj_in.bias": (c,), f"{p}.proj_out.weight": (c, c), f"{p}.proj_out.bias": (c,)}
        b = f"{p}.transformer_blocks.0"
        for a in (0, 1):
            for name in ("to_q", "to_k", "to_v"):
                shapes[f"{b}.attention_blocks.{a}.{name}.weight"] = (c, c)
            shapes[f"{b}.attention_blocks.{a}.to_out.0.weight"] = (c, c)
            shapes[f"{b}.attention_blocks.{a}.to_out.0.bias"] = (c,)
            shapes[f"{b}.attention_blocks.{a}.pos_encoder.pe"] = (1, max_len, c)
            shapes[f"{b}.norms.{a}.weight"] = (c,)
            shapes[f"{b}.norms.{a}.bias"] = (c,)
        shapes.update({f"{b}.ff.net.0.proj.weight": (2 * ff_mult * c, c), f"{b}.ff.net.0.proj.bias": (2 * ff_mult * c,),
                       f"{b}.ff.net.2.weight": (c, ff_mult * c), f"{b}.ff.net.2.bias": (c,),
                       f"{b}.ff_norm.weight": (c,), f"{b}.ff_norm.bias": (c,)})
        out.update({k: (official_position_encoding(c, max_len) if k.endswith(".pe") else torch.randn(s, generator=g))
                    for k, s in shapes.items()})
    return out


def test_official_checkpoint_layout_round_trip(tmp_path):
    vid = from_image_model(image_unet(), MM)
    # channels per official position in this tiny U-Net (base 8, mult 1, 2): level 0 = 8, level 1 = 16
    channels = {"down_blocks.0.motion_modules.0": 8, "down_blocks.1.motion_modules.0": 16,
                "mid_block.motion_modules.0": 16, "up_blocks.0.motion_modules.0": 16,
                "up_blocks.0.motion_modules.1": 16, "up_blocks.1.motion_modules.0": 8,
                "up_blocks.1.motion_modules.1": 8}
    assert set(official_prefixes(vid).values()) == set(channels)
    official = official_layout(channels)
    ckpt = tmp_path / "mm_sd_v15_tiny.ckpt"
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, ckpt)   # DDP-style wrapper
    loaded = load_official_checkpoint(ckpt)
    assert set(loaded) == set(official)
    load_motion_module_state_dict(vid, from_official(loaded, vid))        # strict: every tensor used, shapes fit
    back = to_official(motion_module_state_dict(vid), vid)
    assert set(back) == set(official)
    for k, v in official.items():
        assert torch.equal(back[k], v), k
    with pytest.raises(KeyError, match="no motion module"):
        from_official({"down_blocks.3.motion_modules.0.temporal_transformer.norm.weight": torch.ones(8)}, vid)
    bad = dict(from_official(official, vid))
    k = next(iter(bad))
    bad[k] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_motion_module_state_dict(vid, bad)


def test_released_files_load_with_or_without_position_encodings():
    """The current official code recomputes ``pos_encoder.pe`` and keeps it out of its state dict; the first released
    files carry it. Both load to the same network; a stored encoding must be the sinusoidal one of this max_len."""
    vid = from_image_model(image_unet(), MM)
    channels = {v: (8 if v.endswith(("down_blocks.0.motion_modules.0", "up_blocks.1.motion_modules.0",
                                     "up_blocks.1.motion_modules.1")) else 16) for v in official_prefixes(vid).values()}
    official = official_layout(channels)
    x, t, y = inputs()
    load_motion_module_state_dict(vid, from_official(official, vid))
    with torch.no_grad():
        want = vid(x, t, y)
    pe_keys = [k for k in official if k.endswith("pos_encoder.pe")]
    assert len(pe_keys) == 14
    without = {k: v for k, v in official.items() if k not in pe_keys}
    half = {k: (v.half() if k in pe_keys else v) for k, v in official.items()}   # an fp16 release
    for variant in (without, half):
        other = from_image_model(image_unet(), MM)
        load_motion_module_state_dict(other, from_official(variant, other))
        with torch.no_grad():
            torch.testing.assert_close(other(x, t, y), want, rtol=0, atol=0)
    wrong = dict(official)
    wrong[pe_keys[0]] = wrong[pe_keys[0]] + 1e-3
    with pytest.raises(ValueError, match="pos_encoder.pe: the file's position encoding differs"):
        load_motion_module_state_dict(vid, from_official(wrong, vid))
    v2 = official_layout(channels, max_len=32)   # a v2 file into a model built with v1's max_len 24
    with pytest.raises(ValueError, match=r"shape \(1, 32, 8\), this model's \(1, 24, 8\)"):
        load_motion_module_state_dict(vid, from_official(v2, vid))


def test_motion_lora_adapts_only_the_motion_attention_projections():
    vid = from_image_model(image_unet(), MM)
    for p in temporal_parameters(vid):
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = inputs()
    with torch.no_grad():
        ref = vid(x, t, y)
    names = inject_motion_lora(vid, rank=2)
    assert len(names) == 7 * 2 * 4                          # 7 modules x 2 attentions x (q, k, v, out)
    assert all(n.split(".")[-1] in ("to_q", "to_k", "to_v", "0") and "attention_blocks" in n for n in names)
    assert {id(p) for p in vid.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(vid)}
    with torch.no_grad():
        torch.testing.assert_close(vid(x, t, y), ref, rtol=0, atol=0)   # B = 0 at init
    vid.animatediff_stage = "motion_lora"
    assert set(stage_state_dict(vid)) == set(lora_state_dict(vid))


def test_personalisation_stages_lora_merged_equals_unmerged(tmp_path):
    base = image_unet()
    w = tmp_path / "base.safetensors"
    save_file(base.state_dict(), str(w))
    lora = {"rank": 2, "alpha": None, "target": None}
    net = animatediff_net(image_unet(3), stage="personalize_lora", image_weights=str(w), lora=lora)
    assert all(p.requires_grad == (p in set(lora_parameters(net))) for p in net.parameters())
    for p in lora_parameters(net):
        torch.nn.init.normal_(p, std=0.05)
    lw = tmp_path / "lora.safetensors"
    save_file(stage_state_dict(net), str(lw))
    personal = {"kind": "lora", "path": str(lw)}
    merged = animatediff_net(image_unet(4), stage="image", image_weights=str(w), personal=personal, lora=lora)
    assert not lora_parameters(merged)                        # merged into plain weights (no extra latency)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(merged(x[:, :, 0], t, y), net(x[:, :, 0], t, y), rtol=1e-5, atol=1e-5)
    full = animatediff_net(image_unet(3), stage="personalize_full", image_weights=str(w))
    assert all(p.requires_grad for p in full.parameters())


def test_moving_digits_subsets_filter_digits_directions_and_frames():
    ds = MovingDigitsSubset(12, digits=[7, 8, 9], directions=[4], frames=8, size=16)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 12 and all(int(it["y"]) in (7, 8, 9) and int(it["direction"]) == 4 for it in items)
    assert items[0]["x"].shape == (1, 8, 16, 16)
    frames = MovingDigitsSubset(5, digits=[0], frames_only=True, frames=8, size=16)
    assert frames[0]["x"].shape == (1, 16, 16) and int(frames[0]["y"]) == 0
    assert torch.equal(frames[3]["x"], MovingDigitsSubset(5, digits=[0], frames_only=True, frames=8, size=16)[3]["x"])




def test_sd15_sized_config_has_the_released_motion_module_layout():
    """conf/model/animatediff_sd15.yaml, built on the meta device (no memory): its 20 motion modules carry the
    names and shapes of mm_sd_v15.ckpt (SD-1.5 widths 320/640/1280/1280, 2 down and 3 up stages per level)."""
    from hydra.utils import instantiate

    cfg = compose(["model=animatediff_sd15"])
    with torch.device("meta"):
        net = instantiate(cfg.model)
    prefixes = official_prefixes(net)
    widths = [320, 640, 1280, 1280]
    want = {f"down_blocks.{i}.motion_modules.{j}": widths[i] for i in range(4) for j in range(2)}
    want.update({f"up_blocks.{i}.motion_modules.{j}": widths[3 - i] for i in range(4) for j in range(3)})
    assert set(prefixes.values()) == set(want)
    official = to_official(motion_module_state_dict(net), net)
    for prefix, c in want.items():
        b = f"{prefix}.temporal_transformer.transformer_blocks.0"
        assert official[f"{b}.attention_blocks.1.pos_encoder.pe"].shape == (1, 24, c)
        assert official[f"{b}.ff.net.0.proj.weight"].shape == (8 * c, c)
        assert official[f"{prefix}.temporal_transformer.proj_out.weight"].shape == (c, c)
    assert len(official) == 20 * len(official_layout({"p": 8}, ff_mult=4))


def test_before_resample_placement_keeps_identity_and_the_official_layout():
    img = image_unet()
    vid = from_image_model(img, MM, position="before_resample")
    assert official_prefixes(vid) == official_prefixes(from_image_model(img, MM))   # same names, other run order
    # the middle block as in the official code (v2): ResNet -> attention -> motion module -> ResNet
    assert [type(vid.middle_block[i]).__name__ for i in vid.middle_block.run_order] == [
        "ResBlock", "SpatialSelfAttention", "MotionModule", "ResBlock"]
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(vid(x, t, y), per_frame(img, x, t, y), rtol=0, atol=1e-6)
