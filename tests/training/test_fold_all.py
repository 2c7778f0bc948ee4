"""Fold ``all`` (nnU-Net v2's): every case trains, nothing is held out, predict uses fold_all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_helpers import blob_case, run_cli

from toolkit.core.constants import FOLD_ALL
from toolkit.core.splits import parse_fold
from toolkit.errors import ToolkitError
from toolkit.evaluation.crossval import trained_configurations
from toolkit.inference.loading import _fold_dirs
from toolkit.io.images import Geometry, read_image, write_image
from toolkit.pipeline.status import dataset_status
from toolkit.training import stage
from toolkit.training.job import TrainOptions, prepare, run_seed
from toolkit.training.schedule import Schedule
from toolkit.workspace import CHECKPOINT_FINAL

ONE = Schedule(epochs=1, iterations_per_epoch=2, validation_iterations=1)


def options(**changes) -> TrainOptions:
    base = {"schedule": ONE, "device": "cpu", "quiet": True, "checkpoint_every_s": 0.0}
    base.update(changes)
    return TrainOptions(**base)


def test_parse_fold_and_the_seed_of_fold_all():
    assert parse_fold("all") == parse_fold("ALL") == FOLD_ALL
    assert parse_fold("3") == 3
    with pytest.raises(ToolkitError, match="a fold is a number"):
        parse_fold("-1")
    seed = run_seed(0, "3d_fullres", FOLD_ALL)
    assert seed == run_seed(0, "3d_fullres", "all") and 0 <= seed < 2**63
    assert seed not in {run_seed(0, "3d_fullres", f) for f in range(5)}


def test_fold_all_trains_on_every_case_and_validates_on_them(tiny_dataset):
    job = prepare(tiny_dataset, "3d_fullres", FOLD_ALL, options())
    cases = [f"case_{i:02d}" for i in range(10)]
    assert job.split.train == cases and job.split.val == cases
    assert job.fold_dir.name == "fold_all" and not job.final_validation


def test_fold_all_trains_and_predicts_with_folds_all(tiny_dataset, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "train",
            str(tiny_dataset.root),
            "3d_fullres",
            "all",
            "--epochs",
            "1",
            "--iters-per-epoch",
            "2",
            "--val-iters",
            "1",
            "--device",
            "cpu",
            "--validation-tta",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    fold = tiny_dataset.fold_dir("3d_fullres", FOLD_ALL)
    assert (fold / CHECKPOINT_FINAL).is_file() and (fold / "log.jsonl").is_file()
    assert not (fold / "validation").exists()  # nothing held out: no final validation
    assert "no final validation" in err
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train_iterations"] == 2 and log[0]["pseudo_dice"]
    # a resume of the finished fold is a no-op, without asking for a validation
    again = stage.train_fold(tiny_dataset, "3d_fullres", FOLD_ALL, options(resume=True))
    assert again.already_done
    # fold_all is no cross-validation fold: evaluation does not see it
    assert trained_configurations(tiny_dataset) == []
    rows = dataset_status(tiny_dataset).trainings
    assert [(r.configuration, r.fold, r.state) for r in rows][-1] == ("3d_fullres", "all", "done")

    image, _ = blob_case(np.random.default_rng(5))
    geometry = Geometry((1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel()), (24, 24, 20))
    source = tmp_path / "in" / "new_0000.nii.gz"
    write_image(source, image[0], geometry)
    model = tiny_dataset.model_dir("3d_fullres")
    for flag in ("--folds", "-f"):
        out = tmp_path / f"out{flag}"
        code, _, err = run_cli(
            ["predict", "-i", str(source), "-o", str(out), "--model", str(model), flag, "all"]
            + ["--device", "cpu", "--no-tta", "-q"],
            capsys,
        )
        assert code == 0, err
        labels, _ = read_image(out / "new.nii.gz")
        assert labels.shape == (20, 24, 24)
    # without --folds, fold_all is the model's only fold: it is used
    assert _fold_dirs(model, None, CHECKPOINT_FINAL) == [fold]
    code, _, err = run_cli(
        ["predict", "-i", str(source), "-o", str(tmp_path / "o"), "--model", str(model)]
        + ["--folds", "0", "--device", "cpu", "-q"],
        capsys,
    )
    assert code == 2 and "fold 0 has no checkpoint_final.pt" in err


def test_numbered_folds_come_first_when_no_fold_is_named(tmp_path):
    for name in ("fold_all", "fold_1", "fold_0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / CHECKPOINT_FINAL).write_bytes(b"")
    assert [p.name for p in _fold_dirs(tmp_path, None, CHECKPOINT_FINAL)] == ["fold_0", "fold_1"]
    assert [p.name for p in _fold_dirs(tmp_path, ["all"], CHECKPOINT_FINAL)] == ["fold_all"]


def test_train_cli_rejects_a_fold_that_is_neither(tiny_dataset, capsys):
    code, _, err = run_cli(["train", str(tiny_dataset.root), "3d_fullres", "x"], capsys)
    assert code == 2 and "a fold is a number" in err
