"""Text2Video-Zero (papers/text2video_zero): the translation warp, the motion field, the DDPM forward jump, the first
frame equal to the image model's sample (cross-frame attention of frame 1 to itself), still videos without motion,
and the SD-1.5 paper-scale config generating from a local SD folder."""
from __future__ import annotations

import pytest
import torch
from conftest import compose

from papers.text2video_zero.module import (
    ddim_segment,
    ddpm_forward,
    direction_velocity,
    motion_field,
    text2video_zero,
    translate,
)
from shared.diffusion.samplers import ddim_sample
from shared.diffusion.schedules import DiscreteVP
from shared.methods.diffusion_module import DiffusionModule
from shared.nn.unet import UNet


def test_translate_moves_content_by_integer_pixels_with_reflection():
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 2, 3] = 1.0
    x[1, 0, 4, 4] = 1.0
    out = translate(x, torch.tensor([[1.0, 2.0], [-2.0, 0.0]]))
    assert out[0, 0, 3, 5] == 1 and out[0].sum() == 1          # down 1, right 2
    assert out[1, 0, 2, 4] == 1 and out[1].sum() == 1          # up 2
    assert torch.equal(translate(x, torch.zeros(2, 2)), x)
    edge = torch.zeros(1, 1, 4, 4)
    edge[0, 0, :, 0] = 1.0
    assert translate(edge, torch.tensor([[0.0, 1.0]]))[0, 0, :, 0].eq(1).all()   # reflection keeps the border


def test_directions_and_motion_field():
    v = direction_velocity(torch.tensor([0, 1, 2, 4, 6]), 2.0)
    assert v.tolist() == [[0, 2], [-2, 2], [-2, 0], [0, -2], [2, 0]]   # right, up-right, up, left, down
    f = motion_field(v[:1], 4)
    assert f.shape == (1, 4, 2) and f[0, :, 1].tolist() == [0, 2, 4, 6] and f[0, :, 0].eq(0).all()


def test_ddpm_forward_has_the_forward_process_statistics():
    s = DiscreteVP(num_steps=1000)
    x = torch.full((20000, 1), 0.5)
    z = ddpm_forward(x, s, torch.tensor(300.0), torch.tensor(600.0), torch.Generator().manual_seed(0))
    a3, _ = s.alpha_sigma(torch.tensor([300.0]))
    a6, _ = s.alpha_sigma(torch.tensor([600.0]))
    r = float(a6 / a3)
    assert float(z.mean()) == pytest.approx(0.5 * r, abs=0.02)
    assert float(z.var()) == pytest.approx(1 - r * r, rel=0.05)


def _module():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_classes=10, norm_groups=4)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return DiffusionModule(net, DiscreteVP(num_steps=100), sample_shape=(1, 8, 8), ema_decay=None).eval()


def test_first_frame_is_the_image_sample_and_no_motion_gives_a_still_video():
    m = _module()
    cond = {"y": torch.tensor([3, 5])}
    vel = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    video = text2video_zero(m, cond, vel, frames=4, steps=10, t1=1, t0=3, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 1, 4, 8, 8)
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    image = ddim_sample(m.denoiser(cond=cond), x_T, m.schedule, steps=10)
    torch.testing.assert_close(video[:, :, 0], image, atol=1e-5, rtol=0)
    assert (video[:, :, 1:] - video[:, :, :1]).abs().max() > 1e-3
    still = text2video_zero(m, cond, vel, 4, 10, 1, 3, torch.Generator().manual_seed(0), motion=False)
    torch.testing.assert_close(still, still[:, :, :1].expand_as(still), rtol=0, atol=1e-5)
    torch.testing.assert_close(still[:, :, 0], image, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="need 0 <= t1 < t0 < steps"):
        text2video_zero(m, cond, vel, 4, 10, 3, 3, torch.Generator())


def test_ddim_segment_composes_to_the_full_sampler():
    m = _module()
    den = m.denoiser(cond={"y": torch.tensor([1])})
    times = m.schedule.sampling_times(10)
    x_T = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    mid = ddim_segment(den, x_T, m.schedule, times[:4])
    torch.testing.assert_close(ddim_sample(den, mid, m.schedule, times=times[3:]),
                               ddim_sample(den, x_T, m.schedule, steps=10), atol=1e-5, rtol=0)


