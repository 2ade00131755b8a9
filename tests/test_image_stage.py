"""The image-model stage the temporal-consistency papers share (conf/image_stage, shared.engine.teachers.
stage_for_seed): every experiment naming the recipe trains the same model (one teacher-cache key per seed), and a
recipe missing a part is a one-line error."""
from __future__ import annotations

import pytest
from conftest import compose
from omegaconf import OmegaConf

from shared.engine.claims import variant_config
from shared.engine.teachers import stage_for_seed, teacher_key

EXPERIMENTS = ["text2video_zero/moving_digits_claim", "latent_shift/moving_digits_claim", "pyoco/moving_digits_claim",
               "videofusion/moving_digits_claim", "long_video/moving_digits_claim", "tune_a_video/moving_digits_claim"]


def key_of(experiment: str, seed: int) -> str:
    cfg = compose([f"experiment={experiment}", "run_dir=/tmp/unused"])
    spec = OmegaConf.to_container(cfg.claim.image, resolve=False)
    over = {k: spec[k] for k in ("model", "module", "data")}
    over["trainer.max_steps"] = int(spec["max_steps"])
    sub = variant_config(cfg, over, seed)
    assert sub.module.net.num_classes == 10 and sub.data.train.frames_only   # the stage's own model and frames
    return teacher_key(sub, seed)


def test_every_paper_names_the_same_image_model():
    keys = {e: key_of(e, 0) for e in EXPERIMENTS}
    assert len(set(keys.values())) == 1, keys
    assert key_of(EXPERIMENTS[0], 1) != keys[EXPERIMENTS[0]]


def test_incomplete_recipe_is_one_line_error():
    cfg = compose(["experiment=text2video_zero/moving_digits_claim", "run_dir=/tmp/unused"])
    with pytest.raises(ValueError, match=r"missing \['max_steps'\]"):
        stage_for_seed(cfg, OmegaConf.create({"model": {}, "module": {}, "data": {}}), 0)


def test_cache_lock_is_exclusive_across_processes(tmp_path):
    """Two claims that need the same cached stage run side by side in ``make claims``: the second must wait for the
    first's file, not train a duplicate. While one process holds the key's lock another cannot take it."""
    import subprocess
    import sys

    from shared.engine.teachers import cache_lock

    probe = ("import fcntl, sys\n"
             "f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    with cache_lock(tmp_path / "key"):
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "key" / ".lock")]).returncode
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "key" / ".lock")]).returncode
    assert (held, free) == (3, 0)
