"""Human-avatar data: the Puppets and TalkingFaces worlds, pose maps and retargeting, frame-aligned audio
features, the UBC/TikTok-style pose-video and HDTF-style talking-head readers, and their configs."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import item_digest

from shared.data import DataError
from shared.data.audio import AudioFrameFeatures, hz_to_mel, mel_filterbank, mel_to_hz
from shared.data.avatar_readers import PoseVideoDataset, TalkingHeadDataset
from shared.data.pose import (
    BONE_COLORS,
    BONES,
    KEYPOINTS,
    bone_lengths,
    bone_vectors,
    read_openpose_json,
    render_pose_map,
    retarget_pose,
)
from shared.data.puppets import HELDOUT_MOTIONS, MOTIONS, PARTS, Puppets, puppet_identity
from shared.data.talking_faces import MOUTH_INTERIOR, TalkingFaces, random_face_appearance

K, B = len(KEYPOINTS), len(BONES)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


# -- Puppets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,frames", [(32, 16), (16, 8)])
def test_puppets_item_keys_shapes_and_ranges(size, frames):
    it = Puppets(n=30, frames=frames, size=size, identity_split="all", motion_split="all")[7]
    T, S = frames, size
    shapes = {
        "x": (3, T, S, S), "reference": (3, S, S), "reference_keypoints": (K, 2), "reference_pose_map": (3, S, S),
        "pose_map": (3, T, S, S), "keypoints": (T, K, 2), "keypoint_conf": (T, K), "part_mask": (T, S, S),
        "yaw": (T,), "bone_lengths": (B,), "identity": (), "motion": (), "tempo": (),
    }  # fmt: skip
    assert set(it) == set(shapes) | {"caption"}
    for k, s in shapes.items():
        assert tuple(it[k].shape) == s, k
    for k in ("x", "reference", "pose_map", "reference_pose_map"):
        assert it[k].dtype == torch.float32 and it[k].min() >= -1 and it[k].max() <= 1, k
    assert it["part_mask"].dtype == torch.long and 0 <= it["part_mask"].min() and it["part_mask"].max() <= len(PARTS)
    assert it["identity"].dtype == torch.long and it["motion"].dtype == torch.long
    assert (it["keypoints"] >= 0).all() and (it["keypoints"] <= 1).all()  # the figure stays in the frame
    assert it["caption"].startswith(f"person {int(it['identity'])} ")
    limbs = Puppets(n=2, frames=4, size=16, pose_mode="limbs")[0]
    assert limbs["pose_map"].shape == (B, 4, 16, 16) and limbs["reference_pose_map"].shape == (B, 16, 16)


def test_puppets_deterministic_from_seed_and_split():
    a = Puppets(n=10, frames=6, size=16, seed=3)[4]
    assert _same(a, Puppets(n=10, frames=6, size=16, seed=3)[4])
    assert not torch.equal(a["x"], Puppets(n=10, frames=6, size=16, seed=4)[4]["x"])
    assert not torch.equal(a["x"], Puppets(n=10, frames=6, size=16, seed=3, split="val")[4]["x"])
    # An identity is the same person whatever the seed or split.
    assert np.array_equal(puppet_identity(5, 12).shirt, Puppets(n=1, seed=9, split="test").identities[5].shirt)


def test_puppets_held_out_identities_and_motions_are_disjoint():
    seen = Puppets(n=60, frames=4, size=16, identity_split="seen", motion_split="seen")
    unseen = Puppets(n=60, frames=4, size=16, split="test", identity_split="unseen", motion_split="unseen")
    assert unseen.identity_pool == (3, 7, 11) and set(seen.identity_pool) == set(range(12)) - {3, 7, 11}
    assert {MOTIONS[m] for m in unseen.motion_pool} == set(HELDOUT_MOTIONS)
    assert not {MOTIONS[m] for m in seen.motion_pool} & set(HELDOUT_MOTIONS)
    got_seen = {(int(it["identity"]), int(it["motion"])) for it in (seen[i] for i in range(len(seen)))}
    got_unseen = {(int(it["identity"]), int(it["motion"])) for it in (unseen[i] for i in range(len(unseen)))}
    assert got_seen == {seen.assignment(i) for i in range(len(seen))}
    assert {k for k, _ in got_seen}.isdisjoint({k for k, _ in got_unseen})
    assert {m for _, m in got_seen}.isdisjoint({m for _, m in got_unseen})
    assert len(got_unseen) == 9  # balanced: every held-out identity x held-out motion appears in 60 items
    custom = Puppets(n=4, frames=2, size=16, heldout_identities=[0, 1], identity_split="unseen")
    assert custom.identity_pool == (0, 1)
    with pytest.raises(ValueError, match="identity_split"):
        Puppets(n=1, identity_split="held")
    with pytest.raises(ValueError, match="unknown motions"):
        Puppets(n=1, motions=["moonwalk"])


# keypoint -> the parts (1-based ids) that meet at it
_ADJACENT = {0: {1}, 1: {1, 2}, 2: {2, 3}, 3: {3, 4}, 4: {4}, 5: {2, 5}, 6: {5, 6}, 7: {6}, 8: {2, 7},
             9: {7, 8}, 10: {8}, 11: {2, 9}, 12: {9, 10}, 13: {10}}  # fmt: skip


@pytest.mark.parametrize("size", [32, 16])
def test_puppet_keypoints_land_on_the_rendered_figure(size):
    ds = Puppets(n=52, frames=8, size=size, identity_split="all", motion_split="all")
    on_adjacent = total = 0
    for i in range(len(ds)):
        it = ds[i]
        kp, mask = it["keypoints"], it["part_mask"]
        col, row = (kp * size).floor().long().unbind(-1)
        parts = mask[torch.arange(8)[:, None], row, col]  # (T, K) part at each keypoint's pixel
        assert (parts > 0).all(), f"item {i}: a keypoint's pixel is background"
        on_adjacent += sum(int(parts[t, k]) in _ADJACENT[k] for t in range(8) for k in range(K))
        total += parts.numel()
    assert on_adjacent / total > 0.8  # the rest: a nearer part (an arm before the torso) covers the joint


def test_puppet_identities_are_told_apart_by_appearance():
    """At 16 px a nearest-centroid judge on two mean colours (shirt: torso and upper arms; legs) names every
    identity of unseen clips, held-out identities included."""
    ds = Puppets(n=192, frames=4, size=16, identity_split="all", motion_split="all")
    feats, labels = [], []
    for i in range(len(ds)):
        it = ds[i]
        x, parts = it["x"].permute(1, 2, 3, 0), it["part_mask"]
        feats.append(torch.cat([x[torch.isin(parts, torch.tensor(p))].mean(0) for p in ([2, 3, 5], [7, 8, 9, 10])]))
        labels.append(int(it["identity"]))
    feats, labels = torch.stack(feats), torch.tensor(labels)
    train = torch.arange(len(ds)) < 96
    cents = torch.stack([feats[train & (labels == k)].mean(0) for k in range(12)])
    pred = torch.cdist(feats[~train], cents).argmin(1)
    assert (pred == labels[~train]).float().mean() == 1.0


def test_puppet_reference_is_the_same_identity_in_another_pose():
    ds = Puppets(n=24, frames=8, size=32, identity_split="all", motion_split="all")
    for i in range(len(ds)):
        it = ds[i]
        body = ds.identities[int(it["identity"])]
        ref = it["reference"].permute(1, 2, 0)

        def has(colour, ref=ref):  # fully covered pixels carry a part's exact colour
            return bool(((ref - (torch.from_numpy(colour) * 2 - 1)).abs().max(-1).values < 1e-5).any())

        assert has(body.trousers) and (has(body.shirt) or has(body.shirt2)), f"item {i}: not the identity's clothes"
        others = [b for b in ds.identities if b.index != body.index]
        assert not any(has(b.shirt) and has(b.trousers) for b in others if not np.allclose(b.shirt, body.shirt))
        assert (it["reference_keypoints"][None] - it["keypoints"]).abs().amax(dim=(1, 2)).min() > 0.01


def test_retarget_keeps_bone_directions_and_sets_lengths():
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(5, K, 2, generator=g)
    target = torch.rand(B, generator=g) + 0.1
    out = retarget_pose(kp, target)
    assert torch.allclose(bone_lengths(out), target.expand(5, B), atol=1e-6)
    v0, v1 = bone_vectors(kp), bone_vectors(out)
    assert torch.allclose(torch.nn.functional.cosine_similarity(v0, v1, dim=-1), torch.ones(5, B), atol=1e-6)
    assert torch.equal(out[:, 1], kp[:, 1])  # the root (neck) stays
    source = torch.rand(B, generator=g) + 0.1
    ratio = retarget_pose(kp, target, source_lengths=source)
    assert torch.allclose(bone_lengths(ratio), bone_lengths(kp) * target / source, atol=1e-6)
    assert torch.allclose(bone_vectors(ratio), v0 * (target / source)[:, None], atol=1e-6)
    with pytest.raises(ValueError, match="source_lengths"):
        retarget_pose(kp, target, source_lengths=torch.zeros(B))


def test_retargeting_a_puppet_motion_gives_the_other_body_doing_it():
    """The world's pose of body B equals body A's pose retargeted to B's lengths (up to the root's place)."""
    ds = Puppets(n=1, frames=12, size=32)
    a, b = ds.identities[0], ds.identities[5]
    assert not np.allclose(a.lengths, b.lengths)
    for m in range(len(MOTIONS)):
        pa = ds.pose(m, a, np.arange(12), np.random.default_rng(m))["keypoints"]
        pb = ds.pose(m, b, np.arange(12), np.random.default_rng(m))["keypoints"]
        moved = retarget_pose(torch.tensor(pa), ds.bone_lengths(5) * 32, source_lengths=ds.bone_lengths(0) * 32)
        assert torch.allclose(bone_vectors(moved), bone_vectors(torch.tensor(pb)), atol=1e-4), MOTIONS[m]


def test_pose_map_draws_each_bone_in_its_colour():
    kp = torch.tensor(
        Puppets(n=1, frames=1, size=32).pose(3, puppet_identity(0, 12), np.zeros(1), np.random.default_rng(0))[
            "keypoints"
        ]
        / 32,
        dtype=torch.float32,
    )
    limbs = render_pose_map(kp, 32, mode="limbs")
    rgb = render_pose_map(kp, 32, mode="rgb")
    for b, (p, c) in enumerate(BONES):
        mid = ((kp[0, p] + kp[0, c]) / 2 * 32).floor().long()
        assert limbs[b, 0, mid[1], mid[0]] > 0.5  # the bone's channel is lit at its midpoint
    assert (limbs[:, 0, 0, 0] == -1).all() and (rgb[:, 0, 0, 0] == -1).all()  # a corner is background
    head = ((kp[0, 0] * 3 + kp[0, 1]) / 4 * 32).floor().long()  # on the neck->head bone, away from the others
    assert torch.allclose(rgb[:, 0, head[1], head[0]], torch.from_numpy(BONE_COLORS[0]) * 2 - 1, atol=0.05)
    conf = torch.ones(1, K)
    conf[0, 4] = 0  # right wrist missing: its bone is not drawn
    assert (render_pose_map(kp, 32, conf=conf, mode="limbs")[3] == -1).all()
    with pytest.raises(ValueError, match="keypoints must be"):
        render_pose_map(torch.zeros(1, 5, 2), 32)


def test_puppets_frames_only_slices_every_per_frame_key():
    for motion in ("walk", "turn"):  # (their drift and yaw are functions of the frame number)
        w = Puppets(n=3, frames=8, size=16, motions=[motion], frames_only=True)
        for i in range(3):
            f, v = w[i], w.video(i)
            assert torch.equal(f["x"], v["x"][:, int(f["frame_index"])])
    f = Puppets(n=6, frames=8, size=16, frames_only=True)[2]
    v = Puppets(n=6, frames=8, size=16)[2]
    t = int(f["frame_index"])
    assert f["x"].shape == (3, 16, 16) and torch.equal(f["x"], v["x"][:, t])
    assert torch.equal(f["pose_map"], v["pose_map"][:, t]) and torch.equal(f["keypoints"], v["keypoints"][t])
    assert torch.equal(f["part_mask"], v["part_mask"][t]) and torch.equal(f["reference"], v["reference"])
    assert "walking" not in f["caption"] and f["caption"] == f"person {int(v['identity'])}"


def test_puppets_render_fast_enough():
    ds = Puppets(n=40, frames=16, size=32)
    ds[0]
    t0 = time.perf_counter()
    for i in range(1, 21):
        ds[i]
    rate = 20 / (time.perf_counter() - t0)
    assert rate > 5, f"{rate:.1f} items/s"  # ~50 items/s on a free core; margin for a loaded machine


# -- audio features ----------------------------------------------------------------------------------------


def test_mel_filterbank_triangles():
    sr, n_fft, n_mels = 16000, 512, 20
    fb = mel_filterbank(sr, n_fft, n_mels)
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.min() >= 0 and fb.max() <= 1
    centres = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    inner = (freqs >= centres[1]) & (freqs <= centres[-2])
    assert torch.allclose(
        fb[torch.from_numpy(inner)].sum(1), torch.ones(int(inner.sum())), atol=1e-5
    )  # partition of unity
    assert np.allclose(mel_to_hz(hz_to_mel([0.0, 440.0, 8000.0])), [0.0, 440.0, 8000.0])
    feats = AudioFrameFeatures(sr, 25, n_mels, n_fft, 160, context=0)
    for f in (300.0, 1000.0, 3000.0):  # a pure tone lights the filter whose centre is nearest
        wave = torch.sin(2 * torch.pi * f * torch.arange(sr) / sr)
        spec = feats(wave, 0, 10).mean(dim=(0, 2))
        assert int(spec.argmax()) == int(np.argmin(np.abs(centres[1:-1] - f)))
    with pytest.raises(ValueError, match="integer"):
        AudioFrameFeatures(16000, 24)
    with pytest.raises(ValueError, match="hop"):
        AudioFrameFeatures(16000, 25, hop=150)


@pytest.mark.parametrize("context,hop", [(2, 160), (1, 320), (0, 640)])
def test_audio_window_of_frame_t_is_centred_on_frame_t(context, hop):
    sr, fps, T, start = 16000, 25, 8, 1920
    f = AudioFrameFeatures(sr, fps, n_mels=16, n_fft=max(hop, 256), hop=hop, context=context)
    spf, k = f.samples_per_frame, f.per_frame
    assert f.window == (2 * context + 1) * k
    centres = f.column_centres(start, T)
    assert np.allclose(centres.mean(1), start + (np.arange(T) + 0.5) * spf)
    assert np.allclose(
        centres[:, context * k : (context + 1) * k], start + np.arange(T)[:, None] * spf + (np.arange(k) + 0.5) * hop
    )
    # A burst in frame 3's samples only: frame 3's window has its energy at the centre, frame 4's one frame earlier.
    wave = torch.zeros(start + (T + 4) * spf)
    s = start + 3 * spf
    wave[s : s + spf] = torch.sin(torch.arange(spf) * 0.7)
    x = f(wave, start, T)
    assert x.shape == (T, 16, f.window)
    energy = x.exp().sum(1)  # (T, window)
    cols = torch.arange(f.window, dtype=torch.float32)
    centroid = (energy[3] * cols).sum() / energy[3].sum()
    assert abs(float(centroid) - (f.window - 1) / 2) < 0.05
    if context > 0:
        c4 = (energy[4] * cols).sum() / energy[4].sum()
        assert abs(float(c4) - ((f.window - 1) / 2 - k)) < 0.05
    # Frames far from the burst see silence.
    assert energy[7].max() < 1e-3 * energy[3].max()


class _ClockEncoder:
    """A fake speech encoder whose feature j is its own centre sample: checks the hook's alignment."""

    sample_rate, hop, offset, dim = 16000, 320.0, 199.5, 1

    def __call__(self, wave):
        n = (len(wave) - 400) // 320 + 1
        return (self.offset + self.hop * torch.arange(n, dtype=torch.float32))[:, None]


