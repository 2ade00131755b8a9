"""Generative Image Dynamics: the paper's identities on random weights (frequency attention, independent bands,
the renderer with zero motion, looping guidance at weight 0, the codec's round trip, the modal response) and the
data sets' contracts. FFT round trips, normalisation and splatting on a known shift are in tests/test_spectral.py."""
from __future__ import annotations

import math

import pytest
import torch

from papers.generative_image_dynamics.codec import SpectralCodec, from_video_layout, to_video_layout
from papers.generative_image_dynamics.module import (
    loop_loss,
    modal_response,
    motion_texture,
    render_video,
)
from papers.generative_image_dynamics.nets import Renderer, StillUNet
from shared.data.spectral import spectral_volume, trajectories
from shared.nn.video import temporal_modules


def _net(attn: bool, K: int = 5, size: int = 8, seed: int = 0) -> StillUNet:
    torch.manual_seed(seed)
    return StillUNet(channels=4, axis_len=K, image_size=size, axis_attention=attn, base_channels=8,
                     channel_mult=(1, 2), num_res_blocks=1, norm_groups=4).eval()


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_frequency_attention_shapes_and_zero_init_equals_independent_bands():
    K, size = 5, 8
    coord, indep = _net(True, K, size), _net(False, K, size)
    names = [n for n, _ in temporal_modules(coord.unet)]
    assert names, "the coordinated network has attention layers across the bands"
    assert not getattr(indep.unet, "temporal_names", [])
    x, still, t = torch.randn(2, 4, K, size, size), torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([10.0, 500.0])
    out = coord(x, t, still=still)
    assert out.shape == x.shape
    # the attention layers start at zero: the coordinated network equals the same weights without them
    result = indep.load_state_dict(coord.state_dict(), strict=False)
    prefixes = tuple(f"unet.{n}." for n in names)
    assert not result.missing_keys and result.unexpected_keys
    assert all(k.startswith(prefixes) for k in result.unexpected_keys)
    assert torch.allclose(indep(x, t, still=still), out, atol=1e-6)


def test_frequency_attention_tokens_are_the_bands_of_one_pixel():
    """Each attention layer sees (B*h*w) sequences of K tokens (the bands of a pixel)."""
    K, size = 5, 8
    net = _net(True, K, size)
    seen = []
    layer = next(m for _, m in temporal_modules(net.unet))
    hook = layer.qkv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    net(torch.randn(3, 4, K, size, size), torch.tensor(3.0), still=torch.zeros(3, 3, size, size))
    hook.remove()
    assert seen and seen[0][0] == 3 * size * size and seen[0][1] == K


def test_independent_bands_equal_per_band_processing_and_coordinated_do_not():
    K, size = 4, 8
    x, still, t = torch.randn(2, 4, K, size, size), torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor(200.0)
    indep = _net(False, K, size)
    _perturb(indep)
    full = indep(x, t, still=still)
    per_band = torch.cat([indep(x[:, :, k:k + 1], t, still=still, positions=[k]) for k in range(K)], dim=2)
    assert torch.allclose(full, per_band, atol=1e-5)
    # the band embedding matters: the same slice as another band gives another output
    assert not torch.allclose(indep(x[:, :, :1], t, still=still, positions=[0]),
                              indep(x[:, :, :1], t, still=still, positions=[1]), atol=1e-4)
    coord = _net(True, K, size)
    _perturb(coord)
    full = coord(x, t, still=still)
    per_band = torch.cat([coord(x[:, :, k:k + 1], t, still=still, positions=[k]) for k in range(K)], dim=2)
    assert not torch.allclose(full, per_band, atol=1e-3)