def test_paper_scale_config_generates_from_a_local_sd_folder(tmp_path):
    from test_text_encoder import write_tiny_sd_folder

    from shared.engine.train import run

    sd = write_tiny_sd_folder(tmp_path / "sd")
    cfg = compose(["experiment=text2video_zero/sd15", f"model.weights={sd}", f"module.text_encoder.weights={sd}",
                   f"module.latent.autoencoder.weights_path={sd}/vae/diffusion_pytorch_model.safetensors",
                   "module.latent.autoencoder.block_out_channels=[16,32]",
                   "module.latent.autoencoder.layers_per_block=1", "module.latent.autoencoder.norm_num_groups=8",
                   "module.sample_shape=[4,8,8]", "generate.frames=3", "generate.steps=4", "generate.t1=1",
                   "generate.t0=2", "generate.guidance_scale=2.0", "logger=none", f"run_dir={tmp_path / 'run'}"])
    out = run(cfg)
    videos = torch.load(out["videos"])
    assert videos.shape == (2, 3, 3, 16, 16) and torch.isfinite(videos).all()
    assert (tmp_path / "run" / "video_0.gif").exists()


def test_prompts_cover_every_combination_and_keep_the_digit_order():
    from papers.text2video_zero.claim import prompts

    g = torch.Generator().manual_seed(5)
    idx = torch.randperm(80, generator=g)[torch.arange(80) % 80]
    digits, dirs = prompts(80, 5)
    assert torch.equal(digits, idx // 8) and torch.equal(dirs, idx % 8)   # the MovingDigits claim's draw, unchanged
    ids, dirs = prompts(64, 3, num_classes=4)
    combos = (ids * 8 + dirs).tolist()
    assert int(ids.max()) == 3 and all(combos.count(k) == 2 for k in range(32))   # every (identity, direction) twice


def test_sprite_scores_read_real_clips_and_wrong_prompts():
    from shared.data.sprite_worlds import Sprites
    from shared.metrics.sprite_judge import SpriteJudge
    from shared.metrics.sprite_judge import claim_scores as sprite_scores

    ds = Sprites(n=16, frames=8, size=16, split="test", seed=3)
    items = [ds[i] for i in range(16)]
    x = torch.stack([it["x"] for it in items])
    y = torch.stack([it["y"] for it in items])
    d = torch.stack([it["direction"] for it in items])
    judge = SpriteJudge(ds.identities)
    s = sprite_scores(judge, x, y, d, "{metric}_real")
    for k in ("frame_validity", "coherent", "identity_accuracy", "frame_identity_accuracy", "direction_accuracy"):
        assert s[f"{k}_real"] == 1.0, k
    assert s["appearance_real"] > 0.9
    wrong = sprite_scores(judge, x, (y + 1) % 4, (d + 4) % 8)
    for k in ("identity_accuracy", "frame_identity_accuracy", "direction_accuracy"):
        assert wrong[k] == 0, k
    assert wrong["coherent"] == 1.0   # prompt-free scores do not depend on the prompts


def test_sprites_claim_quick_run_gives_per_seed_metrics(tmp_path):
    import json

    from shared.engine.train import run

    cfg = compose(["experiment=text2video_zero/sprites_claim", "run_dir=/tmp/unused"])
    image = cfg.claim.image.model
    assert image.in_channels == 3 and image.num_classes == len(cfg.data.train.identities)
    assert cfg.claim.image.module.prediction == "v" and cfg.claim.seeds == [0, 1, 2] and cfg.expected
    run(compose(["experiment=text2video_zero/sprites_claim", "quick=true", "logger=none", f"run_dir={tmp_path}"]))
    m = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert m["judge_checks"]["real"]["coherent"] == 1.0 and m["judge_checks"]["swapped"]["identity_consistent"] == 0
    for method in ("per_frame", "t2v_zero", "motion_only", "cross_frame_only"):
        for score in ("frame_validity", "coherent", "direction_accuracy", "identity_accuracy", "appearance"):
            assert len(m[f"{score}_{method}"]["per_seed"]) == 1, (score, method)
    assert "coherent_gain_t2v_zero" in m and (tmp_path / "per_frame_vs_t2v_zero.gif").exists()