def test_speech_encoder_hook_aligns_to_the_same_centres():
    f = AudioFrameFeatures(16000, 25, hop=160, context=2, encoder=_ClockEncoder())
    start, T = 6400, 6
    x = f(torch.zeros(20000), start, T)
    assert x.shape == (T, 1, f.window)
    lo = start - 2 * f.samples_per_frame  # the encoder saw (T + 4) frames of wave from here
    expected = torch.from_numpy(f.column_centres(start, T) - lo).float()
    last = 199.5 + 320 * (((T + 4) * 640 - 400) // 320)  # centre of the encoder's last feature
    inside = (expected >= 199.5) & (expected <= last)
    assert inside.float().mean() > 0.9
    assert torch.allclose(x[:, 0][inside], expected[inside], atol=1e-3)  # interpolated exactly at the centres


def test_wav2vec2_features_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_kernel=(10, 4), conv_stride=(5, 4), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=False, feat_extract_norm="group",
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")
    from shared.data.audio import Wav2Vec2Features

    enc = Wav2Vec2Features(str(tmp_path / "w2v"))
    assert enc.hop == 20 and enc.offset == (10 + 3 * 5 - 1) / 2 and enc.dim == 16
    world = TalkingFaces(n=2, frames=4, size=16, audio_encoder=enc)
    assert world[0]["audio_features"].shape == (4, 16, world.features.window)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Wav2Vec2Features(str(tmp_path / "missing"))


# -- TalkingFaces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,frames", [(32, 16), (16, 8)])
def test_talking_faces_item_keys_and_shapes(size, frames):
    ds = TalkingFaces(n=10, frames=frames, size=size)
    it = ds[3]
    T, S, spf = frames, size, ds.samples_per_frame
    shapes = {
        "x": (3, T, S, S), "reference": (3, S, S), "audio": (T * spf,), "audio_features": (T, 40, 20),
        "mouth_open": (T,), "mouth_width": (T,), "eye_open": (T,), "brow_raise": (T,), "audio_envelope": (T,),
        "head_pose": (T, 3), "speed": (), "face_mask": (T, S, S), "face_box": (4,), "mouth_center": (T, 2),
        "identity": (),
    }  # fmt: skip
    assert set(it) == set(shapes) | {"caption"}
    for k, s in shapes.items():
        assert tuple(it[k].shape) == s, k
    assert it["x"].min() >= -1 and it["x"].max() <= 1 and it["audio"].abs().max() <= 1
    for k in ("mouth_open", "mouth_width", "eye_open", "brow_raise", "audio_envelope"):
        assert it[k].min() >= 0 and it[k].max() <= 1, k
    assert it["face_mask"].dtype == torch.bool and it["face_mask"].any()
    x0, y0, x1, y1 = it["face_box"].tolist()
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    cols, rows = torch.nonzero(it["face_mask"].any(0).any(0)), torch.nonzero(it["face_mask"].any(0).any(1))
    assert x0 == cols.min() / S and x1 == (cols.max() + 1) / S and y0 == rows.min() / S and y1 == (rows.max() + 1) / S
    assert ds.speed[0] <= float(it["speed"]) <= ds.speed[1]


def test_talking_faces_deterministic_and_identity_split():
    a = TalkingFaces(n=8, frames=4, size=16, seed=1)[5]
    assert _same(a, TalkingFaces(n=8, frames=4, size=16, seed=1)[5])
    assert not torch.equal(a["audio"], TalkingFaces(n=8, frames=4, size=16, seed=2)[5]["audio"])
    assert not torch.equal(a["audio"], TalkingFaces(n=8, frames=4, size=16, seed=1, split="val")[5]["audio"])
    seen = TalkingFaces(n=24, frames=2, size=16)
    unseen = TalkingFaces(n=24, frames=2, size=16, split="test", identity_split="unseen")
    ids_seen = {int(seen[i]["identity"]) for i in range(24)}
    ids_unseen = {int(unseen[i]["identity"]) for i in range(24)}
    assert ids_unseen == {3, 7, 11} and ids_seen == set(range(12)) - {3, 7, 11}


@pytest.mark.parametrize("lag", [1, 2, 0])
def test_mouth_opening_follows_the_audio_envelope_at_the_designed_lag(lag):
    ds = TalkingFaces(n=24, frames=16, size=16, lag_frames=lag)
    spf = ds.samples_per_frame
    mouth, loud = [], []
    for i in range(len(ds)):
        it = ds[i]
        # Exactly as designed: the mouth shows the envelope `lag` frames later ...
        assert torch.equal(it["mouth_open"][lag:], it["audio_envelope"][: 16 - lag])
        mouth.append(it["mouth_open"])
        loud.append(it["audio"].view(16, spf).pow(2).mean(1).sqrt())  # ... and the loudness is the envelope
    mouth, loud = torch.stack(mouth), torch.stack(loud)

    def corr(d):  # correlation of mouth[t] with loudness[t - d]
        a, b = (mouth[:, d:], loud[:, : 16 - d]) if d >= 0 else (mouth[:, :d], loud[:, -d:])
        return float(np.corrcoef(a.flatten(), b.flatten())[0, 1])

    cs = {d: corr(d) for d in range(-3, 4)}
    assert max(cs, key=cs.get) == lag and cs[lag] > 0.9, cs
    assert all(c < 0.7 for d, c in cs.items() if d != lag), cs


def test_open_mouth_is_visible_in_the_frames():
    """Open-mouth pixels (the only colour with green < 0.1 and red > 0.3) count up with mouth_open."""
    ds = TalkingFaces(n=24, frames=16, size=32, identity_split="all")
    counts, opening = [], []
    for i in range(len(ds)):
        it = ds[i]
        x = (it["x"] + 1) / 2
        counts.append(((x[0] > 0.3) & (x[1] < 0.1)).float().sum((1, 2)))
        opening.append(it["mouth_open"])
        assert (counts[-1][it["mouth_open"] <= 0.02] == 0).all()  # a closed mouth shows no interior
    counts, opening = torch.cat(counts), torch.cat(opening)
    assert np.corrcoef(counts, opening)[0, 1] > 0.8
    assert MOUTH_INTERIOR[1] < 0.1 and MOUTH_INTERIOR[0] > 0.3


def test_head_moves_at_the_speed_condition():
    ds = TalkingFaces(n=30, frames=16, size=16, speed=(0.0, 0.1))
    motion, speeds = [], []
    for i in range(len(ds)):
        it = ds[i]
        step = it["head_pose"].double().diff(dim=0).norm(dim=1)  # every frame moves the head by `speed`
        assert torch.allclose(step, it["speed"].double().expand(15), atol=1e-6), (step, it["speed"])
        speeds.append(float(it["speed"]))
        motion.append(float((it["x"][:, 1:] - it["x"][:, :-1]).abs().mean()))
    assert max(speeds) - min(speeds) > 0.05
    assert np.corrcoef(speeds, motion)[0, 1] > 0.5  # faster heads change the pixels more


def test_talking_faces_frames_only_keeps_the_frame_audio():
    f = TalkingFaces(n=4, frames=8, size=16, frames_only=True)[1]
    v = TalkingFaces(n=4, frames=8, size=16)[1]
    t, spf = int(f["frame_index"]), 640
    assert torch.equal(f["x"], v["x"][:, t]) and torch.equal(f["audio"], v["audio"][t * spf : (t + 1) * spf])
    assert torch.allclose(f["audio_features"], v["audio_features"][t], atol=1e-5)
    for k in ("mouth_open", "head_pose", "face_mask", "mouth_center", "eye_open"):
        assert torch.equal(f[k], v[k][t]), k
    assert torch.equal(f["reference"], v["reference"])




def test_talking_faces_items_unchanged_without_random_appearance():
    """Digests computed with the world before ``random_appearance`` existed: off (the default) is byte-identical."""
    for extra in ({}, {"random_appearance": False}):
        assert item_digest(TalkingFaces(n=8, frames=4, size=16, **extra)[5]) == "2120f79f693cade6"
        assert item_digest(TalkingFaces(n=8, frames=4, size=16, identity_split="all", seed=3, **extra)[2]) == (
            "d10d75ce9afbb4ed"
        )
        assert item_digest(TalkingFaces(n=8, frames=8, size=16, frames_only=True, **extra)[1]) == "0b95e485778771e0"


def test_talking_faces_head_travel_default_is_unchanged_and_scales_the_motion():
    """``head_travel``: 1 (the default) renders the items of the digests above; larger values move the face further
    for the same head pose (the face mask's centroid travels about ``head_travel`` times as far), nothing else drawn
    changes."""
    assert item_digest(TalkingFaces(n=8, frames=4, size=16, head_travel=1.0)[5]) == "2120f79f693cade6"
    kw = dict(n=6, frames=16, size=32, speed=(0.08, 0.08))
    travel = {}
    for k in (1.0, 3.0):
        ds = TalkingFaces(**kw, head_travel=k)
        steps = []
        for i in range(len(ds)):
            it = ds[i]
            m = it["face_mask"].float()
            ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
            c = torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], 1) / m.sum((1, 2))[:, None]
            steps.append(float((c.max(0).values - c.min(0).values).norm()))
            ref = TalkingFaces(**kw)[i]
            for key in ("audio", "mouth_open", "head_pose", "speed", "identity"):
                assert torch.equal(it[key], ref[key]), key
        travel[k] = float(np.mean(steps))
    assert 2.2 < travel[3.0] / travel[1.0] < 3.8, travel


