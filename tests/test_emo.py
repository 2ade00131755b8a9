"""EMO: speed embedding (buckets, windows), speed layers and motion frames (zero-initialised, then effective only
through the temporal layers), the stages' trainable parts, the training clips (motion frames split off, per-frame
keys aligned), the face-region mask."""
from __future__ import annotations

import pytest
import torch

from papers.emo.data import EMOClips, box_mask
from papers.emo.nets import EMONet, FeatureTap, MotionFrameTemporal, SpeedEncoder, emo_net, stage_state_dict
from shared.nn.guider import Guider
from shared.nn.unet import UNet
from shared.nn.weights import save_weights

MM = {"heads": 2, "num_blocks": 1, "attention_blocks": 2, "ff_mult": 2, "norm_groups": 8, "max_len": 24}
AE = {"feature_dim": 6, "window": 5, "dim": 8}
SP = {"centers": [0.0, 0.04, 0.08], "radii": [0.02, 0.02, 0.02], "context": 1, "dim": 8}


def denoiser():
    torch.manual_seed(0)
    return UNet(in_channels=3, image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, norm_groups=8, context_dim=8)


def randomise(net):
    """Fill the zero-initialised tensors (output convs, projections) so identities are not 0 == 0."""
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return net


def build(stage, **kw):
    return emo_net(denoiser(), stage=stage, guider=Guider(1, 3, (8, 16), 1), audio_encoder=AE, motion_module=MM,
                   speed=SP, **kw)


def inputs(b=2, t=4, n=2):
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(b, 3, t, 16, 16, generator=g), t=torch.full((b,), 200.0),
                reference=torch.randn(b, 3, 16, 16, generator=g), guide=torch.randn(b, 1, 16, 16, generator=g),
                audio=torch.randn(b, t, 6, 5, generator=g), speed=torch.tensor([0.01, 0.07]),
                motion_frames=torch.randn(b, 3, n, 16, 16, generator=g))


def test_speed_buckets_and_windows():
    enc = SpeedEncoder(**SP)
    w = torch.tensor([[0.0, 0.02, 0.05]])
    s = enc.buckets(w)
    assert torch.allclose(s[0, 1], torch.tanh((0.02 - torch.tensor([0.0, 0.04, 0.08])) / 0.02 * 3))
    feats = enc(w, 3)
    assert feats.shape == (1, 3, 8)
    # frame 1's window is frames 0..2 (context 1); the edge frames repeat at the clip's ends
    want = enc.mlp(torch.cat([s[0, 0], s[0, 1], s[0, 2]]))
    assert torch.allclose(feats[0, 1], want, atol=1e-6)
    assert torch.allclose(feats[0, 0], enc.mlp(torch.cat([s[0, 0], s[0, 0], s[0, 1]])), atol=1e-6)
    assert torch.allclose(enc(torch.tensor([0.03]), 4), enc(torch.full((1, 4), 0.03), 4))  # one speed per clip
    with pytest.raises(ValueError, match="radii"):
        SpeedEncoder([0.0, 0.1], [0.1])


def test_new_layers_start_as_identity_then_act_through_the_temporal_layers(tmp_path):
    img = randomise(build("image"))
    save_weights(stage_state_dict(img), tmp_path / "image.safetensors")
    net = build("speed", image_weights=str(tmp_path / "image.safetensors")).eval()
    kw = inputs()
    with torch.no_grad():
        frames = torch.stack([img.eval()(kw["x"][:, :, i], kw["t"], reference=kw["reference"], guide=kw["guide"])
                              for i in range(4)], 2)
        full = net(**kw)
        assert frames.abs().mean() > 0.05
        assert torch.allclose(full, frames, atol=1e-5)  # audio, temporal and speed layers all zero-initialised
        for m in net.modules():
            if isinstance(m, MotionFrameTemporal):
                torch.nn.init.normal_(m.temporal.temporal_transformer.proj_out.weight, std=0.2)
                torch.nn.init.normal_(m.speed.proj_out.weight, std=0.2)
        out = net(**kw)
        assert (net(**{**kw, "speed": torch.tensor([0.07, 0.01])}) - out).abs().max() > 1e-4
        moved = net(**{**kw, "motion_frames": kw["motion_frames"].flip(0)})
        assert (moved - out).abs().max() > 1e-4
        # all-zero motion frames are "zero maps" (the first clip), and equal to giving no motion frames
        zero = net(**{**kw, "motion_frames": torch.zeros_like(kw["motion_frames"])})
        none = net(**{**kw, "motion_frames": None})
        assert not torch.allclose(zero, none)  # zero maps still join the temporal attention as frames
        assert torch.allclose(zero, net(**{**kw, "motion_frames": torch.zeros(2, 3, 2, 16, 16)}))


