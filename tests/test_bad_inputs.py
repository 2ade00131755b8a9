"""Bad input, table-driven: every malformed override, value, path, data file or checkpoint given to a command line
entry point ends as exactly one line on stderr naming its cause, exit status 2, before any work — and changes
nothing under ``papers/`` or in earlier run folders.

Each case runs the real entry point (``shared.engine.{train,sample,evaluate}.main``) in this process with
``sys.argv`` set, so Hydra parses the overrides exactly as on a command line. ``{tmp}``, ``{early}`` (an earlier
run folder, trained once for the module), ``{ckpt}`` (its last.ckpt) and ``{data}`` (files a case's ``setup``
wrote) are substituted into the arguments.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli

RUN = ["model.base_channels=8", "model.norm_groups=4", "trainer.max_steps=4", "callbacks.samples=null",
       "trainer.enable_progress_bar=false", "logger=none", "paths.output_dir={tmp}/outputs", "name=tiny"]
TINY = ["data.size=8", "data.batch_size=16", "data.train.classes=[0]", *RUN]


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str                      # a substring of the one error line
    entry: str = "train"             # train | sample | evaluate
    setup: str | None = None         # name of a function below that writes files; returns {placeholder: path}
    tiny: bool | str = True          # prepend TINY (train only); "run": only the model/trainer part (other data)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An earlier run folder (trained through the CLI) and tampered copies of its checkpoint."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    capsys = _NullCapsys()
    args = [a.format(tmp=tmp) for a in TINY] + ["hydra.run.dir=" + str(tmp / "outputs/tiny/early")]
    code, err = run_cli("train", args, capsys)
    assert code == 0, err
    early = tmp / "outputs" / "tiny" / "early"
    ckpt = early / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return {"tmp": tmp, "early": early, "ckpt": ckpt}


class _NullCapsys:
    def readouterr(self):
        return type("R", (), {"out": "", "err": ""})()


def tampered(world, name: str, edit) -> Path:
    ck = torch.load(world["ckpt"], weights_only=True)
    edit(ck)
    path = world["tmp"] / "ckpts" / f"{name}.ckpt"
    path.parent.mkdir(exist_ok=True)
    torch.save(ck, path)
    return path


# ------------------------------------------------------------------------------------------------ setups
def setup_zero_byte(world, d):
    p = d / "zero.ckpt"
    p.write_bytes(b"")
    return {"data": p}


def setup_garbage(world, d):
    p = d / "garbage.ckpt"
    p.write_bytes(b"not a checkpoint at all")
    return {"data": p}


def setup_truncated(world, d):
    p = d / "truncated.ckpt"
    p.write_bytes(world["ckpt"].read_bytes()[:4000])
    return {"data": p}


def setup_tensor_ckpt(world, d):
    p = d / "tensor.ckpt"
    torch.save(torch.zeros(3), p)
    return {"data": p}


def setup_pickle_payload(world, d):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    p = d / "evil_pickle.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Evil()}, f)
    return {"data": p}


def _evil_module(target):
    def edit(ck):
        ck["run_config"]["module"] = {"_target_": target, "src": "/etc/hostname", "dst": "/tmp/vdp_pwned"}
    return edit


def setup_evil_copyfile(world, d):
    return {"data": tampered(world, "evil_copyfile", _evil_module("shutil.copyfile"))}


def setup_evil_torch_load(world, d):
    def edit(ck):
        ck["run_config"]["module"] = {"_target_": "torch.load", "f": "/tmp/x", "weights_only": False}
    return {"data": tampered(world, "evil_torch_load", edit)}


def setup_evil_system(world, d):
    def edit(ck):
        ck["run_config"]["module"] = {"_target_": "os.system", "command": "touch /tmp/vdp_pwned"}
    return {"data": tampered(world, "evil_system", edit)}


def setup_evil_nested(world, d):
    def edit(ck):
        ck["run_config"]["module"]["net"] = {"_target_": "subprocess.run", "args": ["touch", "/tmp/vdp_pwned"]}
    return {"data": tampered(world, "evil_nested", edit)}


def setup_evil_interpolation(world, d):
    def edit(ck):
        ck["run_config"]["module"]["ema_decay"] = "${oc.env:HOME}"
    return {"data": tampered(world, "evil_interp", edit)}


def setup_evil_project_function(world, d):
    def edit(ck):
        ck["run_config"]["module"] = {"_target_": "shared.engine.results.write_results", "path": "/tmp/vdp_pwned",
                                      "metrics": {}}
    return {"data": tampered(world, "evil_project_fn", edit)}


def setup_no_run_config(world, d):
    return {"data": tampered(world, "no_run_config", lambda ck: ck.pop("run_config"))}


def setup_no_state_dict(world, d):
    return {"data": tampered(world, "no_state_dict", lambda ck: ck.pop("state_dict"))}


def setup_evil_logger_version(world, d):
    def edit(ck):
        ck["loggers"] = {"CSVLogger": {"version": "../../../escaped", "name": "logs"}}
    return {"data": tampered(world, "evil_logger", edit)}


def setup_evil_wandb_id(world, d):
    def edit(ck):
        ck["loggers"] = {"WandbLogger": {"version": "/abs/path", "name": "x"}}
    return {"data": tampered(world, "evil_wandb", edit)}


def setup_evil_callback_path(world, d):
    def edit(ck):
        for state in ck["callbacks"].values():
            state["last_model_path"] = state["dirpath"] + "/../../../../victim.txt"
    return {"data": tampered(world, "evil_callback", edit)}


def setup_bad_rng(world, d):
    def edit(ck):
        ck["rng"]["torch"] = torch.zeros(3)
    return {"data": tampered(world, "bad_rng", edit)}


def setup_weights_only(world, d):
    ck = torch.load(world["ckpt"], weights_only=True)
    p = d / "weights_only.ckpt"
    torch.save({"state_dict": ck["state_dict"], "run_config": ck["run_config"]}, p)
    return {"data": p}


def setup_other_arch(world, d):
    def edit(ck):
        ck["state_dict"] = {k: v for k, v in list(ck["state_dict"].items())[:-3]}
    return {"data": tampered(world, "missing_keys", edit)}


def _write_png(path: Path, size=12, value=128):
    from PIL import Image

    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def setup_images_all_corrupt(world, d):
    root = d / "imgs"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return {"data": root}


def setup_images_empty(world, d):
    root = d / "empty"
    root.mkdir()
    (root / "notes.txt").write_text("no images here")
    return {"data": root}


def setup_images_all_nan(world, d):
    from PIL import Image

    root = d / "nan"
    root.mkdir()
    for i, v in enumerate((np.nan, np.inf, -np.inf)):
        a = np.full((12, 12), 0.5, dtype=np.float32)
        a[3, 3] = v
        Image.fromarray(a, mode="F").save(root / f"{i}.tif")
    return {"data": root}


def setup_images_truncated(world, d):
    root = d / "trunc"
    root.mkdir()
    for i in range(3):
        _write_png(root / f"{i}.png", size=32)
        data = (root / f"{i}.png").read_bytes()
        (root / f"{i}.png").write_bytes(data[: len(data) // 2])
    return {"data": root}


def setup_cifar_corrupt(world, d):
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"garbage, not a pickle")
    return {"data": d / "cifar"}


def setup_cifar_evil(world, d):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    return {"data": d / "cifar"}


def setup_cifar_missing_files(world, d):
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    return {"data": d / "cifar"}


def setup_videos_all_corrupt(world, d):
    root = d / "ucf"
    for c in ("A", "B"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            (root / c / f"v{i}.mp4").write_bytes(b"not a video")
    return {"data": root}


def setup_videos_none(world, d):
    root = d / "ucf_empty"
    (root / "A").mkdir(parents=True)
    (root / "A" / "readme.txt").write_text("x")
    return {"data": root}


def setup_frames_all_corrupt(world, d):
    root = d / "sky"
    for c in range(2):
        clip = root / "v" / f"c{c}"
        clip.mkdir(parents=True)
        for i in range(4):
            (clip / f"{i:03d}.jpg").write_bytes(b"not a jpeg")
    return {"data": root}


def setup_webvid_bad_columns(world, d):
    (d / "vids").mkdir()
    (d / "x.csv").write_text("id,caption\n1,a cat\n")
    return {"data": d / "vids", "csv": d / "x.csv"}


def setup_webvid_empty(world, d):
    (d / "vids").mkdir()
    (d / "x.csv").write_text("videoid,name,page_dir\n")
    return {"data": d / "vids", "csv": d / "x.csv"}


def setup_webvid_all_missing(world, d):
    (d / "vids").mkdir()
    (d / "x.csv").write_text("videoid,name,page_dir\n1,a cat,p\n2,a dog,p\n")
    return {"data": d / "vids", "csv": d / "x.csv"}


def setup_split_file_missing(world, d):
    root = d / "ucf"
    (root / "A").mkdir(parents=True)
    (root / "A" / "v.mp4").write_bytes(b"x")
    return {"data": root}


def setup_pairs_missing(world, d):
    return {"data": d / "pairs.pt"}


def setup_finished_run(world, d):
    return {}


def setup_locked_run(world, d):
    import fcntl
    import os

    lock = world["early"] / ".run.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    # held by "another process": an open file description of our own that run_lock does not know about
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    world.setdefault("held_fds", []).append(fd)
    return {}


def setup_out_unwritable(world, d):
    (d / "a_file").write_text("x")
    return {"data": d / "a_file"}


E = "experiment="


def DCase(*args, **kwargs) -> Case:  # noqa: N802 - a case over another data config: no digits overrides
    return Case(*args, tiny="run", **kwargs)

CASES: list[Case] = [
    # ---------------------------------------------------------------- overrides (Hydra's parser and composer)
    Case("unknown_key", ["trainer.max_stepz=3"], "max_stepz"),
    Case("unknown_top_key", ["sedd=3"], "sedd"),
    Case("unknown_group", ["model=no_such_model"], "no_such_model"),
    Case("unknown_experiment", [E + "ddpm/no_such_claim"], "ddpm/no_such_claim", tiny=False),
    Case("bad_syntax_no_value", ["trainer.max_steps"], "trainer.max_steps"),
    Case("bad_syntax_brackets", ["data.train.classes=[0,1"], "data.train.classes"),
    Case("bad_syntax_empty_key", ["=3"], "=3"),
    Case("append_existing_key", ["+trainer.max_steps=3"], "max_steps"),
    Case("delete_missing_key", ["~trainer.no_such"], "no_such"),
    Case("unknown_module_kwarg", ["+module.no_such_kwarg=1"], "no_such_kwarg"),
    Case("unknown_model_kwarg", ["+model.widthh=3"], "widthh"),
    Case("bad_target", ["model._target_=shared.nn.unet.NoSuchNet"], "NoSuchNet"),
    Case("bad_target_module", ["model._target_=no_such_pkg.Net"], "no_such_pkg"),
    Case("unresolvable_interpolation", ["data.size=${{no.such.key}}"], "no.such.key"),
    Case("missing_required", [E + "ddpm/cifar10", "data.root=???"], "data.root", tiny=False),
    # ---------------------------------------------------------------- run-level values
    Case("seed_text", ["seed=abc"], "seed"),
    Case("seed_negative", ["seed=-1"], "seed"),
    Case("seed_float", ["seed=1.5"], "seed"),
    Case("max_steps_zero", ["trainer.max_steps=0"], "trainer.max_steps"),
    Case("max_steps_negative", ["trainer.max_steps=-5"], "trainer.max_steps"),
    Case("max_steps_text", ["trainer.max_steps=many"], "trainer.max_steps"),
    Case("max_steps_float", ["trainer.max_steps=2.5"], "trainer.max_steps"),
    Case("forever", ["trainer.max_steps=-1", "trainer.max_epochs=-1"], "train forever"),
    Case("max_epochs_zero", ["trainer.max_epochs=0"], "trainer.max_epochs"),
    Case("log_every_zero", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
    Case("grad_clip_negative", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    Case("grad_clip_nan", ["trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val"),
    Case("accumulate_zero", ["+trainer.accumulate_grad_batches=0"], "accumulate_grad_batches"),
    Case("precision_unknown", ["trainer.precision=banana"], "banana"),
    Case("accelerator_unknown", ["trainer.accelerator=abacus"], "abacus"),
    Case("devices_zero", ["trainer.devices=0"], "devices"),
    Case("fast_dev_run_text", ["trainer.fast_dev_run=maybe"], "fast_dev_run"),
    # ---------------------------------------------------------------- module values
    Case("lr_negative", ["module.optimizer.lr=-1"], "module.optimizer.lr"),
    Case("lr_zero", ["module.optimizer.lr=0"], "module.optimizer.lr"),
    Case("lr_nan", ["module.optimizer.lr=nan"], "module.optimizer.lr"),
    Case("lr_inf", ["module.optimizer.lr=inf"], "module.optimizer.lr"),
    Case("betas_out_of_range", ["+module.optimizer.betas=[0.9,1.5]"], "module.optimizer.betas"),
    Case("weight_decay_negative", ["+module.optimizer.weight_decay=-0.1"], "module.optimizer.weight_decay"),
    Case("optimizer_unknown", ["module.optimizer._target_=torch.optim.Adamm"], "Adamm"),
    Case("ema_decay_above_one", ["module.ema_decay=1.5"], "module.ema_decay"),
    Case("ema_decay_negative", ["module.ema_decay=-0.5"], "module.ema_decay"),
    Case("cond_drop_above_one", ["module.cond_drop_prob=2"], "module.cond_drop_prob"),
    Case("prediction_unknown", ["module.prediction=foo"], "foo"),
    Case("loss_weighting_unknown", ["module.loss_weighting=foo"], "foo"),
    Case("schedule_steps_zero", ["module.schedule.num_steps=0"], "num_steps"),
    Case("schedule_betas_unknown", ["module.schedule.betas=zigzag"], "zigzag"),
    Case("beta_end_above_one", ["module.schedule.beta_end=2.0"], "beta"),
    Case("module_sampler_unknown", ["module.sampler.name=ddimm"], "ddimm"),
    Case("module_sampler_steps_zero", ["module.sampler.steps=0"], "sampler.steps"),
    Case("module_sampler_eta_negative", ["module.sampler.eta=-1"], "sampler.eta"),
    Case("sample_shape_mismatch", ["module.sample_shape=[1,16,16]"], "sample_shape"),
    # ---------------------------------------------------------------- network values
    Case("norm_groups_not_divisor", ["model.norm_groups=3"], "norm_groups=3"),
    Case("norm_groups_zero", ["model.norm_groups=0"], "norm_groups"),
    Case("base_channels_zero", ["model.base_channels=0"], "model.base_channels"),
    Case("channel_mult_empty", ["model.channel_mult=[]"], "model.channel_mult"),
    Case("image_size_not_divisible", ["model.image_size=7", "data.size=7"], "model.image_size=7"),
    Case("num_res_blocks_zero", ["model.num_res_blocks=0"], "model.num_res_blocks"),
    Case("dropout_above_one", ["model.dropout=1.5"], "model.dropout"),
    Case("model_data_size_mismatch", ["module.sample_shape=[1,16,16]"], "data.size"),   # the default follows data.size
    Case("in_channels_mismatch", ["model.in_channels=3"], "in_channels"),
    # ---------------------------------------------------------------- data values and paths
    Case("batch_size_zero", ["data.batch_size=0"], "data.batch_size"),
    Case("batch_size_negative", ["data.batch_size=-4"], "data.batch_size"),
    Case("batch_size_float", ["data.batch_size=1.5"], "data.batch_size"),
    Case("batch_larger_than_data", ["data.batch_size=100000"], "batch_size=100000"),
    Case("num_workers_negative", ["data.num_workers=-1"], "data.num_workers"),
    Case("classes_empty_set", ["data.train.classes=[42]"], "no images of classes [42]"),
    Case("digits_split_unknown", ["data.train.split=nope"], "nope"),
    Case("data_size_zero", ["data.size=0", "model.image_size=8"], "data.size must be a positive integer"),
    Case("cifar_root_missing", [E + "ddpm/cifar10", "data.root=/no/such/cifar"], "data.root", tiny=False),
    Case("cifar_corrupt", [E + "ddpm/cifar10", "data.root={data}"], "data_batch_1", tiny=False,
         setup="setup_cifar_corrupt"),
    Case("cifar_pickle_global", [E + "ddpm/cifar10", "data.root={data}"], "refusing to load global", tiny=False,
         setup="setup_cifar_evil"),
    Case("cifar_files_missing", [E + "ddpm/cifar10", "data.root={data}"], "not found", tiny=False,
         setup="setup_cifar_missing_files"),
    DCase("image_folder_missing", ["data=image_folder", "data.root=/no/such/images", "data.num_workers=0"],
         "data.root"),
    DCase("image_folder_no_images", ["data=image_folder", "data.root={data}", "data.num_workers=0", "data.size=8",
                                    "model.in_channels=3", "module.sample_shape=[3,8,8]"], "no images",
         setup="setup_images_empty"),
    DCase("image_folder_all_corrupt", ["data=image_folder", "data.root={data}", "data.num_workers=0", "data.size=8",
                                      "data.batch_size=2", "model.in_channels=3", "module.sample_shape=[3,8,8]"],
         "no readable image", setup="setup_images_all_corrupt"),
    DCase("image_folder_all_truncated", ["data=image_folder", "data.root={data}", "data.num_workers=0", "data.size=8",
                                        "data.batch_size=2", "model.in_channels=3", "module.sample_shape=[3,8,8]"],
         "no readable image", setup="setup_images_truncated"),
    DCase("image_folder_all_nan", ["data=image_folder", "data.root={data}", "data.num_workers=0", "data.size=8",
                                  "data.batch_size=2", "model.in_channels=3", "module.sample_shape=[3,8,8]"],
         "non-finite", setup="setup_images_all_nan"),
    DCase("image_folder_channels", ["data=image_folder", "data.root={data}", "data.num_workers=0",
                                   "data.train.channels=2"], "channels", setup="setup_images_all_corrupt"),
    DCase("ucf_root_missing", ["data=ucf101", "data.root=/no/such/ucf", "data.num_workers=0"], "data.root"),
    DCase("ucf_root_unset", ["data=ucf101", "data.num_workers=0"], "data.root"),
    DCase("ucf_no_videos", ["data=ucf101", "data.root={data}", "data.num_workers=0", "~data.val"], "no video files",
         setup="setup_videos_none"),
    DCase("ucf_all_corrupt", ["data=ucf101", "data.root={data}", "data.num_workers=0", "data.batch_size=2",
                             "~data.val", "data.size=8", "data.frames=2", "model=unet3d_tiny", "model.image_size=8",
                             "model.in_channels=3", "module.sample_shape=[3,2,8,8]"], "no decodable clip",
         setup="setup_videos_all_corrupt"),
    DCase("ucf_split_file_missing", ["data=ucf101", "data.root={data}", "data.num_workers=0",
                                    "data.train.split_file=/no/such/trainlist01.txt"], "split_file",
         setup="setup_split_file_missing"),
    DCase("ucf_frames_zero", ["data=ucf101", "data.root={data}", "data.num_workers=0", "data.frames=0", "~data.val"],
         "frames", setup="setup_videos_all_corrupt"),
    DCase("sky_all_corrupt", ["data=sky_timelapse", "data.root={data}", "data.num_workers=0", "data.batch_size=2",
                             "data.size=8", "data.frames=2", "model=unet3d_tiny", "model.image_size=8",
                             "model.in_channels=3", "module.sample_shape=[3,2,8,8]"], "no decodable clip",
         setup="setup_frames_all_corrupt"),
    DCase("webvid_csv_unset", ["data=webvid", "data.root={tmp}", "data.num_workers=0"], "csv_path"),
    DCase("webvid_csv_missing", ["data=webvid", "data.root={tmp}", "data.num_workers=0",
                                "data.train.csv_path=/no/such.csv"], "csv_path"),
    DCase("webvid_bad_columns", ["data=webvid", "data.root={data}", "data.num_workers=0", "data.train.csv_path={csv}"],
         "needs columns", setup="setup_webvid_bad_columns"),
    DCase("webvid_no_rows", ["data=webvid", "data.root={data}", "data.num_workers=0", "data.train.csv_path={csv}"],
         "no rows", setup="setup_webvid_empty"),
    DCase("webvid_all_missing", ["data=webvid", "data.root={data}", "data.num_workers=0", "data.train.csv_path={csv}",
                                "data.batch_size=2", "data.size=8", "data.frames=2", "model=unet3d_tiny",
                                "model.image_size=8", "model.in_channels=3", "module.sample_shape=[3,2,8,8]"],
         "no decodable clip", setup="setup_webvid_all_missing"),
    DCase("moving_digits_frames_zero", ["data=moving_digits", "data.frames=0", "model=unet3d_tiny"], "frames"),
    DCase("moving_digits_n_zero", ["data=moving_digits", "data.train.n=0", "model=unet3d_tiny"], "n"),
    DCase("toy_unknown", ["data=toy2d", "data.name=hexagon"], "hexagon"),
    DCase("joint_images_negative", ["data=moving_digits", "data.extra_images=-1", "model=unet3d_tiny"],
         "extra_images"),
    # ---------------------------------------------------------------- checkpoints given to train (resume)
    Case("ckpt_missing", ["ckpt_path=/no/such.ckpt"], "checkpoint not found"),
    Case("ckpt_folder", ["ckpt_path={tmp}"], "is a folder"),
    Case("ckpt_zero_byte", ["ckpt_path={data}"], "empty (0 bytes)", setup="setup_zero_byte"),
    Case("ckpt_garbage", ["ckpt_path={data}"], "cannot read checkpoint", setup="setup_garbage"),
    Case("ckpt_truncated", ["ckpt_path={data}"], "cannot read checkpoint", setup="setup_truncated"),
    Case("ckpt_not_a_dict", ["ckpt_path={data}"], "not a dict", setup="setup_tensor_ckpt"),
    Case("ckpt_pickle_payload", ["ckpt_path={data}"], "cannot read checkpoint", setup="setup_pickle_payload"),
    Case("ckpt_no_state_dict", ["ckpt_path={data}"], "state_dict", setup="setup_no_state_dict"),
    Case("ckpt_no_run_config", ["ckpt_path={data}"], "run config", setup="setup_no_run_config"),
    Case("ckpt_weights_only", ["ckpt_path={data}"], "not a training checkpoint", setup="setup_weights_only"),
    Case("ckpt_missing_keys", ["ckpt_path={data}"], "missing key", setup="setup_other_arch"),
    Case("ckpt_logger_escape", ["ckpt_path={data}", "logger=csv"], "../../../escaped",
         setup="setup_evil_logger_version"),
    Case("ckpt_wandb_id_escape", ["ckpt_path={data}"], "/abs/path", setup="setup_evil_wandb_id"),
    Case("ckpt_callback_path_escape", ["ckpt_path={data}"], "victim.txt", setup="setup_evil_callback_path"),
    Case("ckpt_bad_rng", ["ckpt_path={data}"], "RNG state", setup="setup_bad_rng"),
    Case("resume_other_lr", ["ckpt_path={ckpt}", "module.optimizer.lr=0.05"], "module.optimizer.lr"),
    Case("resume_other_optimizer", ["ckpt_path={ckpt}", "module.optimizer._target_=torch.optim.SGD"],
         "torch.optim.SGD"),
    Case("resume_other_seed_last", ["ckpt_path=last", "seed=7"], "seed"),
    Case("resume_other_model_last", ["ckpt_path=last", "model.base_channels=16"], "model.base_channels"),
    Case("resume_lower_budget", ["ckpt_path={ckpt}", "trainer.max_steps=2"], "below the checkpoint's step 4"),
    Case("resume_no_runs", ["ckpt_path=last", "name=never_ran"], "no earlier run named 'never_ran'"),
    Case("resume_locked_run", ["ckpt_path=last"], "still training", setup="setup_locked_run"),
    Case("pipeline_with_ckpt", [E + "ddpm/digits_claim", "ckpt_path=last", "paths.output_dir={tmp}/outputs"],
         "ckpt_path is for single training runs", tiny=False),
    # ---------------------------------------------------------------- publishing
    Case("publish_fewer_seeds", [E + "ddpm/digits_claim", "++claim.publish=true", "claim.seeds=[0]",
                                 "paths.output_dir={tmp}/outputs"], "fewer than the protocol", tiny=False),
    Case("publish_smoke_override", [E + "ddpm/digits_claim", "++claim.publish=true", "claim.num_samples=16",
                                    "paths.output_dir={tmp}/outputs"], "smoke override", tiny=False),
    Case("publish_fast_dev_run", [E + "ddim/digits_claim", "++claim.publish=true", "trainer.fast_dev_run=true",
                                  "paths.output_dir={tmp}/outputs"], "fast_dev_run", tiny=False),
    Case("publish_short_budget", [E + "ddpm/digits_claim", "++claim.publish=true", "trainer.max_steps=3",
                                  "paths.output_dir={tmp}/outputs"], "trainer.max_steps", tiny=False),
    Case("publish_smoke_flag", [E + "rectified_flow/toy2d_claim", "++claim.publish=true", "claim.smoke=true",
                                "paths.output_dir={tmp}/outputs"], "claim.smoke", tiny=False),
    Case("autoencoder_weights_missing", ["module=autoencoder_kl", "model=autoencoder_sd",
                                         "model.weights_path=/no/such/sd-vae-ft-ema/vae.safetensors",
                                         "paths.output_dir={tmp}/outputs"],
         "/no/such/sd-vae-ft-ema/vae.safetensors", tiny=False),
    Case("teacher_ckpt_evil", [E + "knowledge_distillation/digits_claim", "claim.teacher_ckpt={data}",
                               "paths.output_dir={tmp}/outputs"], "shutil.copyfile", tiny=False,
         setup="setup_evil_copyfile"),
    Case("teacher_ckpt_missing", [E + "knowledge_distillation/digits_claim", "claim.teacher_ckpt=/no/such.ckpt",
                                  "paths.output_dir={tmp}/outputs"], "checkpoint not found", tiny=False),
    Case("teacher_ckpt_zero_byte", [E + "progressive_distillation/digits_claim", "claim.teacher_ckpt={data}",
                                    "paths.output_dir={tmp}/outputs"], "empty (0 bytes)", tiny=False,
         setup="setup_zero_byte"),
    # ---------------------------------------------------------------- sample: checkpoints and sampler values
    Case("sample_ckpt_unset", [], "ckpt", entry="sample"),
    Case("sample_ckpt_missing", ["ckpt=/no/such.ckpt"], "not found", entry="sample"),
    Case("sample_ckpt_zero_byte", ["ckpt={data}"], "empty (0 bytes)", entry="sample", setup="setup_zero_byte"),
    Case("sample_ckpt_garbage", ["ckpt={data}"], "cannot read checkpoint", entry="sample", setup="setup_garbage"),
    Case("sample_ckpt_truncated", ["ckpt={data}"], "cannot read checkpoint", entry="sample", setup="setup_truncated"),
    Case("sample_pickle_payload", ["ckpt={data}"], "cannot read checkpoint", entry="sample",
         setup="setup_pickle_payload"),
    Case("sample_evil_copyfile", ["ckpt={data}"], "shutil.copyfile", entry="sample", setup="setup_evil_copyfile"),
    Case("sample_evil_torch_load", ["ckpt={data}"], "torch.load", entry="sample", setup="setup_evil_torch_load"),
    Case("sample_evil_system", ["ckpt={data}"], "os.system", entry="sample", setup="setup_evil_system"),
    Case("sample_evil_nested", ["ckpt={data}"], "subprocess.run", entry="sample", setup="setup_evil_nested"),
    Case("sample_evil_interpolation", ["ckpt={data}"], "interpolation", entry="sample",
         setup="setup_evil_interpolation"),
    Case("sample_evil_project_function", ["ckpt={data}"], "write_results", entry="sample",
         setup="setup_evil_project_function"),
    Case("sample_no_run_config", ["ckpt={data}"], "run config", entry="sample", setup="setup_no_run_config"),
    Case("sample_missing_keys", ["ckpt={data}"], "missing key", entry="sample", setup="setup_other_arch"),
    Case("sample_unknown_sampler", ["ckpt={ckpt}", "sampler.name=ddimm"], "ddimm", entry="sample"),
    Case("sample_misspelled_option", ["ckpt={ckpt}", "+sampler.stepz=3"], "stepz", entry="sample"),
    Case("sample_steps_zero", ["ckpt={ckpt}", "sampler.steps=0"], "sampler.steps", entry="sample"),
    Case("sample_steps_negative", ["ckpt={ckpt}", "sampler.steps=-3"], "sampler.steps", entry="sample"),
    Case("sample_steps_fraction", ["ckpt={ckpt}", "sampler.steps=2.5"], "sampler.steps", entry="sample"),
    Case("sample_eta_negative", ["ckpt={ckpt}", "sampler.eta=-1"], "sampler.eta", entry="sample"),
    Case("sample_eta_nan", ["ckpt={ckpt}", "sampler.eta=nan"], "sampler.eta", entry="sample"),
    Case("sample_guidance_nan", ["ckpt={ckpt}", "sampler.guidance_scale=nan"], "guidance_scale", entry="sample"),
    Case("sample_guidance_inf", ["ckpt={ckpt}", "sampler.guidance_scale=inf"], "guidance_scale", entry="sample"),
    Case("sample_variance_unknown", ["ckpt={ckpt}", "sampler.name=ddpm", "sampler.variance=huge"], "huge",
         entry="sample"),
    Case("sample_n_zero", ["ckpt={ckpt}", "n=0"], "n must be", entry="sample"),
    Case("sample_n_negative", ["ckpt={ckpt}", "n=-2"], "n must be", entry="sample"),
    Case("sample_labels_unconditional", ["ckpt={ckpt}", "labels=[1,2]"], "y", entry="sample"),
    Case("sample_out_in_a_file", ["ckpt={ckpt}", "sampler.steps=2", "n=2", "out={data}/x.png"], "a_file",
         entry="sample", setup="setup_out_unwritable"),
    Case("sample_unknown_key", ["ckpt={ckpt}", "samples=3"], "samples", entry="sample"),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate_ckpt_missing", ["ckpt=/no/such.ckpt"], "not found", entry="evaluate"),
    Case("evaluate_num_samples_zero", ["ckpt={ckpt}", "num_samples=0"], "num_samples", entry="evaluate"),
    Case("evaluate_unknown_sampler", ["ckpt={ckpt}", "sampler.name=bogus"], "bogus", entry="evaluate"),
    Case("evaluate_evil_checkpoint", ["ckpt={data}"], "shutil.copyfile", entry="evaluate",
         setup="setup_evil_copyfile"),
    Case("evaluate_zero_byte", ["ckpt={data}"], "empty (0 bytes)", entry="evaluate", setup="setup_zero_byte"),
]


# `make test` runs the table without these (one or more cases of every kind of input remain, about a minute); the
# whole table: `VDP_BAD_INPUTS=all python -m pytest -q tests/test_bad_inputs.py`.
FULL_TABLE = os.environ.get("VDP_BAD_INPUTS") == "all"
EXTRA = set("""
unknown_top_key unknown_experiment bad_syntax_no_value append_existing_key delete_missing_key
bad_target_module seed_negative seed_float max_steps_negative max_steps_text
max_epochs_zero log_every_zero grad_clip_negative accumulate_zero accelerator_unknown
weight_decay_negative loss_weighting_unknown schedule_betas_unknown module_sampler_eta_negative base_channels_zero
channel_mult_empty num_res_blocks_zero dropout_above_one batch_size_negative batch_size_float
num_workers_negative digits_split_unknown data_size_zero cifar_root_missing image_folder_missing
image_folder_channels ucf_root_missing ucf_root_unset ucf_split_file_missing ucf_frames_zero
webvid_csv_unset webvid_csv_missing moving_digits_n_zero joint_images_negative ckpt_missing
ckpt_folder ckpt_not_a_dict ckpt_no_run_config pipeline_with_ckpt teacher_ckpt_missing
teacher_ckpt_zero_byte sample_ckpt_unset sample_ckpt_missing sample_ckpt_garbage sample_pickle_payload
sample_no_run_config sample_missing_keys sample_steps_negative sample_steps_fraction sample_n_negative
sample_unknown_key evaluate_ckpt_missing evaluate_unknown_sampler evaluate_zero_byte
""".split())
PARAMS = [pytest.param(c, id=c.id) for c in CASES if FULL_TABLE or c.id not in EXTRA]


@pytest.fixture(autouse=True)
def _release_held_locks(world):
    yield
    import os
    for fd in world.pop("held_fds", []):
        os.close(fd)


def test_the_table_is_large_and_ids_unique():
    assert len({c.id for c in CASES}) == len(CASES) >= 150
    assert EXTRA <= {c.id for c in CASES} and len(CASES) - len(EXTRA) >= 90   # make test's share


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_one_line_naming_its_cause(case, world, tmp_path, capsys):
    subs = {"tmp": str(world["tmp"]), "early": str(world["early"]), "ckpt": str(world["ckpt"])}
    if case.setup:
        subs.update({k: str(v) for k, v in globals()[case.setup](world, tmp_path).items()})
    prefix = (RUN if case.tiny == "run" else TINY) if case.tiny and case.entry == "train" else []
    args = [a.format(**subs) for a in prefix] + [a.format(**subs) for a in case.args]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")
    papers, early = tree_digest(ROOT / "papers"), tree_digest(world["early"])
    code, err = run_cli(case.entry, args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert case.expect in lines[0], lines[0]
    assert "Traceback" not in err and "internal error" not in err
    assert tree_digest(ROOT / "papers") == papers, "papers/ changed"
    assert tree_digest(world["early"]) == early, "an earlier run folder changed"
    assert not Path("/tmp/vdp_pwned").exists(), "a checkpoint ran code"
    assert not any((tmp_path / "run").rglob("*.ckpt")), "bad input trained anyway"
    if os.environ.get("VDP_BAD_INPUT_LOG"):   # the table's messages, for review: VDP_BAD_INPUT_LOG=file pytest ...
        with open(os.environ["VDP_BAD_INPUT_LOG"], "a") as f:
            f.write(f"{case.id}\t{lines[0]}\n")


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    """One corrupt PNG and one NaN float TIFF among 12 images: 10 readable items served, both counted; an
    all-corrupt folder is one DataError (the table above)."""
    from PIL import Image

    from shared.data.images import ImageFolderDataset

    for i in range(10):
        _write_png(tmp_path / f"ok{i:02d}.png", value=20 * i)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    a = np.full((12, 12), 0.5, dtype=np.float32)
    a[0, 0] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "nan.tif")
    ds = ImageFolderDataset(tmp_path, size=8)
    assert len(ds) == 12
    with pytest.warns(RuntimeWarning, match="skipping"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 2 and {Path(p).name for p in ds.skipped} == {"bad.png", "nan.tif"}
    assert "non-finite" in ds.skipped[str(tmp_path / "nan.tif")]
    assert all(torch.isfinite(it["x"]).all() and it["x"].shape == (3, 8, 8) for it in items)


# ------------------------------------------------------------------------------------------------ publishing
def test_publishing_is_explicit_and_only_for_the_committed_protocol(tmp_path, monkeypatch):
    """finish() writes papers/<id>/results only for a run whose publish flag passed check_publish; the make targets
    are the ones that pass it, and no experiment turns it on by itself."""
    import re

    from conftest import compose
    from omegaconf import open_dict

    import shared.engine.claims as claims
    from shared.engine.run import ConfigError

    monkeypatch.setattr(claims, "PROJECT_ROOT", tmp_path / "project")
    papers = tmp_path / "project" / "papers" / "ddpm" / "results"

    def claim_run(*overrides, name):
        cfg = compose(["experiment=ddpm/digits_claim", *overrides, f"run_dir={tmp_path / name}"])
        (tmp_path / name).mkdir()
        (tmp_path / name / "grid.png").write_bytes(b"png")
        (tmp_path / name / "clip.gif").write_bytes(b"gif")
        return cfg

    cfg = claim_run(name="plain")                          # no flag: the run folder only
    claims.finish(cfg, {"m": 1.0}, paper="ddpm", claim="digits_claim", t0=0.0)
    assert (tmp_path / "plain" / "results.json").is_file() and not papers.exists()

    cfg = claim_run("++claim.publish=true", name="unchecked")   # flag set but never checked: refused, kept locally
    with pytest.raises(ConfigError, match="not published"):
        claims.finish(cfg, {"m": 1.0}, paper="ddpm", claim="digits_claim", t0=0.0)
    assert (tmp_path / "unchecked" / "results.json").is_file() and not papers.exists()

    cfg = claim_run("++claim.publish=true", "claim.seeds=[0]", name="smoke")
    with pytest.raises(ConfigError, match="fewer than the protocol"):
        claims.check_publish(cfg, "ddpm/digits_claim")

    cfg = claim_run("++claim.publish=true", name="protocol")
    claims.check_publish(cfg, "ddpm/digits_claim")
    claims.finish(cfg, {"m": 1.0}, paper="ddpm", claim="digits_claim", t0=0.0, artifacts=("*.png", "*.gif"))
    assert sorted(p.name for p in papers.iterdir()) == ["digits_claim.json", "digits_claim_clip.gif",
                                                        "digits_claim_grid.png"]
    with open_dict(cfg):
        cfg.claim.publish = False

    make = (ROOT / "Makefile").read_text()
    trains = re.findall(r"^\t\$\(TRAIN\) experiment=.*$", make, flags=re.M)
    # every claim a paper target runs publishes explicitly; a preparation run (training shared stages into a cache,
    # no checks: ``expected: []``) is the only other kind of line
    prep = [t for t in trains if not t.rstrip().endswith("$(PUBLISH)")]
    files = [ROOT / "experiments" / f"{t.split('experiment=')[1].split()[0]}.yaml" for t in prep]
    assert trains and all(re.search(r"^expected: \[\]", f.read_text(), flags=re.M) for f in files), prep
    assert "PUBLISH := ++claim.publish=true" in make
    on = [p.name for p in (ROOT / "experiments").rglob("*.yaml") if re.search(r"^\s+publish:\s*true", p.read_text(),
                                                                               flags=re.M)]
    assert not on, f"experiments that publish by themselves: {on}"


def test_a_malicious_checkpoint_runs_nothing_through_the_teacher_loaders(world, tmp_path):
    """The distillation teachers (claim.teacher_ckpt, the cache, a student's lazy teacher) load through the same
    allow-listed rebuild as sample/evaluate: refused in one line, nothing run. (train resumes never instantiate
    from a checkpoint; sample/evaluate are in the table.)"""
    from omegaconf import OmegaConf

    from shared.engine.teachers import teacher_for_seed
    from shared.methods.edm_module import load_teacher_net, sampling_state
    from shared.methods.registry import UnsafeCheckpointError

    for setup in (setup_evil_copyfile, setup_evil_torch_load, setup_evil_system, setup_evil_nested,
                  setup_evil_interpolation, setup_evil_project_function):
        evil = setup(world, tmp_path)["data"]
        with pytest.raises(UnsafeCheckpointError) as e:
            load_teacher_net(evil)
        assert "\n" not in str(e.value)
        cfg = OmegaConf.create({"claim": {"teacher_ckpt": str(evil)}})
        with pytest.raises(UnsafeCheckpointError):
            teacher_for_seed(cfg, 0)
        sampling_state(evil)   # a student's initialisation reads tensors only: nothing in the config is called
    assert not Path("/tmp/vdp_pwned").exists()


def test_the_traceback_is_one_switch_away_and_bugs_are_not_called_bad_input(monkeypatch, capsys):
    """``VDP_TRACEBACK=1`` re-raises (the whole traceback); an error no input explains (a bug) is one line too, but
    says so and exits 1, not 2."""
    from hydra.errors import HydraException

    from shared.engine.cli import friendly_errors

    monkeypatch.setenv("VDP_TRACEBACK", "1")
    with pytest.raises(HydraException, match="max_stepz"):
        run_cli("train", ["trainer.max_stepz=3", "hydra.run.dir=/tmp/vdp_unused"], capsys)
    monkeypatch.delenv("VDP_TRACEBACK")
    with pytest.raises(SystemExit) as e, friendly_errors():
        {}["missing"]
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "internal error (KeyError" in err and "VDP_TRACEBACK" in err
