"""Tune-A-Video (papers/tune_a_video): the inflated net starts as the image model on frame 0 (sparse-causal attention
of frame 0 is its own self-attention, temporal layers zero), keys and values span the first and previous frame, only
the query projections and temporal layers train, and after tuning every untuned weight is bit-identical."""
from __future__ import annotations

import torch

from papers.tune_a_video.data import OneVideo
from papers.tune_a_video.nets import tune_a_video_net, tuned_parameter_names
from shared.diffusion.schedules import DiscreteVP
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.attention import SpatialSelfAttention
from shared.nn.unet import UNet


def image():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_classes=10, norm_groups=4)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return net


def test_inflated_net_is_the_image_model_on_frame_zero_and_attends_sparse_causally():
    img = image().eval()
    import copy

    net = tune_a_video_net(copy.deepcopy(img)).eval()
    x, t, y = torch.randn(2, 1, 4, 8, 8), torch.tensor([10.0, 60.0]), torch.tensor([1, 2])
    with torch.no_grad():
        out = net(x, t, y=y)
        torch.testing.assert_close(out[:, :, 0], img(x[:, :, 0], t, y=y), atol=1e-5, rtol=0)
        assert (out[:, :, 2] - img(x[:, :, 2], t, y=y)).abs().max() > 1e-4     # frame 2 sees frames 0 and 1
        # frame 2's output does not depend on frame 3 (causal), but on frame 1 (its previous frame)
        x3 = x.clone()
        x3[:, :, 3] += 1.0
        torch.testing.assert_close(net(x3, t, y=y)[:, :, :3], out[:, :, :3], atol=1e-5, rtol=0)
    assert all(m.frame_attention == "sparse_causal" for m in net.modules() if isinstance(m, SpatialSelfAttention))


def test_only_queries_and_temporal_layers_train_and_the_rest_stays_bit_identical():
    net = tune_a_video_net(image())
    names = tuned_parameter_names(net)
    assert names and all(".qkv." in n or n.startswith(tuple(net.temporal_names)) for n in names)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = DiffusionModule(net, DiscreteVP(num_steps=100), sample_shape=(1, 4, 8, 8), ema_decay=None)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        loss = m.training_loss({"x": torch.rand(1, 1, 4, 8, 8) * 2 - 1, "y": torch.tensor([4])},
                               torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".qkv." in k or k.startswith(tuple(net.temporal_names)) for k in changed)
    for mod_name, mod in net.named_modules():
        if isinstance(mod, SpatialSelfAttention):
            c = mod.qkv.out_channels // 3
            w0, w1 = before[f"{mod_name}.qkv.weight"], after[f"{mod_name}.qkv.weight"]
            assert torch.equal(w0[c:], w1[c:]) and not torch.equal(w0[:c], w1[:c])   # keys/values frozen
            assert torch.equal(before[f"{mod_name}.qkv.bias"][c:], after[f"{mod_name}.qkv.bias"][c:])


def test_one_video_dataset_repeats_one_item():
    ds = OneVideo("shared.data.video_worlds.MovingDigits", index=3, n=5, frames=4, size=16, split="test", seed=7)
    from shared.data.video_worlds import MovingDigits

    ref = MovingDigits(n=10, frames=4, size=16, split="test", seed=7)[3]
    assert len(ds) == 5 and torch.equal(ds[4]["x"], ref["x"]) and int(ds[0]["y"]) == int(ref["y"])