def test_motion_frame_features_come_from_the_referencenet_taps():
    net = build("video")
    taps = [m for m in net.reference_net.unet.modules() if isinstance(m, FeatureTap)]
    temporal = [m for m in net.denoiser.modules() if isinstance(m, MotionFrameTemporal)]
    assert taps and sorted(t.block for t in taps) == sorted(m.block for m in temporal)
    kw = inputs(n=3)
    ctx = net.extra_ctx(kw["x"], kw["reference"], torch.zeros(2, 1, 8), speed=kw["speed"],
                        motion_frames=kw["motion_frames"])
    feats = ctx["motion_features"]
    assert set(feats) == {m.block for m in temporal}
    for f in feats.values():
        assert f.shape[0] == 2 * 3  # B * n motion frames
    assert all(len(v) == 1 and v[0].shape[0] == 2 for v in ctx["reference_read"].values())  # the reference only
    assert "speed_tokens" not in ctx  # stage 2 has no speed layers


def test_stages_train_what_emo_trains(tmp_path):
    img = build("image")
    assert {n.split(".")[0] for n, p in img.named_parameters() if p.requires_grad} == {
        "denoiser", "reference_net", "guider"}
    save_weights(stage_state_dict(img), tmp_path / "image.safetensors")
    vid = build("video", image_weights=str(tmp_path / "image.safetensors"))
    names = [n for n, p in vid.named_parameters() if p.requires_grad]
    audio = tuple(f"denoiser.{a}." for a in vid.denoiser.audio_names)
    temporal = tuple(f"denoiser.{a}." for a in vid.denoiser.temporal_names)
    assert names and all(n.startswith(audio + temporal + ("audio_encoder.",)) for n in names)
    assert any(n.startswith(audio) for n in names) and any(n.startswith("audio_encoder.") for n in names)
    save_weights(stage_state_dict(vid), tmp_path / "video.safetensors")
    noa = build("video_noaudio", image_weights=str(tmp_path / "image.safetensors"))
    assert noa.audio_encoder is None and not getattr(noa.denoiser, "audio_names", None)
    spd = build("speed", image_weights=str(tmp_path / "image.safetensors"),
                video_weights=str(tmp_path / "video.safetensors"))
    names = [n for n, p in spd.named_parameters() if p.requires_grad]
    assert all(n.startswith(temporal + ("speed_encoder.",)) for n in names)
    assert not any(n.startswith(audio) for n in names)  # EMO: the audio layers are not trained with speed
    for k, v in stage_state_dict(vid).items():  # stage 3 starts from stage 2's layers
        assert torch.equal(spd.state_dict()[k], v), k
    with pytest.raises(ValueError, match="do not fit"):
        build("speed", image_weights=str(tmp_path / "video.safetensors"))


def test_emo_clips_split_motion_frames_and_keep_frames_aligned():
    world = dict(n=3, size=16, seed=5, identity_split="all")
    clips = EMOClips(motion_frames=2, frames=4, **world)
    from shared.data.talking_faces import TalkingFaces

    raw = TalkingFaces(frames=6, **world)[1]
    it = clips[1]
    assert it["x"].shape == (3, 4, 16, 16) and it["motion_frames"].shape == (3, 2, 16, 16)
    assert torch.equal(it["motion_frames"], raw["x"][:, :2]) and torch.equal(it["x"], raw["x"][:, 2:])
    for k in ("audio_features", "mouth_open", "head_pose", "audio_envelope"):
        assert torch.equal(it[k], raw[k][2:]), k
    assert it["face_region"].shape == (1, 16, 16) and set(it["face_region"].unique().tolist()) <= {-1.0, 1.0}
    frame = EMOClips(frames=4, frames_only=True, **world)[0]
    assert frame["x"].shape == (3, 16, 16) and frame["face_region"].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="motion_frames"):
        EMOClips(motion_frames=2, frames_only=True, **world)


