"""The control and dynamics worlds: styled shapes (Gen-1 / ControlNet video), oscillating scenes and real-video
spectral volumes (Generative Image Dynamics); ShapesVideo / MovingDigits items pinned bit for bit."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import item_digest
from torch.utils.data import DataLoader

from shared.data.oscillating_scenes import OBJECTS, OscillatingScenes
from shared.data.spectral import spectral_volume, trajectories
from shared.data.styled_shapes import STYLES, StyledShapes
from shared.data.video_worlds import DIRECTIONS4, MovingDigits, ShapesVideo, VideoFrames
from shared.nn.splatting import softmax_splat

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"




def test_existing_worlds_items_unchanged():
    """Digests of ShapesVideo / MovingDigits items computed before the frame-slicing hook was added."""
    assert [item_digest(ShapesVideo(n=8, seed=0)[i]) for i in (0, 5)] == ["5ae64709ca63512e", "49cd01583994c9bb"]
    assert item_digest(ShapesVideo(n=8, seed=3, frames_only=True)[1]) == "2843e919e3d48f75"
    assert item_digest(MovingDigits(n=8, seed=0)[2]) == "9c5dfd7cbc8bde6a"
    assert item_digest(MovingDigits(n=8, seed=0, frames_only=True)[2]) == "870d7226aeb5c674"


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 8 neighbours (and themselves) have one label: away from anti-aliased boundaries."""
    ok = torch.ones_like(mask, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ok &= torch.roll(mask, (dy, dx), (-2, -1)) == mask
    ok[..., 0, :] = ok[..., -1, :] = ok[..., :, 0] = ok[..., :, -1] = False
    return ok


def _sample(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img (C, H, W) read bilinearly at p + flow(p) (pixel centres at i + 0.5)."""
    H, W = img.shape[-2:]
    gy, gx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    grid = torch.stack([(gx + flow[0]) / W * 2 - 1, (gy + flow[1]) / H * 2 - 1], -1)[None]
    return F.grid_sample(img[None], grid, mode="bilinear", align_corners=False)[0]


# -- styled shapes ----------


def test_styled_shapes_keys_shapes_and_determinism():
    ds = StyledShapes(n=32, seed=0, camera=True)
    it = ds[4]
    T, S = 16, 32
    expect = {
        "x": (3, T, S, S), "mask": (T, S, S), "depth": (T, S, S), "edges": (T, S, S), "flow": (2, T, S, S),
        "camera": (T, 3), "camera_map": (6, T, S, S), "shape": (2,), "color": (2,), "direction": (2,),
        "shape_depth": (2,), "world_radius": (2,), "speed": (2,), "positions": (T, 2, 2), "radii": (T, 2),
        "style": (), "camera_pan": (), "camera_zoom": (),
    }  # fmt: skip
    for k, shape in expect.items():
        assert tuple(it[k].shape) == shape, k
    assert it["x"].dtype == torch.float32 and it["x"].min() >= -1 and it["x"].max() <= 1
    assert it["mask"].dtype == torch.long and it["style"].dtype == torch.long
    assert set(it["edges"].unique().tolist()) <= {0.0, 1.0}
    assert item_digest(it) == item_digest(StyledShapes(n=32, seed=0, camera=True)[4])
    assert not torch.equal(it["x"], StyledShapes(n=32, seed=1, camera=True)[4]["x"])
    assert {int(ds[i]["style"]) for i in range(32)} == set(range(len(STYLES)))  # styles drawn per item
    fixed = StyledShapes(n=8, style="neon")
    assert all(fixed[i]["style_name"] == "neon" for i in range(8))
    with pytest.raises(ValueError, match="unknown styles"):
        StyledShapes(styles=("flat", "velvet"))
    with pytest.raises(ValueError, match="not one of"):
        StyledShapes(styles=("flat", "mono"), style="neon")


def test_styled_shapes_splits_are_disjoint():
    digests = {
        split: {hashlib.sha1(StyledShapes(n=64, split=split)[i]["x"].numpy().tobytes()).hexdigest() for i in range(64)}
        for split in ("train", "val", "test")
    }
    assert all(len(d) == 64 for d in digests.values())
    assert not (digests["train"] & digests["val"]) and not (digests["train"] & digests["test"])
    assert not (digests["val"] & digests["test"])


def test_same_structure_in_every_style():
    ds = StyledShapes(n=6, seed=2, camera=True, with_styles=True)
    for i in range(6):
        item = ds[i]
        renders = [ds.render(i, style=s) for s in ds.styles]
        for r in renders:
            for k in ("mask", "depth", "edges", "flow", "camera", "camera_map", "positions", "radii", "shape_depth"):
                assert torch.equal(r[k], item[k]), k
            assert r["structure_caption"] == item["structure_caption"]
        assert torch.equal(item["x_styles"][int(item["style"])], item["x"])
        for s, r in enumerate(renders):
            assert torch.equal(item["x_styles"][s], r["x"]) and r["style_name"] == ds.styles[s]
        for a in range(len(renders)):
            for b in range(a + 1, len(renders)):
                assert (renders[a]["x"] - renders[b]["x"]).abs().mean() > 0.05, (ds.styles[a], ds.styles[b])
    with pytest.raises(IndexError):
        ds.render(6)


def test_captions_name_palette_colours_style_and_camera():
    ds = StyledShapes(n=10, seed=4, camera=True)
    for i in range(10):
        it = ds[i]
        style = STYLES[it["style_name"]]
        parts, rest = it["caption"].split(", ", 1)
        assert rest.startswith(f"{it['style_name']} style, camera panning {DIRECTIONS4[int(it['camera_pan'])]}")
        assert rest.endswith(("in", "out")[int(it["camera_zoom"])])
        for k, part in enumerate(parts.split(" and ")):
            colour = style.palette[int(it["color"][k])][0]
            assert part == f"a {colour} {ds.SHAPES[int(it['shape'][k])]} moving {DIRECTIONS4[int(it['direction'][k])]}"
        names = {c for st in STYLES.values() for c, _ in st.palette}
        assert not any(f" {c} " in it["structure_caption"] for c in names)
    plain = StyledShapes(n=2)[0]
    assert "camera" not in plain["caption"] and "camera_pan" not in plain


def test_edges_are_the_instance_and_depth_discontinuities():
    ds = StyledShapes(n=12, seed=3, num_shapes=3, camera=True)
    for i in range(12):
        it = ds[i]
        m, d, e = it["mask"], it["depth"], it["edges"].bool()
        diff = torch.zeros_like(e)
        for dim in (1, 2):
            n = m.size(dim)
            h = m.narrow(dim, 1, n - 1) != m.narrow(dim, 0, n - 1)
            diff.narrow(dim, 1, n - 1).logical_or_(h)
            diff.narrow(dim, 0, n - 1).logical_or_(h)
            jump = d.narrow(dim, 1, n - 1) != d.narrow(dim, 0, n - 1)
            # depth changes between neighbours exactly where the instance changes, and both sides are edges
            assert torch.equal(jump, h)
            assert torch.all(e.narrow(dim, 1, n - 1)[jump]) and torch.all(e.narrow(dim, 0, n - 1)[jump])
        assert torch.equal(diff, e)
        assert e.any()


@pytest.mark.parametrize("camera", [False, True])
@pytest.mark.parametrize("style", ["earth", "mono", "pastel"])
def test_flow_moves_frame_t_onto_frame_t_plus_1(camera, style):
    """x_{t+1}(p + flow_t(p)) = x_t(p) on pixels away from boundaries; a half-pixel error in the flow fails."""
    ds = StyledShapes(n=8, seed=1, camera=camera, style=style)
    errs, wrong = [], []
    for i in range(8):
        it = ds[i]
        x, fl, m = it["x"], it["flow"], it["mask"]
        for t in range(ds.frames - 1):
            ok = _interior(m[t])
            # the 2x2 bilinear footprint at t+1 must lie in the interior of the same instance
            H = W = ds.size
            gy, gx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
            x0 = (gx + fl[0, t] - 0.5).floor().long()
            y0 = (gy + fl[1, t] - 0.5).floor().long()
            ok &= (x0 >= 0) & (y0 >= 0) & (x0 < W - 1) & (y0 < H - 1)
            inner1 = _interior(m[t + 1])
            for dy in (0, 1):
                for dx in (0, 1):
                    yy, xx = (y0 + dy).clamp(0, H - 1), (x0 + dx).clamp(0, W - 1)
                    ok &= (m[t + 1][yy, xx] == m[t]) & inner1[yy, xx]
            errs.append((_sample(x[:, t + 1], fl[:, t]) - x[:, t]).abs().amax(0)[ok])
            shifted = fl[:, t] + torch.tensor([0.5, 0.0])[:, None, None]
            wrong.append((_sample(x[:, t + 1], shifted) - x[:, t]).abs().amax(0)[ok])
    err, bad = torch.cat(errs), torch.cat(wrong)
    assert err.numel() > 1000
    assert err.mean() < 0.02 and err.quantile(0.99) < 0.15, (err.mean(), err.quantile(0.99))
    assert bad.mean() > 3 * err.mean()


def test_softmax_splat_with_depth_importance_renders_next_frame():
    """Forward-warping frame t by its flow (nearer surfaces win) reproduces frame t+1 where it lands cleanly."""
    ds = StyledShapes(n=6, seed=5, camera=True, style="earth", num_shapes=3)
    errs, still = [], []
    for i in range(6):
        it = ds[i]
        x, fl, d = it["x"], it["flow"], it["depth"]
        for t in range(ds.frames - 1):
            out, w = softmax_splat(x[None, :, t], fl[None, :, t], -50.0 * d[None, None, t], return_weight=True)
            ok = _interior(it["mask"][t + 1]) & (w[0, 0] > 0.5)
            errs.append((out[0] - x[:, t + 1]).abs().amax(0)[ok])
            still.append((x[:, t] - x[:, t + 1]).abs().amax(0)[ok])
    err, base = torch.cat(errs), torch.cat(still)
    assert err.mean() < 0.03 and err.mean() < 0.3 * base.mean(), (err.mean(), base.mean())


def test_camera_parallax_and_pluecker_maps():
    S = 32
    static = StyledShapes(n=4, seed=0)[0]
    assert torch.all(static["camera"] == torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(static["camera_map"], static["camera_map"][:, :1].expand_as(static["camera_map"]))
    # A pan with still shapes and no zoom: every surface moves by -S * dc / depth (parallax).
    ds = StyledShapes(n=6, seed=0, camera=True, speed=(0.0, 0.0), zoom=(0.0, 0.0))
    for i in range(6):
        it = ds[i]
        cam = it["camera"].double()
        dc = cam[1, :2] - cam[0, :2]
        assert torch.allclose(cam[:, 2], torch.ones(ds.frames, dtype=torch.float64))
        expect = -S * dc[:, None, None, None] / it["depth"].double()
        assert torch.allclose(it["flow"].double(), expect, atol=1e-4)
        assert {int(v) for v in it["mask"].unique()} - {0}  # shapes visible
        # the shapes' centres follow the same law
        pos = it["positions"].double()  # (T, K, 2) (row, col)
        step = pos[1] - pos[0]
        assert torch.allclose(step, (-S * dc.flip(0))[None] / it["shape_depth"].double()[:, None], atol=1e-4)
    # Plücker rays: unit directions, moments o x d orthogonal to them, and background points lie on their rays.
    it = StyledShapes(n=3, seed=1, camera=True)[2]
    d, mom = it["camera_map"][:3].double(), it["camera_map"][3:].double()
    assert torch.allclose(d.norm(dim=0), torch.ones(()).double(), atol=1e-6)
    assert (d * mom).sum(0).abs().max() < 1e-6
    o = torch.zeros(3, it["camera"].shape[0], 1, 1, dtype=torch.float64)
    o[:2] = it["camera"][:, :2].double().T[:, :, None, None]
    P = o + it["depth"].double()[None] / d[2:3] * d  # the visible world point of every pixel
    assert torch.allclose(torch.linalg.cross(P, d, dim=0), mom, atol=1e-5)
    # ...and project back to their pixels with the camera of that frame.
    f = it["camera"][:, 2].double()[:, None, None]
    col = S / 2 + f * S * (P[0] - o[0]) / P[2]
    assert torch.allclose(col, (torch.arange(S) + 0.5).double().expand_as(col), atol=1e-4)


def test_depth_is_readable_from_apparent_size():
    """Structure is recoverable: the apparent radius is S R / Z, so the size of a shape's silhouette gives its
    depth to within the spread of the world radii (+-12.5 % around the middle of the range)."""
    ds = StyledShapes(n=40, seed=6, num_shapes=1, style="mono")
    R_mid = sum(ds.world_radius) / 2
    rel = []
    for i in range(ds.n):
        it = ds[i]
        area = float((it["mask"][0] > 0).sum())  # nothing occludes a single shape
        kind = int(it["shape"][0])
        unit_area = (math.pi, 0.886**2 * 4, 3 * math.sqrt(3) / 4 * 1.3**2)[kind]  # area / r^2 of each shape
        r_hat = math.sqrt(area / unit_area)
        z_hat = ds.size * R_mid / r_hat
        rel.append(abs(z_hat - float(it["shape_depth"][0])) / float(it["shape_depth"][0]))
    rel = torch.tensor(rel)
    assert rel.median() < 0.12 and rel.max() < 0.3, rel


def test_styles_are_separable_at_16px_even_from_the_shapes_alone():
    """A nearest-centroid classifier on the colour histogram of the shapes' pixels of one frame (background
    excluded) recognises the style of held-out (val) videos at 16 px. The CNN probe with full numbers is
    tests/bench/styled_shapes_probe.py."""

    def feats(it, b=4):
        m = it["mask"][0] > 0
        q = ((it["x"][:, 0][:, m] + 1) / 2 * b).clamp(0, b - 1e-6).long()
        return torch.bincount(q[0] * b * b + q[1] * b + q[2], minlength=b**3).float() / q.shape[1]

    tr = StyledShapes(n=180, size=16, frames=1, split="train")
    va = StyledShapes(n=90, size=16, frames=1, split="val")
    Xtr = torch.stack([feats(tr[i]) for i in range(tr.n)]).sqrt()
    ytr = torch.stack([tr[i]["style"] for i in range(tr.n)])
    Xva = torch.stack([feats(va[i]) for i in range(va.n)]).sqrt()
    yva = torch.stack([va[i]["style"] for i in range(va.n)])
    centroids = torch.stack([Xtr[ytr == s].mean(0) for s in range(len(tr.styles))])
    acc = (torch.cdist(Xva, centroids).argmin(1) == yva).float().mean()
    assert acc >= 0.95, acc


def test_styled_frames_only_slices_every_per_frame_key():
    ds = StyledShapes(n=6, seed=0, frames_only=True, with_styles=True, camera=True)
    f = ds[2]
    video = StyledShapes(n=6, seed=0, with_styles=True, camera=True)[2]
    t = int(f["frame_index"])
    assert f["x"].shape == (3, 32, 32) and "moving" not in f["caption"] and f["caption"].endswith("style")
    sliced = {
        "flow": video["flow"][:, t],
        "camera_map": video["camera_map"][:, t],
        "x_styles": video["x_styles"][:, :, t],
        "mask": video["mask"][t],
        "camera": video["camera"][t],
    }
    for k, v in sliced.items():
        assert torch.equal(f[k], v), k
    w = VideoFrames(StyledShapes(n=6, seed=0), seed=1)[3]
    assert w["flow"].shape == (2, 32, 32) and w["camera_map"].shape == (6, 32, 32)
    batch = next(iter(DataLoader(StyledShapes(n=8, camera=True), batch_size=4)))
    assert batch["x"].shape == (4, 3, 16, 32, 32) and batch["flow"].shape == (4, 2, 16, 32, 32)
    assert len(batch["caption"]) == 4 and batch["style"].shape == (4,)


def test_styled_shapes_speed():
    ds = StyledShapes(n=64, seed=0, camera=True)
    ds[0]
    t0 = time.perf_counter()
    for i in range(64):
        ds[i]
    per_item_ms = (time.perf_counter() - t0) / 64 * 1e3
    assert per_item_ms < 40, f"{per_item_ms:.1f} ms per 16x32x32 item"  # ~2 ms on a free core; margin for load


# -- oscillating scenes ----------


def test_oscillating_scene_keys_and_ground_truth_identities():
    ds = OscillatingScenes(n=8, frames=48, num_freqs=12, seed=0)
    it = ds[1]
    T, S, N, M = 48, 32, 3, 2
    expect = {
        "x": (3, T, S, S), "still": (3, S, S), "displacement": (2, T, S, S), "spectral_volume": (12, 4, S, S),
        "mask": (S, S), "object_type": (N,), "frequency": (N, M), "damping": (N, M), "amplitude": (N,),
        "wind_frequency": (3,), "loop": (),
    }  # fmt: skip
    for k, shape in expect.items():
        assert tuple(it[k].shape) == shape, k
    assert it["x"].min() >= -1 and it["x"].max() <= 1
    assert torch.equal(it["still"], it["x"][:, 0])
    assert it["displacement"][:, 0].abs().max() < 1e-4  # the still's pixels are where they are
    assert torch.all(it["displacement"][:, :, it["mask"] == 0] == 0)  # the background does not move
    assert it["displacement"].abs().max() > 0.3
    assert torch.allclose(it["spectral_volume"], spectral_volume(it["displacement"].double(), 12).float(), atol=1e-5)
    assert it["caption"].endswith("swaying in the wind")
    assert item_digest(it) == item_digest(OscillatingScenes(n=8, frames=48, num_freqs=12, seed=0)[1])
    assert not torch.equal(it["x"], OscillatingScenes(n=8, frames=48, num_freqs=12, seed=0, split="val")[1]["x"])
    # The first frames do not depend on the clip length (the motion is a function of time, not of T).
    short = OscillatingScenes(n=8, frames=16, num_freqs=4, seed=0)[1]
    assert torch.allclose(short["x"], it["x"][:, :16], atol=1e-6)
    with pytest.raises(ValueError, match="num_freqs must lie in"):
        OscillatingScenes(frames=16, num_freqs=16)
    with pytest.raises(ValueError, match="unknown object types"):
        OscillatingScenes(object_types=("tree",))


def test_oscillating_splits_are_disjoint():
    digests = {}
    for split in ("train", "val", "test"):
        ds = OscillatingScenes(n=48, frames=2, num_freqs=1, split=split)
        digests[split] = {hashlib.sha1(ds[i]["still"].numpy().tobytes()).hexdigest() for i in range(48)}
    assert all(len(d) == 48 for d in digests.values())
    assert not (
        digests["train"] & digests["val"] or digests["train"] & digests["test"] or digests["val"] & digests["test"]
    )


def test_zero_motion_renders_the_still():
    ds = OscillatingScenes(n=4, frames=24, num_freqs=4, amplitude=(0.0, 0.0), angle=(0.0, 0.0))
    for i in range(4):
        it = ds[i]
        assert torch.equal(it["x"], it["still"][:, None].expand_as(it["x"]))
        assert torch.all(it["displacement"] == 0) and torch.all(it["spectral_volume"] == 0)


@pytest.mark.parametrize("kind", OBJECTS)
def test_displacement_carries_the_still_onto_every_frame(kind):
    """x_t(p + displacement_t(p)) = still(p) inside every object; a half-pixel error in the motion fails."""
    ds = OscillatingScenes(n=10, frames=48, num_freqs=8, object_types=(kind,), num_objects=1, seed=0)
    errs, wrong = [], []
    for i in range(ds.n):
        it = ds[i]
        ok = _interior(it["mask"]) & (it["mask"] > 0)
        for t in range(0, ds.frames, 4):
            d = it["displacement"][:, t]
            errs.append((_sample(it["x"][:, t], d) - it["still"]).abs().amax(0)[ok])
            off = d + torch.tensor([0.5, 0.5])[:, None, None]
            wrong.append((_sample(it["x"][:, t], off) - it["still"]).abs().amax(0)[ok])
    err, bad = torch.cat(errs), torch.cat(wrong)
    assert err.numel() > 200 and err.mean() < 0.03, err.mean()
    assert bad.mean() > 2 * err.mean(), (err.mean(), bad.mean())


def test_splatting_the_still_along_the_motion_renders_the_frames():
    ds = OscillatingScenes(n=8, frames=40, num_freqs=8, seed=3)
    errs, base = [], []
    for i in range(ds.n):
        it = ds[i]
        from shared.data.spectral import motion_importance

        z = 20.0 * motion_importance(it["displacement"])[None]
        for t in range(5, ds.frames, 5):
            out, w = softmax_splat(it["still"][None], it["displacement"][None, :, t], z, return_weight=True)
            # where object pixels land (their rounded targets) and the splat is well covered
            m = _interior(it["mask"]) & (it["mask"] > 0)
            d = it["displacement"][:, t]
            ty = (torch.arange(32)[:, None] + 0.5 + d[1] - 0.5).round().long().clamp(0, 31)
            tx = (torch.arange(32)[None, :] + 0.5 + d[0] - 0.5).round().long().clamp(0, 31)
            sel = m & (w[0, 0][ty, tx] > 0.5)
            errs.append((out[0][:, ty[sel], tx[sel]] - it["x"][:, t][:, ty[sel], tx[sel]]).abs().amax(0))
            base.append((it["still"][:, ty[sel], tx[sel]] - it["x"][:, t][:, ty[sel], tx[sel]]).abs().amax(0))
    err, no_warp = torch.cat(errs), torch.cat(base)
    assert err.mean() < 0.6 * no_warp.mean(), (err.mean(), no_warp.mean())


def test_loops_and_spectral_volume_render_any_horizon():
    T = 64
    ds = OscillatingScenes(n=4, frames=T, num_freqs=T // 2 + 1, loop=True, object_types=("stem", "flag"), seed=1)
    for i in range(ds.n):
        r = ds.render(i, [0.0, 9.5, float(T), T + 9.5])
        assert torch.allclose(r["x"][:, 0], r["x"][:, 2], atol=1e-5) and torch.allclose(
            r["x"][:, 1], r["x"][:, 3], atol=1e-5
        )
        assert r["displacement"][:, 2].abs().max() < 1e-4  # back where the still is
        it = ds[i]
        assert it["loop"] and it["displacement"].abs().max() > 0.3
        # All bins of a periodic motion: the spectral volume plays it back beyond T, at any speed.
        times = torch.tensor([3.0, T + 3.0, 2 * T + 17.25], dtype=torch.float64)
        back = trajectories(it["spectral_volume"].double(), T, times)
        ref = ds.render(i, times.numpy())["displacement"].double()
        assert torch.allclose(back, ref, atol=2e-3), (back - ref).abs().max()


def test_single_mode_single_wind_is_one_frequency_bin():
    """One stem, one mode, one wind sinusoid of m whole cycles per clip, no free oscillation: the horizontal
    motion is a pure sinusoid, so its spectral volume is bin m (and the tip's dip, quadratic, puts y in 0 and 2m)."""
    T = 64
    ds = OscillatingScenes(n=6, frames=T, num_freqs=16, object_types=("stem",), num_objects=1, num_modes=1,
                           wind_components=1, wind_frequency=(3 / T, 3 / T), loop=True, seed=0)  # fmt: skip
    for i in range(ds.n):
        it = ds[i]
        sv = it["spectral_volume"].double()
        assert math.isclose(float(it["wind_frequency"][0]), 3 / T, rel_tol=1e-6)
        moving = it["mask"] > 0
        mag_x = torch.sqrt(sv[:, 0] ** 2 + sv[:, 1] ** 2)[:, moving]  # (K, pixels)
        energy = (mag_x**2).sum(1)
        # (bin 0 holds -dx_0: displacements are relative to the still, which is the t = 0 pose)
        assert energy[3] > 0.999 * energy[1:].sum()
        mag_y = torch.sqrt(sv[:, 2] ** 2 + sv[:, 3] ** 2)[:, moving]
        ey = (mag_y**2).sum(1)
        assert ey[[0, 6]].sum() > 0.999 * ey.sum()


def test_oscillating_frames_only_and_datamodule_batches():
    f = OscillatingScenes(n=4, frames=20, num_freqs=4, frames_only=True)[1]
    v = OscillatingScenes(n=4, frames=20, num_freqs=4)[1]
    t = int(f["frame_index"])
    assert f["x"].shape == (3, 32, 32) and torch.equal(f["displacement"], v["displacement"][:, t])
    assert "swaying" not in f["caption"]
    batch = next(iter(DataLoader(OscillatingScenes(n=4, frames=20, num_freqs=4), batch_size=2)))
    assert batch["spectral_volume"].shape == (2, 4, 4, 32, 32) and batch["still"].shape == (2, 3, 32, 32)


def test_oscillating_speed():
    ds = OscillatingScenes(n=16, frames=256, num_freqs=16, seed=0)
    ds[0]
    t0 = time.perf_counter()
    for i in range(16):
        ds[i]
    per_item = (time.perf_counter() - t0) / 16
    assert per_item < 0.5, f"{per_item:.3f} s per 256-frame item"  # ~0.03 s on a free core


# -- configs ----------


def _instantiate(name: str, **overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    return instantiate(cfg)


def test_world_configs_instantiate():
    dm = _instantiate("styled_shapes", **{"train.n": 8, "val.n": 4, "batch_size": 4, "train.camera": True})
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 3, 16, 32, 32) and dm.val_set.camera and dm.val_set.split == "val"
    assert batch["camera_map"].shape == (4, 6, 16, 32, 32)
    dm = _instantiate("oscillating_scenes", **{"train.n": 4, "val.n": 2, "batch_size": 2, "frames": 40})
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 3, 40, 32, 32) and batch["spectral_volume"].shape == (2, 16, 4, 32, 32)
    assert dm.val_set.num_freqs == 16 and dm.val_set.split == "val"


# -- real videos: RAFT flow from a local file ----------


def _moving_video(path: Path, frames: int = 6, size: int = 64, shift: int = 2):
    """A smooth random texture translating `shift` px to the right per frame."""
    import av

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, size=(size // 8, (size + shift * frames) // 8 + 2, 3))
    big = np.kron(base, np.ones((8, 8, 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=8)
        s.height, s.width, s.pix_fmt, s.options = size, size, "yuv420p", {"crf": "0"}
        for t in range(frames):
            x0 = shift * (frames - t)
            img = np.ascontiguousarray(big[:, x0 : x0 + size].astype(np.uint8))
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def raft_files(tmp_path_factory):
    from torchvision.models.optical_flow import raft_small

    root = tmp_path_factory.mktemp("osc")
    _moving_video(root / "videos" / "a" / "clip0.mp4")
    _moving_video(root / "videos" / "clip1.mp4", shift=1)
    torch.manual_seed(0)
    net = raft_small(weights=None)
    torch.save(net.state_dict(), root / "raft_small.pth")
    return root, net


def test_real_video_spectral_volumes_with_local_raft(raft_files, tmp_path):
    from shared.data.spectral_videos import OscillationVideoFolder, RaftFlow

    root, net = raft_files
    ds = OscillationVideoFolder(
        root / "videos", root / "raft_small.pth", frames=4, size=64, num_freqs=3, num_flow_updates=2,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert len(ds) == 2 and ds.files[0].name == "clip1.mp4"  # files before sub-folders, natural order
    it = ds[1]
    assert it["x"].shape == (3, 4, 64, 64) and torch.equal(it["still"], it["x"][:, 0])
    assert it["displacement"].shape == (2, 4, 64, 64) and torch.all(it["displacement"][:, 0] == 0)
    assert it["spectral_volume"].shape == (3, 4, 64, 64)
    assert torch.allclose(it["spectral_volume"], spectral_volume(it["displacement"], 3))
    # The flow is RAFT's on the (upsampled) frames with the weights from the file, pooled back to 64 px.
    flow = RaftFlow(root / "raft_small.pth", num_flow_updates=2)
    a, b = it["x"][:, 0][None], it["x"][:, 2][None]
    with torch.no_grad():
        up = lambda v: F.interpolate(v, scale_factor=2, mode="bilinear", align_corners=False)
        ref = F.avg_pool2d(net.eval()(up(a), up(b), num_flow_updates=2)[-1], 2) / 2
    assert torch.allclose(flow(a, b), ref, atol=1e-5)
    assert torch.allclose(it["displacement"][:, 2], ref[0], atol=1e-4)
    # Cached: one file per clip, read back identically.
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert torch.equal(ds[1]["displacement"], it["displacement"])


def test_real_video_errors_are_one_line(raft_files, tmp_path):
    from shared.data.spectral_videos import OscillationVideoFolder

    root, _ = raft_files
    with pytest.raises(FileNotFoundError, match=r"RAFT weights not found: .*data.train.raft_weights") as e:
        OscillationVideoFolder(
            root / "videos", tmp_path / "none.pth", frames=4, num_freqs=3, weights_key="data.train.raft_weights"
        )
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision raft_small state dict: missing") as e:
        OscillationVideoFolder(root / "videos", bad, frames=4, num_freqs=3)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="data.root"):
        OscillationVideoFolder(tmp_path / "missing", root / "raft_small.pth", frames=4, num_freqs=3)
    with pytest.raises(Exception, match="raft_weights|MISSING|Missing"):
        _instantiate("oscillation_videos", root=str(root / "videos"))
