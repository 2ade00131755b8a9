"""Generative Image Dynamics claim checks (issue #22) on the OscillatingScenes world (32x32, 150 frames, K = 16).

Every claim shares the same pieces, trained per seed and cached across claims (a stage whose recipe, seed and
source code hash to a stored file is loaded, not re-trained; ``reused_stages`` in results.json says so):

* the *motion model* (Sec. 4.2): a diffusion model of the spectral volume of a still, at 16x16 volume resolution
  (``SpectralScenes``), through ``SpectralCodec`` (normalisation; no VAE at this scale), with ``StillUNet``;
* the *renderer* (Sec. 5): trained on (still, motion to frame t, frame t) of the world's clips, the motion passed
  through the same 16x16 bottleneck the motion model's volumes have;
* the *judge*: the committed oscillating-scenes video judge (`shared.metrics.oscillation_judge`), whose
  FVD_judge separates real clips from frame-shuffled ones (its JSON record).

Test protocol (``claim``): ``test_n`` held-out scenes (``split=test``, ``test_seed``): their stills are animated
by each model — one volume per still, the same initial noise for every variant of a seed — rendered over
``video_frames`` frames (frame 0 = the still) and compared with the scenes' real clips. Metrics:

* ``spectrum_log_error`` — the error of the generated volumes' energy in the K low frequencies:
  ``mean_k |log10 E_gen(k) - log10 E_real(k)|``, ``E(k)`` the mean squared modulus of band ``k`` over pixels and
  test scenes (real = the scenes' own volumes at the same resolution); ``spectrum_log_error_high`` the same over
  the upper half of the bands;
* ``fd_spectrum`` — the Fréchet distance between per-scene log band-energy vectors (K numbers: how a scene's
  motion energy spreads over the bands) of generated and real volumes: the *joint* structure across bands that
  independent per-band sampling cannot get right even with correct marginals;
* ``fvd_judge`` — FVD_judge of the rendered videos against the real clips; ``fvd_judge_real_floor`` two disjoint
  real sets, ``fvd_judge_gt_volume`` the real volumes rendered by the same renderer (renderer + truncation floor);
* looping (Sec. 6): ``loop_seam_px`` the mean displacement |F_N| the motion texture would continue to after the
  last frame (0: the loop returns to the still), ``first_last_distance`` mean |I_{N-1} - I_0| of the rendered
  clip, ``seam_distance`` mean |I_N - I_0| (the frame after the last vs the first);
* long horizon: ``fvd_judge`` over all ``video_frames`` frames, ``fvd_judge_early`` / ``fvd_judge_late`` over the
  first and last ``window`` frames, and ``drift`` = mean |mean_{late window} x - mean_{early window} x| (pixels
  in [-1, 1]; objects that oscillate about their rest pose keep it near the real clips' value, content that
  wanders or fades raises it), ``drift_excess`` = drift - real drift.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from papers.generative_image_dynamics.codec import to_video_layout
from papers.generative_image_dynamics.data import box_resize
from papers.generative_image_dynamics.module import loop_loss, modal_response, motion_texture, render_video
from papers.generative_image_dynamics.nets import Renderer
from shared.data.spectral import SpectralNormalizer
from shared.engine.claims import finish, fit_variant, note_reused, seed_job_config, summarise, variant_config
from shared.engine.parallel import map_jobs
from shared.engine.teachers import teacher_key
from shared.engine.video_io import video_grid_frames
from shared.methods.registry import module_from_checkpoint
from shared.metrics.frechet import fd_from_features
from shared.metrics.oscillation_judge import DEFAULT_OSCILLATION_JUDGE_PATH, OscillationJudge, load_oscillation_judge
from shared.metrics.video_judge import fvd_judge, judge_sha256

log = logging.getLogger(__name__)
PAPER = "generative_image_dynamics"


# ---------------------------------------------------------------------------------------------------- stages
def _save(module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": module.state_dict(), "run_config": module.run_config}, tmp)
    tmp.replace(path)


def stage(cfg: DictConfig, kind: str, name: str, overrides: dict, seed: int, times: dict):
    """Train (``fit_variant``, into ``<run>/<name>_seed<seed>``) or load from the stage cache the module of ``cfg`` +
    ``overrides`` for ``seed``, its training seconds in ``times[name]`` (0 when loaded): the cache file is named by
    ``kind`` and the hash of the stage's model/module/data config, steps, seed and source
    (`shared.engine.teachers.teacher_key`), so claims whose stages agree share them."""
    tag = f"{name}_seed{seed}"
    sub = variant_config(cfg, overrides, seed)
    smoke = bool(cfg.trainer.get("fast_dev_run"))
    cache = None
    if cfg.claim.get("stage_cache", True) and not smoke:
        cache = Path(cfg.paths.output_dir) / "gid_cache" / "stages" / f"{kind}_{teacher_key(sub, seed)}.ckpt"
        if cache.is_file():
            note_reused(f"stage:{tag}")
            times[name] = 0.0
            return module_from_checkpoint(cache)
    t0 = time.time()
    module = fit_variant(cfg, tag, overrides, seed)
    times[name] = round(time.time() - t0, 1)
    if cache is not None:
        _save(module, cache)
    return module


def renderer_stage(cfg: DictConfig, seed: int, times: dict):
    """The renderer network (eval mode) of ``seed``."""
    return stage(cfg, "renderer", "renderer", renderer_overrides(cfg), seed, times).net.eval()


def motion_stage(cfg: DictConfig, name: str, variant: dict, seed: int, times: dict):
    """The motion model of variant ``name`` (its config overrides ``variant``) for ``seed``."""
    return stage(cfg, "motion", f"motion_{name}", motion_overrides(cfg, variant), seed, times)


def normaliser_scales(cfg: DictConfig, per_frequency: bool, power: float) -> list[float]:
    """The normaliser's K scales fitted on the whole motion training set (``SpectralScenes``)."""
    ds = instantiate(cfg.data.train)
    codec = cfg.module.latent.autoencoder
    norm = SpectralNormalizer(int(codec.num_freqs), per_frequency, power, float(codec.percentile))
    return [float(v) for v in norm.fit(ds.volumes()).scale]