def test_emo_clips_split_per_frame_speeds_and_the_claim_takes_them():
    """A world whose speed varies within a clip: EMOClips splits the per-frame speed like the other per-frame keys,
    and the claim's ``take`` / ``clip_speed`` slice and average it (a constant speed passes through)."""
    from papers.emo.claim import clip_speed, take
    from shared.data.talking_faces import TalkingFaces

    world = dict(n=3, size=16, seed=5, identity_split="all", speed_segments=2)
    raw = TalkingFaces(frames=6, **world)[1]
    it = EMOClips(motion_frames=2, frames=4, **world)[1]
    assert torch.equal(it["speed"], raw["speed"][2:])
    clips = {"x": torch.zeros(2, 3, 6, 4, 4), "audio_features": torch.zeros(2, 6, 1), "mouth_open": torch.zeros(2, 6),
             "audio_envelope": torch.zeros(2, 6), "speed": torch.arange(12.0).view(2, 6)}
    part = take(clips, slice(2, 5))
    assert torch.equal(part["speed"], clips["speed"][:, 2:5]) and part["x"].shape[2] == 3
    assert torch.equal(clip_speed(part["speed"]), torch.tensor([3.5, 9.5]))  # frames 1.. of the part: steps
    const = dict(clips, speed=torch.tensor([0.02, 0.05]))
    assert torch.equal(take(const, slice(0, 3))["speed"], const["speed"])
    assert torch.equal(clip_speed(const["speed"]), const["speed"])


def test_box_mask():
    m = box_mask(torch.tensor([0.25, 0.5, 0.75, 1.0]), 8)
    inside = (m[0] > 0).nonzero()
    assert inside[:, 0].min() == 4 and inside[:, 0].max() == 7 and inside[:, 1].min() == 2 and inside[:, 1].max() == 5


def test_emonet_needs_its_inputs():
    net = build("image")
    kw = inputs()
    with pytest.raises(ValueError, match="face locator"):
        net(kw["x"][:, :, 0], kw["t"], reference=kw["reference"])
    with pytest.raises(ValueError, match="ReferenceNet"):
        net(kw["x"][:, :, 0], kw["t"], guide=kw["guide"])
    assert isinstance(net, EMONet)


def test_claim_noise_prior_keeps_iid_and_draws_each_clip_from_the_prior():
    """``claim.noise_prior`` unset: every clip's x_T is the i.i.d. draw of before (same seed, same tensor); set: each
    clip of a long video its own draw from the prior (seed + i), so only motion frames can join the clips."""
    from omegaconf import OmegaConf

    from papers.emo.claim import initial_noise, long_generation, noise_prior
    from shared.diffusion.noise_priors import MixedNoise

    shape = (2, 3, 4, 8, 8)
    assert torch.equal(initial_noise(shape, 7), torch.randn(shape, generator=torch.Generator().manual_seed(7)))
    assert noise_prior(OmegaConf.create({"claim": {}})) is None
    prior = noise_prior(OmegaConf.create({"claim": {"noise_prior": {
        "_target_": "shared.diffusion.noise_priors.MixedNoise", "alpha": 1000.0}}}))
    assert isinstance(prior, MixedNoise)
    shared = initial_noise(shape, 7, prior)
    assert (shared[:, :, 1:] - shared[:, :, :-1]).abs().max() < 0.01   # alpha >> 1: nearly one frame repeated

    seen = []

    class Fake:
        conditions = {"reference": None, "face_region": None}

        def sample(self, x_T, cond, sampler, generator):
            seen.append(x_T)
            return x_T

    clips = {"x": torch.zeros(2, 3, 6, 8, 8), "reference": torch.zeros(2, 3, 8, 8),
             "face_region": torch.zeros(2, 1, 8, 8), "audio_features": torch.zeros(2, 6, 1, 1),
             "mouth_open": torch.zeros(2, 6), "audio_envelope": torch.zeros(2, 6)}
    chain = long_generation(Fake(), clips, {}, 5, f=3, n=1, k=2, motion=False, prior=prior)
    for i, part in enumerate(chain):
        assert torch.equal(part, initial_noise((2, 3, 3, 8, 8), 5 + i, prior))
    seen.clear()
    long_generation(Fake(), clips, {}, 5, f=3, n=1, k=2, motion=False)   # no prior: per-clip i.i.d. seeds 5, 6
    assert torch.equal(seen[1], torch.randn(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(6)))


