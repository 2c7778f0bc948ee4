"""A full disk, for real (a small tmpfs, filled up): convert, preprocess, a training's
checkpoint save and prediction each stop with one line naming the file and saying the disk is
full, exit 2; nothing half-written is left as a final file; once space is freed the same
command succeeds."""

from __future__ import annotations

import numpy as np
import pytest
from fault_helpers import assert_one_line, fill, free, run, temporaries

from toolkit.core.checkpoint import load_checkpoint
from toolkit.io.images import read_image
from toolkit.synthetic import generate_task
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths

pytestmark = pytest.mark.slow

FULL = "no space left on device"
TRAIN = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu"]


def _whole_files(folder, suffix: str, load) -> int:
    """Every final file of ``folder`` with ``suffix`` loads (none is half-written)."""
    files = [p for p in folder.rglob(f"*{suffix}") if not p.name.startswith(".")]
    for path in files:
        load(path)
    return len(files)


def test_each_stage_on_a_full_disk_then_with_space_again(capsys, tmp_path, small_disk):
    source = generate_task("mr", tmp_path / "src", n_cases=6, seed=5, shape=(16, 32, 32), n_test=1)
    ws = small_disk / "ws"
    paths = DatasetPaths(ws / "Synth")
    common = ["-w", ws, "-q"]

    # convert: the new raw/ is built aside and swapped in, so a full disk leaves none
    fill(small_disk, 16 * 1024)
    code, _, err = run(capsys, "convert", source, "--name", "Synth", "-j", "1", *common)
    assert code == 2
    assert_one_line(err, FULL, str(ws / "Synth"))
    assert not paths.raw.exists() and not temporaries(small_disk)
    free(small_disk)
    assert run(capsys, "convert", source, "--name", "Synth", "-j", "1", *common)[0] == 0

    assert run(capsys, "fingerprint", "Synth", "-j", "1", *common)[0] == 0
    assert run(capsys, "plan", "Synth", "--preset", "cpu", "-w", ws)[0] == 0

    # preprocess: the cases written before the disk filled are whole; a rerun completes
    fill(small_disk, 48 * 1024)
    code, _, err = run(capsys, "preprocess", "Synth", "-c", "2d", "-j", "1", *common)
    assert code == 2
    assert_one_line(err, FULL, str(paths.preprocessed))
    _whole_files(paths.preprocessed, ".npy", lambda p: np.load(p, mmap_mode="r"))
    assert not temporaries(small_disk)
    free(small_disk)
    assert run(capsys, "preprocess", "Synth", "-c", "2d", "-j", "1", *common)[0] == 0
    assert _whole_files(paths.preprocessed, ".npy", lambda p: np.load(p)) == 12

    # training: the checkpoint does not fit
    fill(small_disk, 256 * 1024)
    code, _, err = run(capsys, "train", "Synth", "2d", "0", *TRAIN, *common)
    assert code == 2
    assert_one_line(err, FULL, str(paths.fold_dir("2d", 0)))
    _whole_files(paths.models, ".pt", load_checkpoint)
    assert not temporaries(small_disk)
    free(small_disk)
    assert run(capsys, "train", "Synth", "2d", "0", *TRAIN, *common)[0] == 0
    load_checkpoint(paths.fold_dir("2d", 0) / CHECKPOINT_FINAL)

    # prediction into a folder of the small disk (outside the dataset: no lock)
    out = small_disk / "predictions"
    predict = ["predict", "-i", paths.images_ts, "-o", out, "--dataset", "Synth", "-c", "2d"]
    predict += ["-f", "0", "--no-tta", "--device", "cpu", *common]
    fill(small_disk, 0)
    code, _, err = run(capsys, *predict)
    assert code == 2
    assert_one_line(err, FULL, str(out))
    assert _whole_files(out, ".nii.gz", read_image) == 0 and not temporaries(small_disk)
    free(small_disk)
    assert run(capsys, *predict, "--continue")[0] == 0
    assert _whole_files(out, ".nii.gz", read_image) == 1