def test_talking_faces_speed_segments_vary_the_speed_within_a_clip():
    """``speed_segments = k``: per-frame speeds, piecewise constant in at most k parts, each step of the head pose
    moving exactly its frame's speed; the default (1) renders the items of the digests above."""
    assert item_digest(TalkingFaces(n=8, frames=4, size=16, speed_segments=1)[5]) == "2120f79f693cade6"
    ds = TalkingFaces(n=24, frames=10, size=16, speed=(0.0, 0.1), speed_segments=2)
    assert "speed" in ds.per_frame_keys and "speed" not in TalkingFaces(n=2, frames=4, size=16).per_frame_keys
    changes = 0
    for i in range(len(ds)):
        it = ds[i]
        w = it["speed"].double()
        assert w.shape == (10,) and 0.0 <= float(w.min()) and float(w.max()) <= 0.1
        parts = int((w[1:] != w[:-1]).sum())
        assert parts <= 1
        changes += parts
        step = it["head_pose"].double().diff(dim=0).norm(dim=1)
        assert torch.allclose(step, w[1:], atol=1e-6), (step, w)
        assert torch.equal(ds.video(i, only=4)["speed"], it["speed"][4:5])
    assert changes == len(ds)  # two independent uniform speeds differ (almost surely)


@pytest.mark.parametrize("bad", [0, 5, 1.5, True])
def test_talking_faces_speed_segments_must_fit_the_clip(bad):
    with pytest.raises(ValueError, match="speed_segments must be an integer from 1 to frames") as e:
        TalkingFaces(n=2, frames=4, size=16, speed_segments=bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [0, -1.0])
