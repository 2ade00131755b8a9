"""Frame attention (shared/nn/attention.py): cross-frame attention to the first frame (Text2Video-Zero) and
sparse-causal attention (Tune-A-Video) as a switch of the shared self-attention layers. A frame attending to itself
is exactly self-attention; other frames attend to the stated keys; no parameter is added."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from shared.nn.attention import SpatialSelfAttention, frame_keys, set_frame_attention
from shared.nn.spatial_transformer import SpatialTransformer
from shared.nn.unet import UNet


def randomised(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.data = 0.3 * torch.randn(p.shape, generator=g)
    return m


def attn_manual(layer: SpatialSelfAttention, x_q, x_kv):
    """Reference: queries of frame x_q (1, C, H, W) to keys/values of the frames x_kv (list), one head."""
    c = x_q.shape[1]
    w = layer.qkv.weight.view(3 * c, c)
    bq, bk, bv = layer.qkv.bias.chunk(3)
    tok = lambda z: layer.norm(z).flatten(2).transpose(1, 2)  # noqa: E731
    q = tok(x_q) @ w[:c].T + bq
    kv = torch.cat([tok(z) for z in x_kv], dim=1)
    k, v = kv @ w[c:2 * c].T + bk, kv @ w[2 * c:].T + bv
    out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    out = out @ layer.proj_out.weight.view(c, c).T + layer.proj_out.bias
    return x_q + out.transpose(1, 2).reshape(x_q.shape)


@pytest.mark.parametrize("mode", ["first", "sparse_causal"])
def test_spatial_self_attention_frame_modes_match_the_reference(mode):
    layer = randomised(SpatialSelfAttention(8, num_heads=1, norm_groups=4)).eval()
    T = 4
    video = torch.randn(2 * T, 8, 5, 5)   # (B*T, C, H, W), clips consecutive
    with torch.no_grad():
        out = layer(video, None, {"num_frames": T, "frame_attention": mode})
        plain = layer(video, None, {"num_frames": T})
        for b in range(2):
            for i in range(T):
                f = lambda j, b=b: video[b * T + j][None]  # noqa: E731
                kv = [f(0)] if mode == "first" else [f(0), f(max(i - 1, 0))]
                torch.testing.assert_close(out[b * T + i][None], attn_manual(layer, f(i), kv), atol=1e-5, rtol=1e-5)
        # a frame attending to itself is self-attention: frame 0 of every clip, and a single-frame "video"
        torch.testing.assert_close(out[::T], plain[::T], atol=1e-6, rtol=0)
        single = layer(video[:3], None, {"num_frames": 1, "frame_attention": mode})
        torch.testing.assert_close(single, layer(video[:3]), rtol=0, atol=0)


def test_frame_keys_shapes():
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).view(6, 4, 1)   # (B*T, N, d), B=2, T=3
    assert frame_keys(z, 3, "self", 1) is z
    first = frame_keys(z, 3, "first", 1)
    assert first.shape == (6, 4, 1) and torch.equal(first[4], z[3])
    sc = frame_keys(z, 3, "sparse_causal", 1)
    assert sc.shape == (6, 8, 1)                                   # first + previous frame: twice the tokens
    assert torch.equal(sc[5], torch.cat([z[3], z[4]])) and torch.equal(sc[3], torch.cat([z[3], z[3]]))
    with pytest.raises(ValueError, match="frame_attention must be one of"):
        frame_keys(z, 3, "last", 1)
    with pytest.raises(ValueError, match="not a multiple of num_frames=4"):
        frame_keys(z, 4, "first", 1)


@pytest.mark.parametrize("context_dim", [None, 16])
@pytest.mark.parametrize("mode", ["first", "sparse_causal"])
def test_unet_switch_cross_frame_equals_image_model_on_frame_zero_and_identical_frames(context_dim, mode):
    torch.manual_seed(0)
    net = randomised(UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), norm_groups=4, num_heads=2, context_dim=context_dim)).eval()
    x = torch.randn(2, 1, 4, 8, 8)
    t = torch.tensor([10.0, 700.0])
    kw = {} if context_dim is None else {"context": torch.randn(2, 3, context_dim)}
    with torch.no_grad():
        image = torch.stack([net(x[:, :, f], t, **kw) for f in range(4)], 2)
        cross = net(x, t, frame_attention=mode, **kw)
        torch.testing.assert_close(cross[:, :, 0], image[:, :, 0], atol=1e-5, rtol=1e-5)
        assert (cross[:, :, 1:] - image[:, :, 1:]).abs().max() > 1e-3     # other frames do attend elsewhere
        same = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()          # identical frames: cross == self
        torch.testing.assert_close(net(same, t, frame_attention=mode, **kw), net(same, t, **kw), atol=1e-5,
                                   rtol=1e-5)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        set_frame_attention(net, mode)                                     # the attribute form of the switch
        assert net.state_dict().keys() == state.keys()
        torch.testing.assert_close(net(x, t, **kw), cross, rtol=0, atol=0)
        torch.testing.assert_close(net(x, t, frame_attention="self", **kw), rearrange(
            image, "b c t h w -> b c t h w"), atol=1e-5, rtol=1e-5)       # ctx overrides the attribute


def test_spatial_transformer_attn1_only_cross_attention_untouched():
    st = randomised(SpatialTransformer(8, context_dim=6, num_heads=2, norm_groups=4)).eval()
    x, ctx_tokens = torch.randn(6, 8, 4, 4), torch.randn(6, 3, 6)
    with torch.no_grad():
        a = st(x, None, {"num_frames": 3, "context": ctx_tokens, "frame_attention": "first"})
        set_frame_attention(st, "first")
        assert st.transformer_blocks[0].attn1.frame_attention == "first"
        assert st.transformer_blocks[0].attn2.frame_attention == "self"
        torch.testing.assert_close(st(x, None, {"num_frames": 3, "context": ctx_tokens}), a, rtol=0, atol=0)
