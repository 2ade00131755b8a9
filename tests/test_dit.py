"""DiT (Peebles & Xie 2023): blocks, layout, Gflops, objective, configs; claim checks under ``-m claims``."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from papers.dit.module import DiTModule, LearnedVarianceTerms, vlb_terms_bits
from shared.diffusion.samplers import ddpm_learned_variance_sample, ddpm_sample
from shared.diffusion.schedules import DiscreteVP
from shared.nn.flops import count_flops, dit_inputs, gflops
from shared.nn.transformer import (
    CONDITIONINGS,
    DiT,
    load_official_state_dict,
    official_state_dict_shapes,
    patchify,
    sincos_2d,
    unpatchify,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments" / "dit").glob("*.yaml"))
SMALL = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def small(**kw):
    torch.manual_seed(0)
    return DiT(**{**SMALL, **kw})


def batch(net, b=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, net.in_channels, net.input_size, net.input_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    y = torch.randint(0, net.num_classes, (b,), generator=g)
    return x, t, y


# ------------------------------------------------------------------ blocks
def test_fused_modulation_and_gated_residual_equal_the_paper_expressions():
    from shared.nn.transformer import gated_residual, modulate

    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    shift, scale, gate = (torch.randn(3, 16, generator=g) for _ in range(3))
    assert torch.allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None], atol=1e-6)
    assert torch.allclose(gated_residual(x, gate, h), x + gate[:, None] * h, atol=1e-6)


def test_tokens_enter_the_blocks_contiguous():
    """timm's PatchEmbed hands back a transposed view; DiT makes it contiguous once (else every block's
    LayerNorm and linear copy their input - the CPU speed fix in README, Performance)."""
    net = small()
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    x, t, y = batch(net)
    assert not net.x_embedder(x).is_contiguous()
    net(x, t, y)
    assert seen == [True]


def test_adaln_zero_blocks_are_identity_at_init():
    net = small()
    x, t, y = batch(net)
    c = net.t_embedder(t) + net.y_embedder(y)
    h = torch.randn(4, net.num_patches, net.hidden_size)
    for block in net.blocks:
        torch.testing.assert_close(block(h, c), h, rtol=0, atol=0)
    assert net(x, t, y).abs().max() == 0  # zero final layer: the initial prediction is 0


def test_adaln_zero_identity_breaks_after_a_step():
    net = small()
    x, t, y = batch(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (net(x, t, y) - torch.randn_like(net(x, t, y))).pow(2).mean().backward()
    opt.step()
    h = torch.randn(4, net.num_patches, net.hidden_size)
    c = net.t_embedder(t) + net.y_embedder(y)
    # the final layer moved first; the gates get gradient once it is non-zero (second step)
    (net(x, t, y) - 1).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(net.blocks[0](h, c), h)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_conditionings_run_and_use_labels(conditioning):
    net = small(conditioning=conditioning, learn_sigma=True)
    with torch.no_grad():  # break the zero init so outputs depend on everything
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = batch(net)
    out = net(x, t, y)
    assert out.shape == (4, 6, 8, 8)
    assert not torch.allclose(out, net(x, t, (y + 1) % 10))
    assert not torch.allclose(out, net(x, t, None))  # None = the null label (unconditional)


def test_timm_attention_goes_through_sdpa():
    net = small()
    assert all(b.attn.fused_attn for b in net.blocks)
    x, t, y = batch(net)
    with mock.patch(
        "torch.nn.functional.scaled_dot_product_attention", wraps=F.scaled_dot_product_attention
    ) as sdpa:
        net(x, t, y)
    assert sdpa.call_count == net.depth


def test_patchify_round_trip_and_official_unpatchify_order():
    x = torch.randn(2, 3, 8, 12)
    assert patchify(x, 4).shape == (2, 2 * 3, 4 * 4 * 3)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, 3, 2, 3), x, rtol=0, atol=0)
    # the official DiT.unpatchify: reshape(N, h, w, p, p, c) -> einsum nhwpqc->nchpwq -> (N, c, h p, w p)
    tokens = torch.randn(2, 16, 2 * 2 * 5)
    ref = torch.einsum("nhwpqc->nchpwq", tokens.reshape(2, 4, 4, 2, 2, 5)).reshape(2, 5, 8, 8)
    torch.testing.assert_close(unpatchify(tokens, 2, 5, 4), ref, rtol=0, atol=0)


def test_patch_embed_is_a_linear_map_of_patchify():
    net = small()
    x, _, _ = batch(net)
    w = net.x_embedder.proj.weight  # (d, C, p, p)
    lin = patchify(x, 2) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + net.x_embedder.proj.bias
    torch.testing.assert_close(net.x_embedder(x), lin, rtol=1e-5, atol=1e-5)


def test_sincos_position_embedding_layout():
    pe = sincos_2d(16, 3)  # tokens row-major; first half = column, second = row
    assert pe.shape == (9, 16)
    torch.testing.assert_close(pe[1, :8], pe[4, :8])  # (0,1) and (1,1) share the column
    torch.testing.assert_close(pe[3, 8:], pe[4, 8:])  # (1,0) and (1,1) share the row
    assert torch.all(pe[0, :4] == 0) and torch.all(pe[0, 4:8] == 1)  # sin(0), cos(0)
    net = small()
    assert "pos_embed" in net.state_dict() and not any(n == "pos_embed" for n, _ in net.named_parameters())


# ------------------------------------------------------------------ Gflops
def hand_macs(n: DiT, learn_sigma_out: int, freq_dim: int = 256) -> int:
    """Multiply-adds of one adaLN-Zero DiT forward pass, counted by hand from Sec. 3.2's layers."""
    d, T, p, C = n.hidden_size, n.num_patches, n.patch_size, n.in_channels
    embed = T * d * C * p * p + freq_dim * d + d * d
    block = d * 6 * d + T * d * 3 * d + 2 * T * T * d + T * d * d + 2 * T * d * 4 * d
    final = d * 2 * d + T * d * p * p * learn_sigma_out
    return embed + n.depth * block + final