def test_temporal_probe_reloads_a_finished_run_and_measures_both_paths(tmp_path):
    """``python -m papers.emo.probe``: reloads the quick run's stage-2 model (nothing trains again) and writes the
    motion-frame and speed readings; a folder without a finished run is one line naming the file."""
    import json

    from conftest import compose

    from papers.emo.probe import main
    from shared.engine.train import run

    over = ["experiment=emo/talking_faces_claim_v3", "quick=true", "++data.train.head_travel=3.0"]
    run(compose(over + ["logger=none", f"run_dir={tmp_path}"]))
    ckpt = tmp_path / "video_seed0" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    out = main(over + [f"run_dir={tmp_path}"])
    assert ckpt.stat().st_mtime_ns == before  # resumed finished, not trained again
    saved = json.loads((tmp_path / "temporal_probe.json").read_text())
    assert saved == out and saved["seed"] == 0 and saved["speeds"] == [0.0, 0.01, 0.08, 0.3]
    assert saved["speed_effect"][0] == 0.0 and len(saved["judged_speed"]) == 4
    for k in ("first_frame_to_previous_motion_frames", "first_frame_to_previous_zero_maps", "motion_frames_effect",
              "continuation_error_motion_frames", "real_first_frame_to_previous", "pose_jump_motion_frames",
              "pose_jump_zero_maps", "pose_jump_real", "pose_seam_jump_motion_frames", "pose_within_clip_independent"):
        assert 0.0 <= saved[k] < 2.0, k
    assert saved["motion_frames_effect"] > 0  # real motion frames reach the output
    assert saved["mf_speeds"] == [0.01, 0.045, 0.08] and len(saved["mf_judged_speed"]) == 3
    pairs = list(zip(saved["net_displacement"], saved["judged_speed"])) + list(
        zip(saved["mf_net_displacement"], saved["mf_judged_speed"]))
    pairs.append((saved["real_continuation"]["net_displacement"], saved["real_continuation"]["judged_speed"]))
    for net, step in pairs:  # triangle inequality: the net displacement per step is at most the mean step length
        assert 0.0 <= net <= step + 1e-6, (net, step)
    assert all(v > 0 for v in saved["mf_pixel_change"])
    assert saved["pose_seam_ratio_real"] > 0 and saved["pose_seam_ratio_motion_frames"] > 0
    with pytest.raises(FileNotFoundError, match="image/export.safetensors not found") as e:
        main(over + [f"run_dir={tmp_path / 'nothing'}"])
    assert "\n" not in str(e.value)


def test_pose_seams_see_a_cut_between_clips_and_none_inside_a_real_video():
    """``pose_seams``: a real long clip cut into parts has seam jumps like its within-part pose changes (ratio ~1);
    parts taken from different clips jump at every seam (ratio well above 1). ``pose_jump`` agrees at the first seam."""
    from papers.emo.claim import pose_jump, pose_seams
    from shared.data.talking_faces import TalkingFaces
    from shared.metrics.avatar_judge import load_avatar_judge

    judge = load_avatar_judge("talking_faces", None)
    ds = TalkingFaces(n=16, frames=16, size=16, split="test", seed=3, identity_split="unseen", head_travel=3.0)
    x = torch.stack([ds[i]["x"] for i in range(16)])  # (B, 3, 16, 16, 16)
    real = list(x.split(8, dim=2))
    seam, within, ratio = pose_seams(real, judge)
    assert 0 < within and 0.5 < ratio < 1.5, (seam, within, ratio)
    cut = [real[0], torch.roll(real[1], 1, dims=0)]  # the second part from another clip
    seam_cut, _, ratio_cut = pose_seams(cut, judge)
    assert ratio_cut > 2 * ratio and seam_cut > 2 * seam
    assert abs(pose_jump(real[0][:, :, -1], real[1], judge) - seam) < 1e-6