def test_still_unet_errors():
    net = _net(True, 4, 8)
    with pytest.raises(ValueError, match="still"):
        net(torch.randn(1, 4, 4, 8, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"\(B, 4, K, h, w\)"):
        net(torch.randn(1, 3, 4, 8, 8), torch.tensor(1.0), still=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="positions"):
        net(torch.randn(1, 4, 2, 8, 8), torch.tensor(1.0), still=torch.zeros(1, 3, 8, 8), positions=[3, 4])


def test_zero_motion_renders_the_still_for_any_weights():
    torch.manual_seed(0)
    r = Renderer(widths=(8, 16), norm_groups=4)
    _perturb(r)
    still = torch.rand(2, 3, 16, 16) * 2 - 1
    zero = torch.zeros(2, 2, 16, 16)
    w = torch.zeros(2, 1, 16, 16)
    assert torch.allclose(r(still, zero, w), still, atol=1e-5)
    # a whole-image shift: everything moved, so the synthesis network acts (finite, right shape)
    flow = torch.zeros(2, 2, 16, 16)
    flow[:, 0] = 2.0
    out = r(still, flow, flow.norm(dim=1, keepdim=True))
    assert out.shape == still.shape and torch.isfinite(out).all()


def test_render_video_with_zero_volume_is_the_still():
    torch.manual_seed(0)
    r = Renderer(widths=(8, 16), norm_groups=4)
    _perturb(r)
    still = torch.rand(2, 3, 16, 16) * 2 - 1
    vol = torch.zeros(2, 4, 6, 8, 8)
    video = render_video(r, still, vol, period=12, frames=7)
    assert video.shape == (2, 3, 7, 16, 16)
    assert torch.allclose(video, still[:, :, None].expand_as(video), atol=1e-5)


def test_codec_round_trip_and_global_mode():
    torch.manual_seed(0)
    d = torch.randn(3, 2, 24, 6, 6, dtype=torch.float64) * torch.linspace(1, 0.01, 24).reshape(1, 1, 24, 1, 1)
    vol = to_video_layout(spectral_volume(d, 8)).float()  # (3, 4, 8, 6, 6)
    for per_frequency, power in ((True, 0.5), (False, 1.0)):
        codec = SpectralCodec(8, per_frequency, power, 95.0, fit_on_first_batch=True)
        z = codec.encode(vol).mode()
        assert z.shape == vol.shape
        assert torch.allclose(codec.decode(z), vol, atol=1e-5, rtol=1e-4)
        scale = codec.normalizer.scale
        assert (scale.unique().numel() > 1) == per_frequency
    assert torch.equal(from_video_layout(to_video_layout(vol)), vol)
    with pytest.raises(RuntimeError, match="scale"):
        SpectralCodec(8).encode(vol)
    with pytest.raises(ValueError, match="K=8"):
        SpectralCodec(8, scale=[1.0] * 8).encode(vol[:, :, :4])


def test_loop_loss_is_zero_for_motion_that_returns_to_the_still():
    T, K = 150, 6
    t = torch.arange(T, dtype=torch.float64)
    # F_t = 2 (1 - cos(2 pi t / T)): starts at the still and returns to it after T frames; the velocity term is
    # then only the one-frame change of velocity (backward vs forward difference), 4 (2 pi / T)^2 ~ 0.007
    d = 2 * (1 - torch.cos(2 * math.pi * t / T)).reshape(1, 1, T, 1, 1).expand(1, 2, T, 3, 3).clone()
    vol = to_video_layout(spectral_volume(d, K)).float()
    assert loop_loss(vol, T, T).abs().max() < 1e-2
    # the same motion cut at 3/4 of its period does not return to the still
    assert loop_loss(vol, T, 112).min() > 1.5
    assert motion_texture(vol, T, 4).shape == (1, 2, 4, 3, 3)
    assert motion_texture(vol, T, 4, size=6).shape == (1, 2, 4, 6, 6)


def test_modal_response_is_linear_local_and_decays():
    K, h = 6, 8
    vol = torch.zeros(4, K, h, h)
    vol[0, 3, :, :4] = 1.0     # mode 3 moves the left half in x
    vol[2, 5, :, 4:] = 0.5     # mode 5 moves the right half in y
    r1 = modal_response(vol, period=30, point=(2, 1), force=(1.0, 0.0), times=60, damping=0.05)
    assert r1.shape == (2, 60, h, h)
    assert r1[:, :, :, 4:].abs().max() < 1e-9 and r1[0, :, :, :4].abs().max() > 0.1  # only the poked mode moves
    r2 = modal_response(vol, period=30, point=(2, 1), force=(2.0, 0.0), times=60, damping=0.05)
    assert torch.allclose(r2, 2 * r1, atol=1e-6)
    assert r1[:, 0].abs().max() < 1e-9  # starts at rest
    early, late = r1[:, :15].abs().max(), r1[:, 45:].abs().max()
    assert late < early
    r3 = modal_response(vol, period=30, point=(2, 6), force=(0.0, 1.0), times=30)
    assert r3[:, :, :, :4].abs().max() < 1e-9 and r3[1].abs().max() > 0.1
    with pytest.raises(ValueError, match="damping"):
        modal_response(vol, 30, (0, 0), (1, 0), 5, damping=1.0)


def test_trajectories_of_codec_layout_match_shared():
    vol = torch.randn(2, 4, 5, 3, 3)
    assert torch.allclose(motion_texture(vol, 16, 7), trajectories(vol.transpose(1, 2), 16, 7))


def _motion_module(K: int = 4, size: int = 8, attn: bool = True):
    from conftest import compose
    from hydra.utils import instantiate

    cfg = compose(["data=oscillating_spectral", "model=gid_motion_tiny", "module=gid_motion", "logger=none",
                   f"model.axis_len={K}", f"model.image_size={size}", f"model.axis_attention={attn}",
                   "model.base_channels=8", f"module.latent.autoencoder.num_freqs={K}",
                   f"module.latent.autoencoder.scale={[0.5] * K}", f"module.sample_shape=[4,{K},{size},{size}]",
                   "data.frames=24"])
    torch.manual_seed(0)
    module = instantiate(cfg.module)
    _perturb(module.net)
    module.ema = None
    return module.eval()


def test_looping_guidance_at_weight_zero_equals_plain_sampling_and_closes_loops_when_on():
    m = _motion_module()
    still = torch.rand(3, 3, 32, 32) * 2 - 1
    x_T = torch.randn(3, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = m.sample(x_T=x_T, cond={"still": still}, sampler={"steps": 4})
    zero = m.sample(x_T=x_T, cond={"still": still}, sampler={"steps": 4, "loop_guidance": 0.0, "loop_frames": 24})
    assert plain.shape == (3, 4, 4, 8, 8)
    assert torch.allclose(plain, zero, atol=1e-5)
    on = m.sample(x_T=x_T, cond={"still": still}, sampler={"steps": 4, "loop_guidance": 0.1, "loop_frames": 24})
    assert (loop_loss(on, 24, 24) < loop_loss(plain, 24, 24)).all()
    from shared.methods.sampling import SamplerConfigError
    with pytest.raises(SamplerConfigError, match="loop_guidance"):
        m.sample(x_T=x_T, cond={"still": still}, sampler={"loop_guidance": -1.0})
    with pytest.raises(SamplerConfigError, match="loop_frames"):
        m.sample(x_T=x_T, cond={"still": still}, sampler={"loop_guidance": 1.0, "loop_frames": 1})


def test_motion_module_trains_on_raw_volumes_and_returns_raw_volumes():
    m = _motion_module()
    vol = torch.randn(2, 4, 4, 8, 8) * torch.tensor([1.0, 0.3, 0.1, 0.03]).reshape(1, 1, 4, 1, 1)
    batch = {"x": vol, "still": torch.zeros(2, 3, 32, 32)}
    loss = m.training_loss(batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    z = m.latent.encode(vol)
    assert torch.allclose(m.decode_volume(z), vol, atol=1e-5)


def test_data_sets_match_the_world_and_cache(tmp_path):
    from papers.generative_image_dynamics.data import RenderPairs, SpectralScenes, StillClips, bottleneck, box_resize
    from shared.data.oscillating_scenes import OscillatingScenes

    world = OscillatingScenes(n=3, frames=24, size=16, num_freqs=6, seed=5)
    a = SpectralScenes(world, volume_size=8, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("SpectralScenes_*.pt"))) == 1
    b = SpectralScenes(world, volume_size=8, cache_dir=str(tmp_path))  # loaded from the file
    it = world[1]
    assert a[1]["x"].shape == (4, 6, 8, 8) and torch.equal(a[1]["x"], b[1]["x"])
    assert torch.allclose(a[1]["x"], box_resize(it["spectral_volume"], 8).transpose(0, 1))
    assert torch.equal(a[1]["still"], it["still"]) and a.volumes().shape == (3, 6, 4, 8, 8)
    pairs = RenderPairs(world, frames_per_scene=2, motion_size=8)
    p = pairs[3]  # scene 1, second frame
    t = [int(tt) for tt in range(1, 24) if torch.equal(it["x"][:, tt], p["x"])]
    assert t, "the pair's frame is one of the clip's frames"
    assert torch.allclose(p["flow"], bottleneck(it["displacement"][:, t[0]], 8), atol=1e-6)
    assert p["weight"].shape == (1, 16, 16) and torch.equal(p["still"], it["still"])
    clips = StillClips(world, clip_len=5, start_at_zero=0.0)
    c = clips[2]
    full = world[2]["x"]
    starts = [s for s in range(0, 20) if torch.allclose(full[:, s:s + 5], c["x"], atol=1e-6)]
    assert starts and torch.allclose(c["still"], full[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="clip_len"):
        StillClips(world, clip_len=30)


def test_stage_cache_keys_are_shared_across_the_claims_and_distinct_per_seed():
    """The renderer stage keeps its network under ``module`` (``model: null``): its cache key must still be computable;
    every stage a claim uses must be one `oscillating_stages` trains (same recipe -> same cache file), per seed."""
    from conftest import compose

    from papers.generative_image_dynamics.claim import motion_overrides, renderer_overrides, variants
    from shared.engine.claims import variant_config
    from shared.engine.teachers import teacher_key

    def cfg_of(experiment: str):
        extra = ["claim.loop_weights=[0.0,1.0]"] if experiment.endswith("looping") else []
        return compose([f"experiment=generative_image_dynamics/{experiment}", "run_dir=/tmp/unused",
                        "data.train.cache_dir=null", "data.train.world.n=8", *extra])

    def keys(cfg, names, seed: int) -> set[str]:
        out = {teacher_key(variant_config(cfg, renderer_overrides(cfg), seed), seed)}
        for over in names.values():
            out.add(teacher_key(variant_config(cfg, motion_overrides(cfg, over), seed), seed))
        return out

    stages = cfg_of("oscillating_stages")
    trained = {seed: keys(stages, {str(v["name"]): dict(v["overrides"]) for v in stages.claim.stage_variants}, seed)
               for seed in (0, 1)}
    assert len(trained[0]) == 4 and not trained[0] & trained[1]
    for experiment in ("oscillating_normalisation", "oscillating_coordination", "oscillating_looping",
                       "oscillating_long_horizon"):
        cfg = cfg_of(experiment)
        assert [int(s) for s in cfg.claim.seeds] == [0, 1]
        used = variants(cfg.claim)
        if "motion_variant" in cfg.claim:
            used = {str(cfg.claim.motion_variant): used[str(cfg.claim.motion_variant)]}
        assert keys(cfg, used, 0) <= trained[0], experiment


@pytest.mark.parametrize("experiment", ["oscillating_normalisation", "oscillating_coordination",
                                        "oscillating_long_horizon", "oscillating_looping"])
def test_claims_summarise_two_seeds_in_quick_mode(experiment, tmp_path):
    """The protocols run two seeds; quick mode runs one — the per-seed records must share their keys (stage times
    were once named by seed, and the first protocol run failed when summarising)."""
    import json

    from conftest import compose

    from shared.engine.train import run

    cfg = compose([f"experiment=generative_image_dynamics/{experiment}", "quick=true", "claim.seeds=[0,1]",
                   "trainer.enable_progress_bar=false", "logger=none", f"run_dir={tmp_path / 'run'}"])
    run(cfg)
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    times = [k for k in metrics if k.startswith("train_time_s_")]
    assert times and all(len(metrics[k]["per_seed"]) == 2 for k in times)