def motion_overrides(cfg: DictConfig, variant: dict) -> dict:
    """Module overrides of a motion-model variant, with the normaliser scales fitted for it."""
    ov = {**{k: v for k, v in variant.items()}, "trainer.max_steps": int(cfg.claim.motion_steps)}
    probe = variant_config(cfg, variant)
    codec = probe.module.latent.autoencoder
    ov["module.latent.autoencoder.scale"] = normaliser_scales(probe, bool(codec.per_frequency), float(codec.power))
    ov["module.latent.autoencoder.fit_on_first_batch"] = False
    return ov


def renderer_overrides(cfg: DictConfig) -> dict:
    r = cfg.claim.renderer
    world = OmegaConf.to_container(cfg.data.train.world, resolve=True)
    world["n"] = int(r.scenes)
    data = {"_target_": "papers.generative_image_dynamics.data.RenderPairs", "world": world,
            "frames_per_scene": int(r.frames_per_scene), "motion_size": int(cfg.data.train.volume_size),
            "seed": 0, "cache_dir": cfg.data.train.cache_dir}
    return {"module": OmegaConf.to_container(r.module, resolve=True), "model": None, "data.train": data,
            "data.batch_size": int(r.batch_size), "trainer.max_steps": int(r.steps)}


# ---------------------------------------------------------------------------------------------------- data
def test_scenes(cfg: DictConfig, n: int, seed: int) -> dict:
    """Held-out scenes: stills, real clips, real volumes (at the model's resolution, video layout), masks."""
    spec = OmegaConf.to_container(cfg.data.train.world, resolve=True)
    target = spec.pop("_target_")
    spec.update(n=int(n), seed=int(seed), split="test")
    from hydra.utils import get_class

    world = get_class(target)(**spec)
    items = [world[i] for i in range(int(n))]
    v = int(cfg.data.train.volume_size)
    return {"still": torch.stack([it["still"] for it in items]), "x": torch.stack([it["x"] for it in items]),
            "volume": torch.stack([to_video_layout(box_resize(it["spectral_volume"], v)) for it in items]),
            "mask": torch.stack([it["mask"] for it in items])}


