"""Each fold and configuration draws its own random numbers; the same --seed repeats a run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from training_helpers import tiny_plans

from toolkit.core.checkpoint import KEY_RUN, load_checkpoint, save_checkpoint
from toolkit.errors import ToolkitError
from toolkit.training import stage, trainer
from toolkit.training.job import KEY_RUN_SEED, TrainOptions, prepare, run_seed
from toolkit.training.schedule import Schedule
from toolkit.workspace import CHECKPOINT_FINAL

ONE = Schedule(epochs=1, iterations_per_epoch=1, validation_iterations=1)


def options(**changes) -> TrainOptions:
    base = {"schedule": ONE, "device": "cpu", "validate": False, "quiet": True}
    base.update(changes)
    return TrainOptions(**base)


def test_run_seed_mixes_seed_configuration_and_fold_stably():
    seeds = {
        run_seed(s, c, f) for s in (0, 1) for c in ("3d_fullres", "3d_lowres") for f in range(5)
    }
    assert len(seeds) == 2 * 2 * 5
    assert all(0 <= s < 2**63 for s in seeds)
    assert run_seed(0, "3d_fullres", 0) == run_seed(0, "3d_fullres", 0)
    # not Python's salted hash(): the same number in a process with another hash seed
    code = "from toolkit.training.job import run_seed; print(run_seed(0, '3d_fullres', 3))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == run_seed(0, "3d_fullres", 3)


class _Stop(Exception):
    pass


_BUILD_PARTS = trainer.build_parts


def _start(paths, configuration, fold, monkeypatch, **changes):
    """The initial weights and the batch seed a run starts from (the run stops there)."""
    seen = {}

    def capture(job, ctx, device):
        parts = _BUILD_PARTS(job, ctx, device)
        seen["weights"] = {k: v.clone() for k, v in parts.network.state_dict().items()}
        seen["batch_seed"] = parts.train_maker.seed
        raise _Stop

    monkeypatch.setattr(trainer, "build_parts", capture)
    with pytest.raises(_Stop):
        stage.train_fold(paths, configuration, fold, options(**changes))
    return seen


def _same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_folds_and_configurations_start_from_their_own_weights_and_batches(
    tiny_dataset, monkeypatch
):
    plans = tiny_plans()
    plans.configurations["3d_other"] = replace(plans.configurations["3d_fullres"], name="3d_other")
    plans.save(tiny_dataset.plans_json)
    zero = _start(tiny_dataset, "3d_fullres", 0, monkeypatch)
    again = _start(tiny_dataset, "3d_fullres", 0, monkeypatch)
    one = _start(tiny_dataset, "3d_fullres", 1, monkeypatch)
    other = _start(tiny_dataset, "3d_other", 0, monkeypatch)
    reseeded = _start(tiny_dataset, "3d_fullres", 0, monkeypatch, seed=1)
    assert _same_weights(zero["weights"], again["weights"])
    assert zero["batch_seed"] == again["batch_seed"] == run_seed(0, "3d_fullres", 0)
    for different in (one, other, reseeded):
        assert not _same_weights(zero["weights"], different["weights"])
        assert different["batch_seed"] != zero["batch_seed"]


def test_resume_of_a_checkpoint_from_before_the_fold_seed(tiny_dataset):
    stage.train_fold(tiny_dataset, "3d_fullres", 0, options())
    final = tiny_dataset.fold_dir("3d_fullres", 0) / CHECKPOINT_FINAL
    checkpoint = load_checkpoint(final)
    assert checkpoint[KEY_RUN][KEY_RUN_SEED] == run_seed(0, "3d_fullres", 0)
    # as written before the seed depended on the fold: no run_seed, the run used --seed itself
    del checkpoint[KEY_RUN][KEY_RUN_SEED]
    save_checkpoint(final, checkpoint)
    job = prepare(tiny_dataset, "3d_fullres", 0, options(resume=True))
    assert job.start_from == final and job.seed == 0
    assert job.run_settings == checkpoint[KEY_RUN]
    with pytest.raises(ToolkitError, match="resume with the same options"):
        prepare(tiny_dataset, "3d_fullres", 0, options(resume=True, seed=2))
