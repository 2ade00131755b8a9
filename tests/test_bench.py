"""``make bench`` (tools/bench.py): the parameter-count helper, and one tiny configuration end to
end. No timing is asserted — timings belong to ``make bench`` on a quiet machine, not to a test."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tools import bench


def test_param_match_counts_and_tolerance():
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)  # 110 parameters each
    m = bench.param_match(a, b)
    assert m["ours"] == m["theirs"] == 110 and m["ratio"] == 1.0 and m["within_tol"]
    assert bench.param_match(104, 100)["within_tol"]
    assert bench.param_match(96, 100)["within_tol"]
    off = bench.param_match(106, 100)
    assert not off["within_tol"] and off["rel_diff"] == pytest.approx(0.06)
    assert bench.param_match(110, 100, tol=0.1)["within_tol"]
    with pytest.raises(ValueError):
        bench.param_match(1, 0)


def test_time_interleaved_alternates_order():
    calls = []
    steps = {"ours": lambda: calls.append("o"), "theirs": lambda: calls.append("t")}
    times = bench.time_interleaved(steps, repeats=3, warmup=1)
    assert calls == ["o", "t", "o", "t", "t", "o", "o", "t"]
    assert all(len(v) == 3 for v in times.values())


def test_ratio_quartiles():
    assert bench.ratio_iqr([1.2]) == (1.2, 1.2)
    assert bench.ratio_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)


def test_live_tensor_peak_counts_storages_alive_together():
    mib = 2**20

    def step():
        a = torch.empty(mib // 4)  # 1 MiB of float32
        b = torch.empty(mib // 4)
        b.view(2, -1).t()  # views share the storage: no new bytes
        del a
        c = torch.empty(mib // 4)
        return b, c

    peak = bench.live_tensor_peak(step)
    assert peak["peak_bytes"] == 2 * mib and "empty" in peak["peak_op"]


def test_live_tensor_peak_ignores_views_and_in_place_updates_of_older_storages():
    """A linear layer's weight is reached through a transposed view and an optimiser updates weights in place:
    neither is memory the step allocates."""
    weight, x = torch.randn(512, 512), torch.randn(4, 512)  # 1 MiB weight, made before the mode
    peak = bench.live_tensor_peak(lambda: (torch.nn.functional.linear(x, weight), weight.t(), weight.add_(0)))
    assert peak["peak_bytes"] == 4 * 512 * 4  # the output only


def test_tiny_unet2d_runs_end_to_end():
    pytest.importorskip("diffusers")
    threads = torch.get_num_threads()
    try:
        row = bench.bench_case("unet2d", "tiny", repeats=1, warmup=0, threads=1, memory=False,
                               log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    # the DDPM-layout U-Nets are the same architecture: parameter counts agree exactly
    assert row["params"]["ours"] == row["params"]["theirs"]
    for mode in ("train", "sample"):
        assert row[mode]["ours_s"] > 0 and row[mode]["theirs_s"] > 0 and row[mode]["ratio"] > 0
        q1, q3 = row[mode]["ratio_per_round_iqr"]
        assert q1 <= q3
    assert "unet2d[tiny]" in bench.format_table([row])


def test_motion_module_unet_matches_diffusers_trainable_parameters():
    """AnimateDiff's motion-module U-Net vs diffusers' UNetMotionModel: with the 2D weights frozen on both
    sides, the trainable (motion-module) parameter counts agree exactly and the totals within 5 %."""
    pytest.importorskip("diffusers")
    case = bench.build_case("motion", "tiny")
    ours, theirs, batch = case.ours(), case.theirs(), case.batch()
    trainable = [sum(p.numel() for p in s.model.parameters() if p.requires_grad) for s in (ours, theirs)]
    assert trainable[0] == trainable[1] > 0
    assert bench.param_match(ours.model, theirs.model, tol=0.07)["within_tol"]
    with torch.no_grad():
        assert ours.forward(ours.model, batch).shape == theirs.forward(theirs.model, batch).shape == batch["x"].shape


def test_bf16_autocast_and_compile_variants_run_and_are_recorded():
    rt = bench.Runtime(precision="bf16", compile=True, compile_backend="eager")
    row = bench.bench_case("dit", "tiny", repeats=1, warmup=0, threads=1, memory=False, log=lambda *a: None, rt=rt)
    assert row["precision"] == "bf16" and row["compile"] is True
    assert row["train"]["ratio"] > 0 and row["sample"]["ratio"] > 0
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        bench.Runtime(precision="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_request_without_a_gpu_is_a_one_line_error():
    with pytest.raises(SystemExit, match="error: --device cuda: no CUDA device is visible"):
        bench.main(["--device", "cuda", "--cases", "dit", "--size", "tiny"])


def test_dit_mfu_counts_forward_plus_backward_flops():
    """A training step's counted FLOPs are ~3x the forward's (backward = two matmuls per forward matmul), and
    MFU is achieved FLOP/s over the given peak."""
    from torch.utils.flop_counter import FlopCounterMode

    out = bench.dit_mfu("tiny", repeats=2, warmup=1, peak_tflops=1.0, log=lambda *a: None)
    case = bench.build_case("dit", "tiny")
    side, batch = case.ours(), case.batch()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        side.forward(side.model, batch)
    ratio = out["train_flops_per_step"] / fc.get_total_flops()
    assert 2.8 < ratio <= 3.0, ratio
    assert out["mfu"] == pytest.approx(out["train_flops_per_step"] / out["step_s"] / 1e12)
    assert out["images_per_s"] == pytest.approx(case.config["batch"] / out["step_s"])


def test_main_with_nothing_to_do_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="nothing to do"):
        bench.main(["--cases", "--out", str(tmp_path / "b.json")])


def test_mfu_only_run_writes_its_record(tmp_path):
    """``--cases`` with no family and ``--mfu``: only the MFU record (the GPU script's compiled-MFU phase)."""
    import json

    out = tmp_path / "mfu.json"
    bench.main(["--cases", "--mfu", "--mfu-size", "tiny", "--repeats", "1", "--warmup", "0", "--peak-tflops", "1",
                "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["rows"] == [] and rec["mfu"]["train_flops_per_step"] > 0 and rec["mfu"]["mfu"] > 0


def test_git_revision_without_git_names_the_sent_revision(tmp_path, monkeypatch):
    from shared.engine.results import git_revision

    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the path: as on a copied tree without .git
    monkeypatch.setenv("VDP_GIT_REVISION", "abc123")
    assert git_revision(tmp_path) == {"revision": "abc123", "dirty": True, "source": "VDP_GIT_REVISION"}
    monkeypatch.delenv("VDP_GIT_REVISION")
    assert git_revision(tmp_path) == {"revision": "unknown", "dirty": True}


def test_gpu_script_parses_and_runs_only_the_phases_named(tmp_path):
    """tests/bench/gpu_bench.sh (``make bench-gpu``): with PHASES naming none of its phases it runs none and
    still reports; the phases themselves need a GPU (and minutes of compilation), not a test."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent / "bench" / "gpu_bench.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "PHASES": "none"}
    out = subprocess.run(["bash", str(script), str(tmp_path), "60", sys.executable], env=env, capture_output=True,
                         text=True, timeout=120, cwd=script.parents[2])
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "log.txt").read_text()
    assert "== done" in log and "== eager" not in log and "torch" in log


def test_dit_stream_ab_patches_the_line_it_names():
    """tests/bench/dit_stream_ab.py patches one line of DiT.forward; fail here, not in a GPU session, if it moved.
    The patched forward keeps an fp32 run identical and makes the stream bf16 under bf16 autocast."""
    import importlib.util
    from pathlib import Path

    from shared.nn import transformer

    path = Path(__file__).resolve().parent / "bench" / "dit_stream_ab.py"
    spec = importlib.util.spec_from_file_location("dit_stream_ab", path)
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    cast = ab.forward_with_cast_stream()
    case = bench.build_case("dit", "tiny")
    side, batch = case.ours(), case.batch()
    seen = []
    side.model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    original = transformer.DiT.forward
    try:
        with torch.no_grad():
            ref = side.forward(side.model, batch)
            transformer.DiT.forward = cast
            assert torch.equal(side.forward(side.model, batch), ref)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                side.forward(side.model, batch)
            transformer.DiT.forward = original
            with torch.autocast("cpu", dtype=torch.bfloat16):
                side.forward(side.model, batch)
    finally:
        transformer.DiT.forward = original
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.float32]


def test_step_overhead_bench_steps_both_loops_of_a_claim_stage(tmp_path, monkeypatch):
    """tests/bench/step_overhead.py (issue 23's GPU per-step question) runs one claim stage's module both ways at a
    tiny size: both loops take the configured steps and report positive per-step times, and write nothing into the
    working directory (it once resolved ``${run_dir}/checkpoints`` before the run folder was set: ./None/...)."""
    import sys
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(Path(__file__).parent / "bench"))
    from step_overhead import main

    out = main(["--experiment", "video_ldm/sprites_claim_gpu", "--stage", "autoencoder", "--steps", "6",
                "--warmup", "2", "--override", "data.size=16", "--override", "data.frames=2",
                "--override", "claim.autoencoder_batch_size=1", "--override", "data.train.n=16",
                "--override", "data.train.radius=[2.6,3.2]"])
    assert out["bare_s_per_step"] > 0 and out["fit_s_per_step"] > 0 and out["device"] == "cpu"
    # the hypothesis switches of the GPU diagnosis (tests/bench/gpu_step_diag*.sh): one thread, the loader alone,
    # no harness run (on the CPU autocast is never used: --amp applies to CUDA only)
    out = main(["--experiment", "video_ldm/sprites_claim_gpu", "--stage", "autoencoder", "--steps", "5",
                "--warmup", "1", "--override", "data.size=16", "--override", "data.frames=2",
                "--override", "claim.autoencoder_batch_size=1", "--override", "data.train.n=4",
                "--override", "data.train.radius=[2.6,3.2]", "--threads", "1", "--bare-only",
                "--data-batches", "6", "--amp", "bf16"])
    assert out["threads"] == 1 and out["data_s_per_batch"] > 0 and "fit_s_per_step" not in out
    assert out["bare_amp_bf16"] is False
    with pytest.raises(SystemExit, match="--amp"):
        main(["--experiment", "video_ldm/sprites_claim_gpu", "--amp", "fp16"])
    with pytest.raises(SystemExit, match="--steps"):
        main(["--experiment", "video_ldm/sprites_claim_gpu", "--steps", "3", "--warmup", "2"])
    assert list(tmp_path.iterdir()) == []


def test_git_revision_names_changed_code_but_not_published_evidence(tmp_path):
    """A worktree that publishes claims one after another changes papers/<id>/results: the later claims' records
    must not call that tree dirty; a changed source file is dirty, by name."""
    import subprocess

    from shared.engine.results import git_revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "papers" / "p" / "results").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "papers" / "p" / "results" / "claim.json").write_text("{}")
    (tmp_path / "shared" / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_revision(tmp_path)["dirty"] is False
    (tmp_path / "papers" / "p" / "results" / "claim.json").write_text('{"m": 1}')
    (tmp_path / "untracked.txt").write_text("ignored")
    rec = git_revision(tmp_path)
    assert rec["dirty"] is False and "dirty_paths" not in rec
    (tmp_path / "shared" / "code.py").write_text("x = 2\n")
    rec = git_revision(tmp_path)
    assert rec["dirty"] is True and rec["dirty_paths"] == ["shared/code.py"]