# ---------------------------------------------------------------------------------------------------- metrics
def band_energy(volumes: torch.Tensor) -> torch.Tensor:
    """Per-scene energy of each band ``(N, K)``: mean over pixels of |S_k^x|^2 + |S_k^y|^2 (video layout in)."""
    return volumes.double().pow(2).sum(dim=1).mean(dim=(-2, -1))


def spectrum_log_error(gen: torch.Tensor, real: torch.Tensor, bands=None) -> float:
    eg, er = band_energy(gen).mean(0), band_energy(real).mean(0)
    err = (eg.clamp_min(1e-12).log10() - er.clamp_min(1e-12).log10()).abs()
    return float(err.mean() if bands is None else err[bands].mean())


def fd_spectrum(gen: torch.Tensor, real: torch.Tensor) -> float:
    lg = band_energy(gen).clamp_min(1e-10).log10()
    lr = band_energy(real).clamp_min(1e-10).log10()
    return fd_from_features(lg, lr)


def drift(videos: torch.Tensor, window: int) -> float:
    early = videos[:, :, :window].mean(dim=2)
    late = videos[:, :, -window:].mean(dim=2)
    return float((late - early).abs().mean())


def loop_metrics(renderer, still: torch.Tensor, volumes: torch.Tensor, period: int, frames: int) -> dict:
    """Seam metrics of clips of ``frames`` frames (module docstring)."""
    S = still.shape[-1]
    seam = motion_texture(volumes, period, [frames], size=S)  # (B, 2, 1, S, S)
    video = render_video(renderer, still, volumes, period, frames)
    after = render_video(renderer, still, None, period, 2, motion=torch.cat([torch.zeros_like(seam), seam], 2))
    return {"loop_seam_px": float(seam.norm(dim=1).mean()),
            "loop_loss": float(loop_loss(volumes, period, frames).mean()),
            "first_last_distance": float((video[:, :, -1] - video[:, :, 0]).abs().mean()),
            "seam_distance": float((after[:, :, 1] - still).abs().mean()),
            "step_distance": float((video[:, :, 1:] - video[:, :, :-1]).abs().mean())}


# ---------------------------------------------------------------------------------------------------- per seed
def variants(c, key: str = "variants") -> dict[str, dict]:
    """``claim.<key>`` (a list of ``{name, overrides}``) as ``{name: overrides}``."""
    return {str(v["name"]): dict(OmegaConf.to_container(v, resolve=True).get("overrides") or {}) for v in c[key]}