def test_sd_architecture_tunes_only_its_query_projections_and_temporal_layers():
    """The paper-scale net (conf/model/tune_a_video_sd15.yaml): SD's spatial transformers keep their keys, values,
    feed-forward and convolutions frozen; attn1.to_q / attn2.to_q and the temporal attention train, and the
    inflated net equals the image U-Net on frame 0 (temporal layers zero, sparse-causal attention of frame 0)."""
    import copy

    from shared.nn.sd_unet import sd15_unet

    torch.manual_seed(0)
    img = sd15_unet(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                    norm_groups=8, num_heads=2, context_dim=8, in_channels=2, out_channels=2, image_size=8).eval()
    net = tune_a_video_net(copy.deepcopy(img)).eval()
    from shared.nn.video import temporal_parameters

    names = tuned_parameter_names(net)
    temporal = {id(p) for p in temporal_parameters(net)}
    params = dict(net.named_parameters())
    assert temporal and all(".to_q." in n or id(params[n]) in temporal for n in names), names
    assert any("attn1.to_q" in n for n in names) and any("attn2.to_q" in n for n in names)
    assert not any(".to_k." in n or ".to_v." in n or ".ff." in n for n in names)
    x, t, ctx = torch.randn(1, 2, 3, 8, 8), torch.tensor([100.0]), torch.randn(1, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, context=ctx)[:, :, 0], img(x[:, :, 0], t, context=ctx),
                                   atol=1e-5, rtol=0)


def test_sprites_claim_edit_starts_from_the_inverted_source_fresh_noise_or_a_blend():
    """claim_sprites.start_noise: share 0 is the DDIM-inverted source (the paper's edit), share 1 fresh noise, in
    between a unit-variance blend; edit_all at share 0 is shared.methods.editing.invert_and_edit, and its per-frame
    path edits every frame alone."""
    from papers.tune_a_video.claim_sprites import edit_all, start_noise
    from shared.methods.editing import invert_and_edit

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, generator=g), torch.randn(4000, generator=g)
    assert torch.equal(start_noise(a, b, 0.0), a) and torch.equal(start_noise(a, b, 1.0), b)
    assert abs(float(start_noise(a, b, 0.6).std()) - 1.0) < 0.05
    m = DiffusionModule(image().eval(), DiscreteVP(num_steps=100), sample_shape=(1, 8, 8), ema_decay=None).eval()
    video = torch.rand(2, 1, 3, 8, 8, generator=g) * 2 - 1
    fresh = torch.randn(video.shape, generator=g)
    src, tgt = torch.tensor([1, 2]), torch.tensor([3, 4])
    out = edit_all(m, video, fresh, src, tgt, {"inv": 0.0, "fresh": 1.0}, steps=3, guidance_scale=2.0, per_frame=True)
    frame1 = invert_and_edit(m, video[:, :, 1], {"y": src}, {"y": tgt}, 3, 2.0)
    torch.testing.assert_close(out["inv"][:, :, 1], frame1, atol=1e-5, rtol=0)
    from shared.methods.editing import regenerate

    torch.testing.assert_close(out["fresh"][:, :, 2], regenerate(m, fresh[:, :, 2], {"y": tgt}, 3, 2.0),
                               atol=1e-5, rtol=0)


def test_sprites_claim_scores_read_the_source_motion_and_the_edited_identity():
    """On real Sprites clips: a source scored as its own edit keeps the motion (track error 0) and the source
    identity (not the target); the same trajectory with the identity swapped reads the new identity from the swap on."""
    from papers.tune_a_video.claim_sprites import scores
    from shared.data.sprite_worlds import Sprites
    from shared.metrics.sprite_judge import SpriteJudge

    ds = Sprites(n=6, seed=5, split="test")
    items = [ds[i] for i in range(6)]
    x = torch.stack([it["x"] for it in items])
    y, d = torch.stack([it["y"] for it in items]), torch.stack([it["direction"] for it in items])
    judge = SpriteJudge(ds.identities)
    s = scores(judge, x, x, d, y, (y + 2) % 4)
    assert s["motion"] == 1.0 and s["track_error"] < 1e-4 and s["straight"] == 1.0
    assert s["source_kept"] == 1.0 and s["target"] == 0.0 and s["edit"] == 0.0
    other = torch.roll(x, 1, dims=0)   # other clips' motion in the sources' place
    assert scores(judge, other, x, d, y, (y + 2) % 4)["track_error"] > 1.0
