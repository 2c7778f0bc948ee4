"""run-all against kills and a second run-all: a run SIGKILLed at seeded random atomic writes
resumes each time to the uninterrupted run's selection.json; two run-alls on one dataset give
one complete result and one clear refusal, and a third with --wait waits its turn."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import temporaries

from toolkit.convert.stage import convert_task
from toolkit.io.lock import parse_holder
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("kill_at_write.py")
# the smallest run-all that still runs every stage: one configuration, one fold, two epochs
# (a checkpoint between them), every write in this process (one worker)
RUN_ALL = [
    "--preset",
    "smoke",
    "--configs",
    "2d",
    "--folds",
    "0",
    "--epochs",
    "2",
    "--iters-per-epoch",
    "2",
    "--val-iters",
    "1",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--workers",
    "1",
    "--quiet",
]
KILL_POINTS = 5
KILL_SEED = 24
ENV = {**os.environ, "TOOLKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _fresh(converted: DatasetPaths, target: Path) -> DatasetPaths:
    """A copy of the converted dataset: raw data only, as before a first run-all."""
    shutil.copytree(converted.root, target / converted.name)
    return DatasetPaths(target / converted.name)


def _run_all(
    paths: DatasetPaths, *extra: str, kill_at: int | None = None, count: Path | None = None
):
    if kill_at is None:
        command = [sys.executable, "-m", "toolkit", "run-all", str(paths.root), *RUN_ALL, *extra]
    else:
        command = [sys.executable, str(RUNNER), str(kill_at), str(count or ""), "run-all"]
        command += [str(paths.root), *RUN_ALL, *extra]
    return command


def _selection(paths: DatasetPaths) -> dict:
    return json.loads(paths.selection_json.read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> DatasetPaths:
    root = tmp_path_factory.mktemp("faults")
    task = generate_task("mr", root / "source", n_cases=6, seed=3, shape=(16, 32, 32), n_test=1)
    paths = DatasetPaths(root / "workspace" / "Synth")
    convert_task(task, paths, workers=1, quiet=True)
    return paths


@pytest.fixture(scope="module")
def baseline(converted, tmp_path_factory) -> tuple[dict, int]:
    """The uninterrupted run's selection.json and how many atomic writes it made."""
    paths = _fresh(converted, tmp_path_factory.mktemp("baseline"))
    count = paths.root.parent / "writes.txt"
    done = subprocess.run(
        _run_all(paths, kill_at=0, count=count), env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _selection(paths), int(count.read_text())


def test_run_all_killed_at_random_writes_resumes_to_the_same_selection(
    converted, baseline, tmp_path
):
    selection, writes = baseline
    # one seeded random write in each fifth of the run: every stage's writes get their turn
    # (preprocessing alone makes a third of them)
    rng = random.Random(KILL_SEED)
    bounds = [1 + writes * i // KILL_POINTS for i in range(KILL_POINTS + 1)]
    points = [rng.randrange(low, high) for low, high in zip(bounds, bounds[1:], strict=False)]
    outcomes = []
    for point in points:
        paths = _fresh(converted, tmp_path / f"kill-{point}")
        killed = subprocess.run(
            _run_all(paths, kill_at=point),
            env=ENV,
            capture_output=True,
            text=True,
            start_new_session=True,
        )
        assert killed.returncode == -9, (point, killed.stderr[-3000:])
        left = len(temporaries(paths.root))
        # the killed run held the dataset's lock: the kernel let go of it, nothing to clean
        resumed = subprocess.run(_run_all(paths), env=ENV, capture_output=True, text=True)
        assert resumed.returncode == 0, (point, resumed.stderr[-3000:])
        assert not temporaries(paths.root), point  # swept by the stages that ran again
        assert _selection(paths) == selection, point
        where = killed.stderr.strip().splitlines()[-1].replace(str(paths.root), "")
        outcomes.append(f"write {point}/{writes} ({where}): {left} temporary left, resumed: same")
    print(f"{KILL_POINTS} kill points (seed {KILL_SEED}):", *outcomes, sep="\n  ")


def test_two_run_alls_on_one_dataset_one_result_one_refusal(converted, baseline, tmp_path):
    paths = _fresh(converted, tmp_path)
    first = subprocess.Popen(
        _run_all(paths), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if paths.writer_lock.is_file() and parse_holder(paths.writer_lock.read_text()):
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first run-all ended before the second started"
        started = time.monotonic()
        second = subprocess.run(_run_all(paths), env=ENV, capture_output=True, text=True)
        refused_in = time.monotonic() - started
        # with --wait a third one waits for the first, then finds everything done
        third = subprocess.Popen(
            _run_all(paths, "--wait"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
        third_out, third_err = third.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode == 2
    err = second.stderr
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"pid {first.pid}" in err and "run-all" in err and str(paths.root) in err
    assert refused_in < 60  # at once: no training, no waiting (a Python start on a busy machine)
    assert third.returncode == 0, third_err.decode()[-3000:]
    assert _selection(paths) == baseline[0]  # the first run's result, complete and correct


def test_ray_workers_train_under_the_run_alls_lock(converted, baseline, tmp_path, capsys):
    """The run-all holds the lock; its Ray tasks (trainings, per-case work) write under it and
    never take it (one that did would be refused by its own parent)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'toolkit[ray]')")
    from toolkit.cli import main

    paths = _fresh(converted, tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        with pytest.raises(SystemExit) as done:
            main(["run-all", str(paths.root), *RUN_ALL, "--executor", "ray"])
    finally:
        ray.shutdown()
    assert done.value.code in (0, None), capsys.readouterr().err[-3000:]
    assert not paths.writer_lock.exists()  # let go at the end, nothing left behind
    chosen, expected = _selection(paths), baseline[0]
    assert (chosen["candidate"], chosen["postprocessing"]) == (
        expected["candidate"],
        expected["postprocessing"],
    )