def test_gflops_of_a_known_config_match_a_hand_count():
    net = small(learn_sigma=True)
    counted = count_flops(
        *[net.to("meta")], *[a.to("meta") if a is not None else None for a in dit_inputs(net)]
    )
    assert counted == 2 * hand_macs(net, 6)  # FlopCounterMode: 2 FLOPs per multiply-add
    g = gflops(small(learn_sigma=True), *dit_inputs(net))
    assert g["gmacs"] * 1e9 == pytest.approx(hand_macs(net, 6))


def test_xl2_gflops_on_meta_match_the_hand_count():
    with torch.device("meta"):
        net = DiT()  # DiT-XL/2 defaults: 32x32x4, 28 x 1152, 16 heads
    g = gflops(net, *dit_inputs(net, device="meta"))
    assert g["gmacs"] * 1e9 == pytest.approx(hand_macs(net, 8))


# ------------------------------------------------------------------ official checkpoint layout
def our_shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_state_dict_layout_matches_official_small():
    cfg = dict(
        input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=4, num_classes=10
    )
    net = DiT(**cfg, learn_sigma=True)
    assert our_shapes(net) == official_state_dict_shapes(**cfg)


def test_state_dict_layout_matches_official_xl2_on_meta():
    with torch.device("meta"):
        net = DiT(
            input_size=32,
            patch_size=2,
            in_channels=4,
            hidden_size=1152,
            depth=28,
            num_heads=16,
            num_classes=1000,
            learn_sigma=True,
        )
    assert our_shapes(net) == official_state_dict_shapes()
    assert sum(v.numel() for k, v in net.state_dict().items() if k != "pos_embed") == pytest.approx(
        675e6, rel=0.01
    )