def _judge(c):
    """The committed oscillating-scenes judge (or ``claim.judge_path``). ``claim.untrained_judge=true`` — set only by
    the experiments' ``quick_overrides``, never by a protocol (a publish of it is refused as not the protocol) — uses a
    seeded, untrained judge instead, so the pipeline runs end to end in quick mode without the weights file (its
    FVD_judge numbers are meaningless, as every quick number is; the results record ``judge_sha256: untrained``)."""
    if c.get("untrained_judge", False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return OscillationJudge().eval().requires_grad_(False)
    return load_oscillation_judge(c.judge_path) if c.get("judge_path") else load_oscillation_judge()


def _judge_sha(c) -> str:
    if c.get("untrained_judge", False):
        return "untrained"
    return judge_sha256(c.get("judge_path") or DEFAULT_OSCILLATION_JUDGE_PATH)


def _sample_volumes(module, still: torch.Tensor, c, seed: int, sampler: dict | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(c.sample_seed) + int(seed))
    x_T = torch.randn((still.shape[0], *module.sample_shape), generator=g)
    cfg = dict(OmegaConf.to_container(c.sampler, resolve=True))
    cfg.update(sampler or {})
    return module.sample(x_T=x_T, cond={"still": still}, sampler=cfg, generator=torch.Generator().manual_seed(seed),
                         batch_size=int(c.get("sample_batch", 64)))


def labelled_gif(rows: dict[str, torch.Tensor], path: Path, fps: float = 15, scale: int = 3) -> Path:
    """One row of videos (B, 3, T, H, W) per label, the label written left of its row; frames = the shortest T."""
    from PIL import Image, ImageDraw

    T = min(v.shape[2] for v in rows.values())
    grids = [video_grid_frames(v[:, :, :T], nrow=v.shape[0], scale=scale) for v in rows.values()]
    margin = 8 + 7 * max(len(k) for k in rows)
    width = margin + max(g.shape[2] for g in grids)
    frames = []
    for t in range(T):
        canvas = Image.new("RGB", (width, sum(g.shape[1] for g in grids)), (255, 255, 255))
        draw, y = ImageDraw.Draw(canvas), 0
        for label, g in zip(rows, grids):
            canvas.paste(Image.fromarray(g[t]), (margin, y))
            draw.text((4, y + g.shape[1] // 2 - 5), label, fill=(0, 0, 0))
            y += g.shape[1]
        frames.append(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def _gif(cfg, name: str, rows: dict[str, torch.Tensor]) -> None:
    k = int(cfg.claim.gif_videos)
    frames = int(cfg.claim.get("gif_frames", 60))
    labelled_gif({label: v[:k, :, :frames] for label, v in rows.items()}, Path(cfg.run_dir) / f"{name}.gif")


def loop_row(module, renderer, judge, test: dict, c, seed: int, weight: float, period: int, frames: int):
    """Sample the test stills' volumes unguided (``weight`` 0) or with motion self-guidance at ``weight``; returns
    (the seam metrics, sampling time and FVD_judge of the rendered clips, the volumes, the videos)."""
    extra = {"loop_guidance": weight, "loop_frames": frames} if weight > 0 else None
    ts = time.time()
    v = _sample_volumes(module, test["still"], c, seed, extra)
    row = {"sample_time_s": round(time.time() - ts, 1), **loop_metrics(renderer, test["still"], v, period, frames)}
    video = render_video(renderer, test["still"], v, period, frames)
    row["fvd_judge"] = fvd_judge(video, test["x"][:, :, :frames], judge)
    return row, v, video


def seed_job(cfg_dict: dict, seed: int, kind: str) -> dict:
    cfg = seed_job_config(cfg_dict)
    c = cfg.claim
    out, times = {}, {}
    judge = _judge(c)
    test = test_scenes(cfg, int(c.test_n), int(c.test_seed))
    still, real, period, frames = test["still"], test["x"][:, :, : int(c.video_frames)], int(cfg.data.frames), \
        int(c.video_frames)
    renderer = renderer_stage(cfg, seed, times)
    if kind in ("normalisation", "coordination"):
        vols, videos = {}, {}
        for name, variant in variants(c).items():
            module = motion_stage(cfg, name, variant, seed, times)
            ts = time.time()
            vols[name] = _sample_volumes(module, still, c, seed)
            out[f"sample_time_s_{name}"] = round(time.time() - ts, 1)
            videos[name] = render_video(renderer, still, vols[name], period, frames)
            K = vols[name].shape[2]
            out[f"spectrum_log_error_{name}"] = spectrum_log_error(vols[name], test["volume"])
            out[f"spectrum_log_error_high_{name}"] = spectrum_log_error(vols[name], test["volume"],
                                                                        list(range(K // 2, K)))
            out[f"fd_spectrum_{name}"] = fd_spectrum(vols[name], test["volume"])
            out[f"fvd_judge_{name}"] = fvd_judge(videos[name], real, judge)
            out[f"band_energy_{name}"] = [float(v) for v in band_energy(vols[name]).mean(0)]
        if seed == int(c.seeds[0]):
            _gif(cfg, "still_to_animated", {"real": real, **videos})
            torch.save({k: v[:8] for k, v in vols.items()} | {"real": test["volume"][:8]},
                       Path(cfg.run_dir) / f"volumes_seed{seed}.pt")
    elif kind == "looping":
        name = str(c.motion_variant)
        module = motion_stage(cfg, name, variants(c)[name], seed, times)
        weights = [float(w) for w in c.loop_weights]
        for w in weights:
            name = "guided" if w > 0 else "unguided"
            row, v, video = loop_row(module, renderer, judge, test, c, seed, w, period, frames)
            out.update({f"{k}_{name}": val for k, val in row.items()})
            if seed == int(c.seeds[0]):
                out.setdefault("_videos", {})[name] = video
        if seed == int(c.seeds[0]):
            vids = out.pop("_videos")
            # each clip played twice: 30 frames either side of the seam (frame N back to the still)
            k, h = int(c.gif_videos), min(30, frames // 2)
            labelled_gif({n: torch.cat([vids[n][:k]] * 2, dim=2)[:, :, frames - h: frames + h] for n in vids},
                         Path(cfg.run_dir) / "loop_seam.gif")
            _interactive_gif(cfg, renderer, still, v, period)
        out.pop("_videos", None)
    elif kind == "long_horizon":
        out.update(_long_horizon(cfg, seed, test, renderer, judge, times))
    out.update({f"train_time_s_{k}": v for k, v in times.items()})
    return out


def _interactive_gif(cfg, renderer, still, volumes, period) -> None:
    """Interactive dynamics (Sec. 6): poke each of the first scenes at its most mobile pixel, render the response."""
    k = int(cfg.claim.gif_videos)
    S = still.shape[-1]
    videos = []
    for i in range(k):
        vol = volumes[i]
        mag = vol[:, 1:].pow(2).sum(dim=(0, 1))  # (h, w)
        r, col = divmod(int(mag.argmax()), mag.shape[-1])
        resp = modal_response(vol, period, (r, col), (float(cfg.claim.poke_force), 0.0), 60,
                              damping=float(cfg.claim.poke_damping))
        motion = torch.nn.functional.interpolate(resp.reshape(-1, 1, *resp.shape[-2:]), size=(S, S), mode="bilinear",
                                                 align_corners=False).reshape(1, 2, 60, S, S)
        videos.append(render_video(renderer, still[i:i + 1], None, period, 60, motion=motion))
    labelled_gif({"poke": torch.cat(videos)}, Path(cfg.run_dir) / "interactive_poke.gif")


# ---------------------------------------------------------------------------------------------------- long horizon
def training_flops(cfg: DictConfig, overrides: dict, batch_size: int, steps: int) -> float:
    """Training compute of a stage: ``3 x`` forward FLOPs of its network on one batch (forward + backward ~ 3
    forwards) ``x steps`` — counted by `shared.nn.flops` on the meta device."""
    from shared.nn.flops import gflops

    sub = variant_config(cfg, overrides)
    mod = sub.module
    net = instantiate(mod.net if "net" in mod else sub.model)
    if isinstance(net, Renderer):  # splatting checks its flow's values: counted on the CPU (no attention in it)
        S = int(cfg.data.size)
        args = (torch.zeros(batch_size, 3, S, S), torch.zeros(batch_size, 2, S, S), torch.zeros(batch_size, 1, S, S))
        return 3.0 * gflops(net, *args, on_meta=False)["gflops"] * 1e9 * int(steps)
    shape = tuple(mod.sample_shape)
    args = (torch.zeros(batch_size, *shape), torch.zeros(batch_size))
    kw = {"still": torch.zeros(batch_size, 3, int(cfg.data.size), int(cfg.data.size))}
    return 3.0 * gflops(net, *args, **kw)["gflops"] * 1e9 * int(steps)


def video_overrides(cfg: DictConfig, steps: int) -> dict:
    v = cfg.claim.video
    world = OmegaConf.to_container(cfg.data.train.world, resolve=True)
    world["n"] = int(v.scenes)
    data = {"_target_": "papers.generative_image_dynamics.data.StillClips", "world": world,
            "clip_len": int(v.clip_len), "seed": 0, "start_at_zero": float(v.start_at_zero)}
    return {"module": OmegaConf.to_container(v.module, resolve=True), "model": None, "data.train": data,
            "data.batch_size": int(v.batch_size), "trainer.max_steps": int(steps)}


@torch.no_grad()
def generate_long_video(module, still: torch.Tensor, frames: int, clip_len: int, overlap: int, sampler: dict,
                        seed: int) -> torch.Tensor:
    """A ``frames``-long video from a still with a clip model: the first clip with frame 0 known (the still), each
    next clip with its first ``overlap`` frames known (the previous clip's last ones), completed by the sampling
    loop (``cond={"x_known", "known"}``, VDM's replacement / reconstruction guidance)."""
    B, _, S, _ = still.shape
    L = int(clip_len)
    out = torch.zeros(B, 3, frames, S, S)
    g = torch.Generator().manual_seed(int(seed))
    t0 = 0
    while True:
        x_known = torch.zeros(B, 3, L, S, S)
        known = torch.zeros(B, 1, L, 1, 1, dtype=torch.bool)
        if t0 == 0:
            x_known[:, :, 0], known[:, :, 0] = still, True
        else:
            x_known[:, :, :overlap], known[:, :, :overlap] = out[:, :, t0:t0 + overlap], True
        x_T = torch.randn(B, 3, L, S, S, generator=g)
        x = module.sample(x_T=x_T, cond={"still": still, "x_known": x_known, "known": known}, sampler=sampler,
                          generator=g).clamp(-1, 1)
        n = min(L, frames - t0)
        out[:, :, t0:t0 + n] = x[:, :, :n]
        if t0 + L >= frames:
            return out
        t0 += L - overlap


def video_stage(cfg, seed: int, times: dict, out: dict):
    """The video-diffusion baseline of the long-horizon claim, trained for as many steps as its training FLOPs
    reach those of the motion model + renderer (``claim.motion_variant``), or loaded from the stage cache."""
    c = cfg.claim
    m_over = motion_overrides(cfg, variants(c)[str(c.motion_variant)])
    r_over = renderer_overrides(cfg)
    spectral_flops = (training_flops(cfg, m_over, int(cfg.data.batch_size), int(c.motion_steps))
                      + training_flops(cfg, r_over, int(c.renderer.batch_size), int(c.renderer.steps)))
    per_step = training_flops(cfg, video_overrides(cfg, 1), int(c.video.batch_size), 1)
    steps = max(1, round(spectral_flops / per_step)) if not cfg.trainer.get("fast_dev_run") else 1
    out["train_tflops_spectral"], out["train_tflops_video"] = spectral_flops / 1e12, steps * per_step / 1e12
    out["video_steps"] = steps
    return stage(cfg, "video", "video", video_overrides(cfg, steps), seed, times)


def _long_horizon(cfg, seed, test, renderer, judge, times) -> dict:
    c = cfg.claim
    out = {}
    still, frames, period = test["still"], int(c.video_frames), int(cfg.data.frames)
    real = test["x"][:, :, :frames]
    name = str(c.motion_variant)
    motion = motion_stage(cfg, name, variants(c)[name], seed, times)
    v = c.video
    video_model = video_stage(cfg, seed, times, out)
    ts = time.time()
    vols = _sample_volumes(motion, still, c, seed)
    videos = {"spectral": render_video(renderer, still, vols, period, frames)}
    out["sample_time_s_spectral"] = round(time.time() - ts, 1)
    ts = time.time()
    sampler = {**OmegaConf.to_container(v.sampler, resolve=True)}
    videos["video"] = generate_long_video(video_model, still, frames, int(v.clip_len), int(v.overlap), sampler,
                                          int(c.sample_seed) + seed)
    out["sample_time_s_video"] = round(time.time() - ts, 1)
    W, dw = int(c.fvd_window), int(c.window)
    for key, x in videos.items():
        out[f"fvd_judge_{key}"] = fvd_judge(x, real, judge)
        out[f"fvd_judge_early_{key}"] = fvd_judge(x[:, :, :W], real[:, :, :W], judge)
        out[f"fvd_judge_late_{key}"] = fvd_judge(x[:, :, -W:], real[:, :, -W:], judge)
        out[f"drift_{key}"] = drift(x, dw)
        out[f"drift_excess_{key}"] = out[f"drift_{key}"] - drift(real, dw)
    if seed == int(c.seeds[0]):
        k = int(c.gif_videos)
        step = max(1, frames // 75)
        labelled_gif({"real": real[:k, :, ::step], "spectral": videos["spectral"][:k, :, ::step],
                      "video": videos["video"][:k, :, ::step]}, Path(cfg.run_dir) / "real_spectral_video.gif")
    return out


# ---------------------------------------------------------------------------------------------------- entry points
def _run(cfg: DictConfig, kind: str, summary) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = _judge(c)
    n = int(c.test_n)
    a = test_scenes(cfg, n, int(c.test_seed))["x"][:, :, : int(c.video_frames)]
    b = test_scenes(cfg, n, int(c.floor_seed))["x"][:, :, : int(c.video_frames)]
    metrics: dict = {"fvd_judge_real_floor": fvd_judge(b, a, judge), "drift_real": drift(a, int(c.get("window", 30)))}
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    per_seed = map_jobs(seed_job, [(cfg_dict, int(s), kind) for s in c.seeds], workers=int(c.get("workers", 1)))
    for key in per_seed[0]:
        if isinstance(per_seed[0][key], list):
            metrics[key] = [sum(r[key][i] for r in per_seed) / len(per_seed) for i in range(len(per_seed[0][key]))]
        else:
            metrics[key] = summarise([r[key] for r in per_seed])
    summary(metrics, per_seed)
    if kind in ("normalisation", "coordination"):
        _spectrum_plot(cfg, metrics)
    record = finish(cfg, metrics, paper=PAPER, claim=str(c.name), t0=t0, artifacts=("*.png", "*.gif"),
                    extra={"nfe": int(c.sampler.steps), "num_test_scenes": n,
                           "judge_sha256": _judge_sha(c)})
    return record


def _spectrum_plot(cfg, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = cfg.claim
    test = test_scenes(cfg, int(c.test_n), int(c.test_seed))
    real = band_energy(test["volume"]).mean(0)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    k = torch.arange(len(real))
    ax.semilogy(k, real, "k-o", ms=3, label="real (test scenes)")
    for name in variants(c):
        ax.semilogy(k, metrics[f"band_energy_{name}"], "-o", ms=3, label=f"{name} (mean of seeds)")
    ax.set_xlabel(f"frequency bin k (k / {cfg.data.frames} cycles per frame)")
    ax.set_ylabel("mean |S_k|^2 (px^2)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(cfg.run_dir) / "spectrum.png", dpi=120)
    plt.close(fig)


def _ratio(metrics: dict, a: str, b: str, key: str) -> None:
    pa, pb = metrics[a]["per_seed"], metrics[b]["per_seed"]
    metrics[key] = summarise([x / y for x, y in zip(pa, pb)])


def run_normalisation(cfg: DictConfig) -> dict:
    def summary(m, per_seed):
        _ratio(m, "fvd_judge_adaptive", "fvd_judge_global", "ratio_fvd_adaptive_to_global")
    return _run(cfg, "normalisation", summary)


def run_coordination(cfg: DictConfig) -> dict:
    def summary(m, per_seed):
        _ratio(m, "fvd_judge_coordinated", "fvd_judge_independent", "ratio_fvd_coordinated_to_independent")
    return _run(cfg, "coordination", summary)


def run_looping(cfg: DictConfig) -> dict:
    def summary(m, per_seed):
        _ratio(m, "loop_seam_px_guided", "loop_seam_px_unguided", "ratio_seam_guided_to_unguided")
    return _run(cfg, "looping", summary)


def _stages_job(cfg_dict: dict, seed: int) -> dict:
    cfg = seed_job_config(cfg_dict)
    c, times, out = cfg.claim, {}, {}
    renderer_stage(cfg, seed, times)
    for name, over in variants(c, "stage_variants").items():
        motion_stage(cfg, name, over, seed, times)
    video_stage(cfg, seed, times, out)
    return {**{f"train_time_s_{k}": t for k, t in times.items()}, **out}


def run_stages(cfg: DictConfig) -> dict:
    """Train into the stage cache every network the four claims share (``oscillating_stages.yaml``): per seed the
    renderer, the motion models of ``claim.stage_variants`` and the long-horizon video baseline. Measures them
    (``train_time_s_*`` in the run's results.json, never published); the claims then load them."""
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    cfg_dict = OmegaConf.to_container(cfg, resolve=False)
    per_seed = map_jobs(_stages_job, [(cfg_dict, int(s)) for s in c.seeds], workers=int(c.get("workers", 1)))
    metrics = {f"seed{int(s)}": r for s, r in zip(c.seeds, per_seed)}
    metrics["train_time_s_total"] = round(sum(v for r in per_seed for k, v in r.items()
                                              if k.startswith("train_time_s_")), 1)
    return finish(cfg, metrics, paper=PAPER, claim=str(c.name), t0=t0, copy_to_paper=False)


def choose_loop_weight(rows: dict[float, dict], seam_ratio: float, fvd_ratio: float, fvd_margin: float):
    """The development rule fixed in ``oscillating_looping_dev.yaml``: the smallest weight whose seam is at most
    ``seam_ratio`` x the unguided one with FVD_judge at most ``fvd_ratio`` x the unguided one; failing that, the weight
    with the smallest seam among those within ``fvd_margin`` x; ``None`` if no weight keeps FVD_judge within that."""
    ok = [u for u in sorted(rows) if rows[u]["seam_ratio"] <= seam_ratio and rows[u]["fvd_ratio"] <= fvd_ratio]
    if ok:
        return ok[0]
    within = [u for u in rows if rows[u]["fvd_ratio"] <= fvd_margin]
    return min(within, key=lambda u: rows[u]["seam_ratio"]) if within else None


def run_loop_weight_dev(cfg: DictConfig) -> dict:
    """Choose the looping claim's guided weight on a development model (``oscillating_looping_dev.yaml``): the
    adaptive motion model and renderer of a seed outside the protocol's, development scenes (another test seed),
    unguided sampling once and guided sampling for every weight of ``claim.dev_weights``, the same initial noise.
    Never published; the run's results.json names the weight the rule picks."""
    t0 = time.time()
    torch.set_num_threads(1)
    c = cfg.claim
    judge = _judge(c)
    test = test_scenes(cfg, int(c.test_n), int(c.test_seed))
    frames, period = int(c.video_frames), int(cfg.data.frames)
    metrics = {}
    for seed in c.seeds:
        seed, times = int(seed), {}
        renderer = renderer_stage(cfg, seed, times)
        name = str(c.motion_variant)
        module = motion_stage(cfg, name, variants(c)[name], seed, times)
        rows = {u: loop_row(module, renderer, judge, test, c, seed, u, period, frames)[0]
                for u in [0.0, *[float(w) for w in c.dev_weights]]}
        for row in rows.values():
            row["seam_ratio"] = row["loop_seam_px"] / max(rows[0.0]["loop_seam_px"], 1e-12)
            row["fvd_ratio"] = row["fvd_judge"] / max(rows[0.0]["fvd_judge"], 1e-12)
        chosen = choose_loop_weight({u: r for u, r in rows.items() if u > 0}, float(c.dev_seam_ratio),
                                    float(c.dev_fvd_ratio), float(c.fvd_margin))
        metrics[f"seed{seed}"] = {"weights": {str(u): r for u, r in rows.items()}, "chosen_weight": chosen,
                                  **{f"train_time_s_{k}": t for k, t in times.items()}}
        log.info("loop weight development, seed %d: %s -> chosen %s", seed,
                 {u: (round(r["seam_ratio"], 3), round(r["fvd_ratio"], 3)) for u, r in rows.items()}, chosen)
    return finish(cfg, metrics, paper=PAPER, claim=str(c.name), t0=t0, copy_to_paper=False,
                  extra={"judge_sha256": _judge_sha(c)})


def run_long_horizon(cfg: DictConfig) -> dict:
    def summary(m, per_seed):
        _ratio(m, "fvd_judge_spectral", "fvd_judge_video", "ratio_fvd_spectral_to_video")
    return _run(cfg, "long_horizon", summary)


__all__ = ["run_normalisation", "run_coordination", "run_looping", "run_long_horizon", "run_loop_weight_dev",
           "choose_loop_weight", "run_stages", "video_stage",
           "renderer_stage", "motion_stage", "loop_row", "stage", "band_energy",
           "spectrum_log_error", "fd_spectrum", "drift", "loop_metrics"]
