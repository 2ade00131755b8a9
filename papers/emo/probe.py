"""Probe of a finished EMO claim run's stage-2 model: does it use the motion frames and the speed condition?

``python -m papers.emo.probe experiment=emo/talking_faces_claim_v3 run_dir=<the run's folder> [the run's overrides]``
reloads the run's first seed's ``video`` model from its folder (the stage resumes finished; nothing trains) and
writes ``<run_dir>/temporal_probe.json``:

* motion frames, teacher-forced: the second clip of ``probe_clips`` real long clips is generated with the *real* last
  ``n`` frames of the first clip as motion frames, and again with zero maps, from the same ``x_T``:
  ``first_frame_to_previous_*`` (mean |generated first frame - real previous frame|), ``continuation_error_*`` (mean
  |generated clip - real continuation|), ``motion_frames_effect`` (mean |with - without|), ``pose_jump_*`` (the
  head-pose judge's pose change from the real previous frame to the generated first frame, rad; ``pose_jump_real``
  for the real continuation); ``pose_seam_*`` (long generation as the claim's, ``claim.long_clips`` clips chained
  by generated motion frames or independent: the judge's pose jump at the boundaries over its within-clip pose
  change, :func:`papers.emo.claim.pose_seams`);
* speed: the evaluation clips generated at each of ``speeds`` (the same ``x_T``): the head-pose judge's speed
  (``judged_speed``), its net pose displacement per frame (``net_displacement``) and the mean |x(speed) - x(first
  speed)| (``speed_effect``); and the speed claim's setting — the second clip after the real motion frames at each of
  ``claim.speed_levels`` (``mf_judged_speed``, ``mf_net_displacement``, ``mf_pixel_change``: the mean |frame-to-frame
  change|; ``real_continuation`` the same for the real clip). The net displacement (first to last frame) tells a
  head that travels from frame-to-frame jitter, which raises the judged speed but hardly the net displacement.

A model that uses its motion frames brings the first frame closer to the previous one; one that uses the speed moves
the judged speed with it. Development tool (papers/emo/README.md, "Temporal-path study"); it never writes results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from papers.emo import claim as C
from shared.engine.claims import train_stage
from shared.engine.compose import compose
from shared.metrics.avatar_judge import head_speed, judge_outputs, load_avatar_judge


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def probe(cfg, probe_clips: int = 16, speeds=(0.0, 0.01, 0.08, 0.3), sample_seed: int = 5) -> dict:
    run = Path(cfg.run_dir)
    seed = int(cfg.claim.seeds[0])
    img_w = run / "image" / "export.safetensors"
    if not img_w.is_file():
        raise FileNotFoundError(f"{img_w} not found: run_dir must be a finished EMO claim run (its image stage)")
    if not (run / f"video_seed{seed}" / "export.safetensors").is_file():
        raise FileNotFoundError(f"{run / f'video_seed{seed}'} has no export: the run's seed {seed} did not finish")
    _, vid = train_stage(cfg, "video", f"video_seed{seed}", seed, {"model.image_weights": str(img_w)})
    vid.eval()
    judge = load_avatar_judge("talking_faces", cfg.claim.judge_path)
    f, n = int(cfg.data.frames), int(cfg.claim.motion_frames)
    sampler = OmegaConf.to_container(cfg.claim.sampler, resolve=True)
    prior = C.noise_prior(cfg)
    long = C.eval_clips(cfg, probe_clips, int(cfg.claim.long_seed), 2 * f)
    second, real_mf, with_mf, no_mf = C.continue_real(vid, long, sampler, sample_seed, f, n, prior)
    last = real_mf[:, :, -1]
    out = {
        "seed": seed,
        "first_frame_to_previous_motion_frames": _mad(with_mf[:, :, 0], last),
        "first_frame_to_previous_zero_maps": _mad(no_mf[:, :, 0], last),
        "real_first_frame_to_previous": _mad(second["x"][:, :, 0], last),
        "continuation_error_motion_frames": _mad(with_mf, second["x"]),
        "continuation_error_zero_maps": _mad(no_mf, second["x"]),
        "motion_frames_effect": _mad(with_mf, no_mf),
        "pose_jump_motion_frames": C.pose_jump(last, with_mf, judge),
        "pose_jump_zero_maps": C.pose_jump(last, no_mf, judge),
        "pose_jump_real": C.pose_jump(last, second["x"], judge),
        "within_clip_change": float((with_mf[:, :, 1:] - with_mf[:, :, :-1]).abs().mean()),
    }
    k = int(cfg.claim.long_clips)
    chains = C.eval_clips(cfg, probe_clips, int(cfg.claim.long_seed) + 1, k * f)
    for name, motion in (("motion_frames", True), ("independent", False)):
        chain = C.long_generation(vid, chains, sampler, sample_seed + 1, f, n, k, motion=motion, prior=prior)
        out[f"pose_seam_jump_{name}"], out[f"pose_within_clip_{name}"], out[f"pose_seam_ratio_{name}"] = \
            C.pose_seams(chain, judge)
    out["pose_seam_ratio_real"] = C.pose_seams(list(chains["x"].split(f, dim=2)), judge)[2]
    clips = C.eval_clips(cfg, probe_clips, int(cfg.claim.real_seed), f)
    vids = C.at_speeds(vid, clips, sampler, sample_seed + 2, n, speeds, prior)
    out["speeds"] = [float(s) for s in speeds]
    out["judged_speed"] = [float(head_speed(v, judge).mean()) for v in vids]
    out["speed_effect"] = [_mad(v, vids[0]) for v in vids]
    out["judged_speed_real"] = float(head_speed(clips["x"], judge).mean())
    out["net_displacement"] = [net_displacement(v, judge) for v in vids]
    # the speed claim's setting: the real previous frames as motion frames, each of claim.speed_levels held over the
    # clip, one x_T; the net pose displacement separates a head that travels from frame-to-frame jitter
    levels = [float(s) for s in cfg.claim.speed_levels]
    x_T = C.initial_noise(second["x"].shape, sample_seed + 3, prior)
    cont = [C.generate(vid, second, sampler, sample_seed + 3, speed=s, motion_frames=real_mf, n_motion=n, x_T=x_T)
            for s in levels]
    out["mf_speeds"] = levels
    out["mf_judged_speed"] = [float(head_speed(v, judge).mean()) for v in cont]
    out["mf_net_displacement"] = [net_displacement(v, judge) for v in cont]
    out["mf_pixel_change"] = [_mad(v[:, :, 1:], v[:, :, :-1]) for v in cont]
    out["real_continuation"] = {"judged_speed": float(head_speed(second["x"], judge).mean()),
                                "net_displacement": net_displacement(second["x"], judge),
                                "pixel_change": _mad(second["x"][:, :, 1:], second["x"][:, :, :-1])}
    return out


def net_displacement(videos: torch.Tensor, judge) -> float:
    """Mean judged head-pose distance from a clip's first to its last frame per frame step (rad/frame): the path's
    net rate, which frame-to-frame jitter hardly moves (unlike :func:`head_speed`, the mean step length)."""
    pose = judge_outputs(videos, judge)["head_pose"]
    return float(((pose[:, -1] - pose[:, 0]).norm(dim=-1) / (pose.shape[1] - 1)).mean())


def main(argv: list[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("run_dir=") for a in args):
        raise SystemExit("papers.emo.probe: give run_dir=<a finished EMO claim run> (and the run's overrides)")
    cfg = compose(args + ["logger=none"])
    torch.set_num_threads(1)
    out = probe(cfg)
    path = Path(cfg.run_dir) / "temporal_probe.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