def test_talking_faces_head_travel_must_be_positive(bad):
    with pytest.raises(ValueError, match="head_travel must be > 0") as e:
        TalkingFaces(n=2, frames=2, size=16, head_travel=bad)
    assert "\n" not in str(e.value)


def _has_colour(img: torch.Tensor, rgb) -> bool:
    """Whether a pixel of ``img`` (3, H, W) in [-1, 1] is exactly ``rgb`` in [0, 1] (a fully covered one)."""
    c = torch.as_tensor(np.asarray(rgb, np.float32) * 2 - 1).view(3, 1, 1)
    return bool(((img - c).abs().amax(0) < 1e-5).any())


def test_talking_faces_random_appearance_keeps_the_draws_and_is_new_per_item():
    """``random_appearance``: the same audio, mouth, blinks and head motion as the fixed world; a fresh appearance
    per item (not a fixed identity's clothes), the reference in the clip's appearance; frames-only alike."""
    kw = dict(n=12, frames=4, size=32, identity_split="all")
    fixed, rand = TalkingFaces(**kw), TalkingFaces(**kw, random_appearance=True)
    fixed_clothes = [f.clothes for f in fixed.identities]
    clothes = []
    for i in range(len(rand)):
        a, b = fixed[i], rand[i]
        for k in ("audio", "audio_features", "mouth_open", "mouth_width", "eye_open", "brow_raise", "head_pose",
                  "speed", "face_mask", "identity"):  # fmt: skip
            assert torch.equal(a[k], b[k]), f"item {i}: {k} changed"
        assert not torch.equal(a["x"], b["x"]) and not torch.equal(a["reference"], b["reference"])
        k = int(b["identity"])
        look = random_face_appearance(rand.identities[k], rand._rng(i, stream=2))
        assert look.width == fixed.identities[k].width and look.height == fixed.identities[k].height
        for part in ("clothes", "skin"):  # the clip and its reference wear the drawn appearance
            colour = getattr(look, part)
            assert _has_colour(b["x"][:, 0], colour) and _has_colour(b["reference"], colour), f"item {i}: {part}"
        assert all(np.abs(look.clothes - f).max() > 1e-3 for f in fixed_clothes), f"item {i}: a fixed identity's"
        clothes.append(torch.from_numpy(look.clothes))
    d = torch.cdist(torch.stack(clothes), torch.stack(clothes)) + 9 * torch.eye(len(clothes))
    assert d.min() > 1e-3  # no two items share a clothes colour
    assert torch.equal(TalkingFaces(**kw, random_appearance=True)[3]["x"], rand[3]["x"])  # a pure function of the item
    one = TalkingFaces(**kw, random_appearance=True, frames_only=True)[3]
    assert torch.equal(one["x"], rand[3]["x"][:, int(one["frame_index"])])
    assert torch.equal(one["reference"], rand[3]["reference"])


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_talking_faces_random_appearance_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="random_appearance must be true or false") as e:
        TalkingFaces(n=2, frames=2, size=16, random_appearance=bad)
    assert "\n" not in str(e.value)