def test_load_random_official_state_dict_and_name_bad_keys():
    cfg = dict(
        input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10
    )
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in official_state_dict_shapes(**cfg).items()}
    net = DiT(**cfg)
    load_official_state_dict(net, {"ema": state})
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k])
    x = torch.randn(2, 4, 8, 8)
    assert net(x, torch.tensor([10.0, 500.0]), torch.tensor([1, 10])).shape == (2, 8, 8, 8)
    bad = dict(state)
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    with pytest.raises(RuntimeError, match="blocks.0.attn.qkv.weight"):
        load_official_state_dict(net, bad)
    del bad["blocks.0.attn.qkv.weight"]
    with pytest.raises(RuntimeError, match="missing"):
        load_official_state_dict(net, bad)


# ------------------------------------------------------------------ objective and sampler
def test_learned_variance_sampler_reduces_to_fixed_variances():
    s = DiscreteVP()

    def den(x, t):
        a, sg = s.alpha_sigma(t)
        x0 = 0.5 * torch.tanh(x)
        return x0, (x - a[:, None, None, None] * x0) / sg[:, None, None, None]

    x_T = torch.randn(3, 1, 4, 4)
    for v, variance in ((1.0, "large"), (-1.0, "small")):
        a = ddpm_sample(den, x_T, s, 10, variance=variance, generator=torch.Generator().manual_seed(0))
        b = ddpm_learned_variance_sample(
            lambda x, t, v=v: (*den(x, t), torch.full_like(x, v)),
            x_T,
            s,
            10,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_vlb_term_is_zero_for_the_true_posterior_and_stops_the_mean_gradient():
    s = DiscreteVP()
    terms = LearnedVarianceTerms(s)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    t = torch.tensor([1, 10, 100, 500, 999, 3])
    eps = torch.randn_like(x0)
    a, sg = (v[:, None, None, None] for v in s.alpha_sigma(t.float()))
    x_t = a * x0 + sg * eps
    kl = vlb_terms_bits(terms, x0, x_t, t, x0, -torch.ones_like(x0))
    assert kl.abs().max() < 1e-5
    out = torch.randn(6, 2, 4, 4, requires_grad=True)
    eps_hat, v = out.chunk(2, dim=1)
    vb = vlb_terms_bits(terms, x0, x_t, t, (x_t - sg * eps_hat.detach()) / a, v)
    vb.sum().backward()
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0


def tiny_module(**kw):
    net = small(in_channels=1, learn_sigma=True, **kw)
    return DiTModule(
        net,
        DiscreteVP(),
        cond_drop_prob=0.1,
        sample_shape=(1, 8, 8),
        ema_decay=None,
        sampler={"name": "ddpm", "steps": 5},
    )


def test_hybrid_loss_trains_both_heads_and_cfg_samples():
    m = tiny_module()
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    loss = m.training_loss({"x": x, "y": torch.arange(8) % 10}, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and m.net.final_layer.linear.weight.grad.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    for name in ("ddpm", "ddim"):
        out = m.sample(
            4, sampler={"name": name, "steps": 3, "guidance_scale": 1.5}, generator=g, cond={"y": torch.arange(4)}
        )
        assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


def test_latent_dit_through_the_shared_latent_wrapper():
    """Latent DiT = DiTModule inside shared.diffusion.latent: batches are encoded (scale x posterior) before
    the hybrid loss, samples decoded after the learned-variance sampler; the autoencoder stays frozen."""
    from shared.diffusion.latent import LatentSpace
    from shared.methods.latent_module import latent_diffusion
    from shared.nn.autoencoder import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=1, block_out_channels=[8, 8], layers_per_block=1, latent_channels=2,
                       norm_num_groups=4)
    m = latent_diffusion(LatentSpace(ae, scale_factor=0.5, sample_posterior=True), base=DiTModule,
                         net=small(in_channels=2, input_size=4, learn_sigma=True), schedule=DiscreteVP(),
                         sample_shape=(2, 4, 4), ema_decay=None, clip_x0=None,
                         sampler={"name": "ddpm", "steps": 3})
    assert isinstance(m, DiTModule) and m.learn_sigma
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z = m.to_latent({"x": x}, torch.Generator().manual_seed(0))["x"]
    assert z.shape == (2, 2, 4, 4)
    with torch.no_grad():
        post = ae.encode(x)
    assert torch.allclose(m.latent.encode(x, sample=False), 0.5 * post.mode())
    loss = m.training_loss({"x": x, "y": torch.tensor([1, 2])}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert not any(p.requires_grad for p in m.latent.parameters())
    out = m.sample(2, cond={"y": torch.tensor([1, 2])}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    lat = m.sample(2, cond={"y": torch.tensor([1, 2])}, generator=torch.Generator().manual_seed(0), decode=False)
    assert torch.allclose(out, m.latent.decode(lat), atol=1e-6)


# ------------------------------------------------------------------ configs
def composed(name, overrides=()):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[f"experiment=dit/{name}", *overrides])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_first_line_names_the_table(name):
    cfg = composed(name)
    first = [
        ln
        for ln in (ROOT / "experiments" / "dit" / f"{name}.yaml").read_text().splitlines()
        if not ln.startswith("# @package")
    ][0]
    assert first.startswith("# DiT ") and ("Table" in first or "Fig" in first)
    with torch.device("meta"):
        net = instantiate(cfg.model)
    assert isinstance(net, DiT) and net.num_classes


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_tiny_fast_dev_run(name, tmp_path):
    from shared.engine.run import fit

    if name == "gflops_table":  # a counting pipeline, no training: run it (meta device, seconds), unpublished
        from shared.engine.train import run

        cfg = composed(
            name,
            [
                f"run_dir={tmp_path}",
                "+claim.publish=false",
                "claim.models={S/8: dit_s8, S/4: dit_s4, S/2: dit_s2}",
            ],
        )
        m = run(cfg)["metrics"]
        assert m["gmacs"]["S/2"] > m["gmacs"]["S/4"] > m["gmacs"]["S/8"]
        return
    over = [
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "callbacks=none",
        "pipeline=null",
        f"paths.output_dir={tmp_path}",
    ]
    if name.startswith("imagenet"):
        # paper scale: same module and model code, shrunk onto the digits; the SD-VAE is a local file we lack,
        # so a random small autoencoder of the same class stands in (its config's own smoke overrides)
        over += [o for o in composed(name).quick_overrides if not o.startswith(("trainer=", "callbacks="))]
    cfg = composed(name, over)
    with open_dict(cfg):
        cfg.trainer.pop("strategy", None)
    module, _, trainer = fit(cfg, run_dir=tmp_path / "run")
    assert trainer.global_step == 1
    x = module.sample(2, cond={"y": torch.tensor([0, 1])}, sampler={"steps": 2})
    assert torch.isfinite(x).all()


def test_paper_scale_recipe():
    cfg = composed("imagenet256_xl2")
    assert cfg.trainer.strategy == "ddp" and cfg.data.batch_size * cfg.trainer.devices == 256
    assert cfg.module.optimizer.lr == 1e-4 and cfg.module.optimizer.weight_decay == 0
    assert cfg.module.ema_decay == 0.9999 and cfg.module.sampler.steps == 250
    assert cfg.evaluation.guidance_scale == 1.5 and cfg.module.base == "papers.dit.module.DiTModule"
    vae = cfg.module.latent
    assert vae.autoencoder.block_out_channels == [128, 256, 512, 512] and vae.autoencoder.latent_channels == 4
    assert vae.scale_factor == 0.18215 and vae.sample_posterior and cfg.module.sample_shape == [4, 32, 32]
    assert str(vae.autoencoder.weights_path).endswith("sd-vae-ft-ema/diffusion_pytorch_model.safetensors")