# -- readers ------------------------------------------------------------------------------------------------


def _write_video(path: Path, values, size=(24, 40), fps=25, audio=None, audio_rate=16000, gop=None):
    """Frame i is a flat grey of values[i] (lossless H.264, a keyframe every ``gop`` frames); optionally an
    AAC mono audio stream of samples ``audio``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.height, v.width = size
        v.pix_fmt, v.options = "yuv420p", {"crf": "0"}
        if gop is not None:
            v.codec_context.gop_size = gop
        a = None
        if audio is not None:
            a = c.add_stream("aac", rate=audio_rate)
            a.layout = "mono"
        for val in values:
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((*size, 3), val, np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            for s in range(0, len(audio), 1024):
                fr = av.AudioFrame.from_ndarray(
                    audio[None, s : s + 1024].astype(np.float32), format="flt", layout="mono"
                )
                fr.sample_rate, fr.pts = audio_rate, s
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


def _pose_json(path: Path, pts: np.ndarray, conf: np.ndarray, fmt: str = "coco18", extra: dict | None = None):
    """OpenPose JSON with our 14 keypoints (x, y pixel centres) in the COCO-18 or BODY_25 layout."""
    n = 18 if fmt == "coco18" else 25
    idx = list(range(14)) if fmt == "coco18" else [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    flat = np.zeros((n, 3))
    flat[idx, :2], flat[idx, 2] = pts, conf
    decoy = {"pose_keypoints_2d": (np.ones((n, 3)) * 0.01).ravel().tolist()}  # a faint second person
    data = {"version": 1.3, "people": [decoy, {"pose_keypoints_2d": flat.ravel().tolist()}], **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _grey(x: torch.Tensor) -> list[float]:
    return ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).tolist()


def _kp_pixels(i: int) -> np.ndarray:
    """Keypoints (14, 2) of frame i of a 40 x 24 (w x h) test video, in pixel centres."""
    base = np.stack([np.linspace(12, 28, 14), np.linspace(3, 20, 14)], -1)
    return base + np.array([0.25 * i, 0.0])


@pytest.fixture(scope="module")
def ubc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ubc")
    n = 60
    _write_video(root / "A.mp4", [4 * i for i in range(n)], gop=8)  # keyframes every 8 frames: seeks are real
    for i in range(n):
        conf = np.ones(14)
        if i == 5:
            conf[4] = 0  # a missed wrist
        fmt = "body25" if i % 2 else "coco18"
        _pose_json(root / "A" / f"A_{i:012d}_keypoints.json", _kp_pixels(i), conf, fmt)
    _write_video(root / "B.mp4", [200] * 6)  # pose count mismatch: 6 frames, 4 pose files
    for i in range(4):
        _pose_json(root / "B" / f"{i}.json", _kp_pixels(i), np.ones(14))
    (root / "C.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # undecodable
    for i in range(3):
        _pose_json(root / "C" / f"{i}.json", _kp_pixels(i), np.ones(14))
    return root


def test_read_openpose_json_formats(tmp_path):
    pts, conf = _kp_pixels(0), np.linspace(0.5, 1, 14)
    _pose_json(tmp_path / "a.json", pts, conf, "coco18", {"canvas_width": 40, "canvas_height": 24})
    _pose_json(tmp_path / "b.json", pts, conf, "body25")
    kp, c = read_openpose_json(tmp_path / "a.json")  # frame size from canvas_width / canvas_height
    assert np.allclose(kp, (pts + 0.5) / [40, 24]) and np.allclose(c, conf)
    kp25, _ = read_openpose_json(tmp_path / "b.json", 40, 24)
    assert np.allclose(kp25, kp)
    (tmp_path / "empty.json").write_text('{"people": []}')
    kp0, c0 = read_openpose_json(tmp_path / "empty.json", 40, 24)
    assert (c0 == 0).all() and (kp0 == 0).all()
    (tmp_path / "bad.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}')
    with pytest.raises(ValueError, match="54 .COCO-18. or 75"):
        read_openpose_json(tmp_path / "bad.json", 40, 24)
    with pytest.raises(ValueError, match="frame size"):
        read_openpose_json(tmp_path / "b.json")


def test_pose_video_reader_round_trip(ubc_root):
    ds = PoseVideoDataset(ubc_root, frames=4, stride=2, size=16, seed=0)
    assert len(ds) == 3
    starts = {int(PoseVideoDataset(ubc_root, frames=4, stride=2, size=16, seed=k)[0]["start"]): k for k in range(40)}
    assert {1, 3, 5} & set(starts)  # some seed's clip holds frame 5 (its missed wrist is checked below)
    assert max(starts) > 25  # and clips start all over the video
    seed = next(starts[s] for s in (1, 3, 5) if s in starts)
    ds = PoseVideoDataset(ubc_root, frames=4, stride=2, size=16, seed=seed)
    it = ds[0]
    assert it["path"].endswith("A.mp4")
    s = int(it["start"])
    ids = [s + 2 * i for i in range(4)]
    assert 5 in ids
    assert it["x"].shape == (3, 4, 16, 16) and np.allclose(_grey(it["x"]), [4 * i for i in ids], atol=1.5)
    # 40 x 24 -> shorter side 16: 27 x 16 (w x h), centre crop drops 5 columns on the left.
    scale_w, left = 27 / 40, 5
    for j, i in enumerate(ids):
        want = (((_kp_pixels(i) + 0.5) * [scale_w, 16 / 24]) - [left, 0]) / 16
        conf = torch.ones(14)
        if i == 5:  # frame 5's wrist was not detected
            conf[4], want[4] = 0, 0
        assert np.allclose(it["keypoints"][j].numpy(), want, atol=1e-5)
        assert torch.equal(it["keypoint_conf"][j], conf)
    r = int(it["reference_index"])
    assert not s <= r < s + 7 and abs(_grey(it["reference"][:, None])[0] - 4 * r) < 1.5
    assert it["pose_map"].shape == (3, 4, 16, 16) and it["reference_pose_map"].shape == (3, 16, 16)
    assert it["reference_keypoints"].shape == (14, 2) and it["pose_map"].max() > 0
    again = PoseVideoDataset(ubc_root, frames=4, stride=2, size=16, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(again[0]["x"], it["x"]) and int(again[0]["reference_index"]) == r


def test_decoding_by_seeking_returns_the_asked_frames(ubc_root):
    from shared.data.avatar_readers import _decode_frames

    got, info = _decode_frames(str(ubc_root / "A.mp4"), [57, 2, 40, 41, 3])
    assert sorted(got) == [2, 3, 40, 41, 57] and info["fps"] == 25.0
    assert all(abs(float(got[i].mean()) - 4 * i) < 1.5 for i in got)
    with pytest.raises(Exception, match="ended before frame 60"):
        _decode_frames(str(ubc_root / "A.mp4"), [10, 60])


def test_pose_video_reader_skips_and_counts_bad_clips(ubc_root, tmp_path):
    ds = PoseVideoDataset(ubc_root, frames=3, size=16)
    with pytest.warns(RuntimeWarning, match="skipping"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 2 and {Path(p).name for p in ds.skipped} == {"B.mp4", "C.mp4"}
    assert "6 frames but 4 pose files" in ds.skip_reasons[str(ubc_root / "B.mp4")]
    assert all(it["path"].endswith("A.mp4") for it in items)  # bad indices gave the next valid clip
    bad = tmp_path / "allbad"
    bad.mkdir()
    for name in ("x.mp4", "y.mp4"):
        (bad / name).write_bytes(b"not a video")
    ds = PoseVideoDataset(bad, frames=2, size=8)
    with pytest.warns(RuntimeWarning), pytest.raises(DataError) as err:
        ds[0]
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "2 skipped" in msg and "x.mp4" in msg
    with pytest.raises(FileNotFoundError, match=r"nope.*data\.root"):
        PoseVideoDataset(tmp_path / "nope")


def test_pose_frames_layout_tiktok(tmp_path):
    from PIL import Image

    clip = tmp_path / "tiktok" / "00001"
    for i in range(6):
        (clip / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)).save(clip / "images" / f"{i + 1:04d}.png")
        kp = np.stack([np.linspace(0.2, 0.8, 14), np.linspace(0.1, 0.9, 14)], -1)
        flat = np.concatenate([kp, np.ones((14, 1))], -1)
        data = {"people": [{"pose_keypoints_2d": np.concatenate([flat, np.zeros((4, 3))]).ravel().tolist()}]}
        (clip / "openpose_json").mkdir(exist_ok=True)
        (clip / "openpose_json" / f"{i + 1:04d}.json").write_text(json.dumps(data))
    (tmp_path / "tiktok" / "00002" / "images").mkdir(parents=True)  # no poses: skipped
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tiktok" / "00002" / "images" / "0001.png")
    ds = PoseVideoDataset(tmp_path / "tiktok", layout="frames", frames=3, size=16, keypoint_units="normalized")
    it = ds[0]
    s = int(it["start"])
    assert np.allclose(_grey(it["x"]), [30 * (s + i) for i in range(3)], atol=1)
    assert np.allclose(it["keypoints"][0].numpy(), kp, atol=1e-6)  # square frames: normalised coordinates kept
    with pytest.warns(RuntimeWarning, match="pose"):
        ds[1]
    assert ds.num_skipped == 1


@pytest.fixture(scope="module")
def hdtf_root(tmp_path_factory) -> Path:
    """Clip 'talk.mp4' (80 frames, a keyframe every 10): frame i has grey 3 i and, at 44.1 kHz, a 1 kHz tone
    of amplitude 0.02 (i % 20 + 1)."""
    root = tmp_path_factory.mktemp("hdtf")
    n, rate = 80, 44100
    spf = rate // 25
    t = np.arange(n * spf) / rate
    amp = 0.02 * (np.arange(n * spf) // spf % 20 + 1)
    tone = amp * np.sin(2 * np.pi * 1000 * t)
    _write_video(root / "talk.mp4", [3 * i for i in range(n)], audio=tone, audio_rate=rate, gop=10)
    _write_video(root / "mute.mp4", [50] * 8)  # no audio stream
    _write_video(root / "fast.mp4", [50] * 8, fps=30, audio=np.zeros(16000), audio_rate=16000)
    return root


def test_talking_head_reader_round_trip_and_alignment(hdtf_root):
    ds = TalkingHeadDataset(hdtf_root, frames=5, size=16, seed=0)
    assert [p.name for p in ds.files] == ["fast.mp4", "mute.mp4", "talk.mp4"]
    with pytest.warns(RuntimeWarning, match="skipping"):
        items = [ds[i] for i in range(3)]
    assert all(it["path"].endswith("talk.mp4") for it in items)  # the bad files gave the next valid clip
    starts = []
    for seed in range(6):  # clips all over the file: the audio is reached by seeking too
        it = TalkingHeadDataset(hdtf_root, frames=5, size=16, seed=seed)[2]
        s = int(it["start"])
        starts.append(s)
        assert it["x"].shape == (3, 5, 16, 16) and np.allclose(
            _grey(it["x"]), [3 * (s + i) for i in range(5)], atol=1.5
        )
        assert it["audio"].shape == (5 * 640,) and it["audio_features"].shape == (5, 40, 20)
        # Frame i of the clip owns the samples of source frame s + i: tone RMS 0.02 ((s + i) % 20 + 1) / sqrt 2
        frames = it["audio"].view(5, 640)[:, 160:480]  # the middle half of each frame (AAC smears the steps)
        rms = frames.pow(2).mean(1).sqrt().numpy()
        want = 0.02 * ((s + np.arange(5)) % 20 + 1) / np.sqrt(2)
        assert np.allclose(rms, want, rtol=0.05, atol=0.003), (s, rms, want)  # one frame off is >= 0.014
        assert int(it["reference_index"]) not in range(s, s + 5) and float(it["fps"]) == 25.0
    assert max(starts) > 40
    for bad in ("mute.mp4", "fast.mp4"):
        assert str(hdtf_root / bad) in ds.skipped
    assert "no audio stream" in ds.skip_reasons[str(hdtf_root / "mute.mp4")]
    assert "frame rate 30.000, expected 25" in ds.skip_reasons[str(hdtf_root / "fast.mp4")]


# -- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["puppets", "talking_faces"])
def test_world_configs_compose_with_the_root_config(name, compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        [f"data={name}", "data.train.n=8", "data.val.n=4", "data.batch_size=4", "data.frames=4", "data.size=16"]
    )
    dm = instantiate(cfg.data)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 3, 4, 16, 16) and batch["reference"].shape == (4, 3, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert set(val["identity"].tolist()) <= {3, 7, 11}  # validation uses the held-out identities
    if name == "puppets":
        assert batch["pose_map"].shape == (4, 3, 4, 16, 16) and batch["keypoints"].shape == (4, 4, K, 2)
        assert set(val["motion"].tolist()) <= {MOTIONS.index(m) for m in HELDOUT_MOTIONS}
    else:
        assert batch["audio_features"].shape == (4, 4, 40, 20) and batch["mouth_open"].shape == (4, 4)


def test_reader_configs_compose(compose_cfg, ubc_root, hdtf_root):
    from hydra.utils import instantiate

    with pytest.raises(Exception, match="root"):
        instantiate(compose_cfg(["data=pose_videos"]).data)
    over = [f"data.root={ubc_root}", "data.batch_size=1", "data.num_workers=0", "data.frames=2", "data.size=16"]
    dm = instantiate(compose_cfg(["data=pose_videos", *over]).data)
    assert isinstance(dm.train_set, PoseVideoDataset) and dm.train_set.train
    dm = instantiate(
        compose_cfg(["data=hdtf", f"data.root={hdtf_root}", "data.batch_size=1", "data.num_workers=0"]).data
    )
    assert isinstance(dm.train_set, TalkingHeadDataset) and dm.train_set.samples_per_frame == 640



def test_puppets_random_appearance_is_shared_by_clip_and_reference_and_new_per_item():
    """``random_appearance``: one fresh appearance per item (clip and reference alike, none of the fixed
    identities'), the same bodies, motions and poses as the fixed-appearance world."""
    kw = dict(n=12, frames=4, size=32, identity_split="all", motion_split="all")
    fixed, rand = Puppets(**kw), Puppets(**kw, random_appearance=True)
    fixed_shirts = [torch.from_numpy(b.shirt) * 2 - 1 for b in fixed.identities]
    shirts = []
    for i in range(len(rand)):
        a, b = fixed[i], rand[i]
        assert torch.equal(a["keypoints"], b["keypoints"]), f"item {i}: the pose changed"
        assert int(a["identity"]) == int(b["identity"]) and int(a["motion"]) == int(b["motion"])
        assert not torch.equal(a["x"], b["x"]) and not torch.equal(a["reference"], b["reference"])
        # a torso colour of the clip (an exact one: a fully covered pixel; blends do not repeat) is in the reference
        torso = b["x"][:, 0].permute(1, 2, 0)[b["part_mask"][0] == 2].unique(dim=0)
        ref = b["reference"].permute(1, 2, 0).reshape(-1, 3)
        shared = [c for c in torso if bool(((ref - c).abs().max(-1).values < 1e-5).any())]
        assert shared, f"item {i}: the reference wears other clothes"
        shirt = shared[0]
        assert all((shirt - f).abs().max() > 1e-3 for f in fixed_shirts), f"item {i}: a fixed identity's shirt"
        shirts.append(shirt)
    d = torch.cdist(torch.stack(shirts), torch.stack(shirts)) + 9 * torch.eye(len(shirts))
    assert d.min() > 1e-3                                       # no two items share a shirt colour
    again = Puppets(**kw, random_appearance=True)
    assert torch.equal(again[3]["x"], rand[3]["x"])            # a pure function of (seed, split, index)
    with pytest.raises(ValueError, match="random_appearance"):
        Puppets(n=2, random_appearance="yes")
