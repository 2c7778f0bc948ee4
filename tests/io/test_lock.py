"""One writer per dataset (toolkit.io.lock): a second writer is refused at once with one line
naming the holder, or waits with --wait; a killed holder leaves no stale lock; readers never
take it; every command that writes a dataset's folder holds it."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import typer

from toolkit.cli import app, main
from toolkit.cli.common import writing_into
from toolkit.io.lock import (
    DatasetBusyError,
    command_line,
    current_holder,
    dataset_writer_lock,
    parse_holder,
)
from toolkit.workspace import DatasetPaths

# a process that takes the dataset's lock, says so, and holds it for HOLD seconds
HOLDER = """
import sys, time
from pathlib import Path
from toolkit.io.lock import dataset_writer_lock
from toolkit.workspace import DatasetPaths
with dataset_writer_lock(DatasetPaths(Path(sys.argv[1])), command="toolkit run-all Synth --preset quick"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

# the commands that only read a dataset (or write outside every dataset) take no lock;
# every other command writes a dataset's folder and must offer --wait
READERS = {"status", "demo-data"}


@pytest.fixture
def dataset(tmp_path) -> DatasetPaths:
    paths = DatasetPaths(tmp_path / "workspace" / "Synth")
    paths.raw.mkdir(parents=True)
    paths.dataset_json.write_text("{}")
    return paths


def _hold(paths: DatasetPaths, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(paths.root), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_the_holders_command_and_pid(dataset):
    holder = _hold(dataset, 30)
    try:
        started = time.monotonic()
        with pytest.raises(DatasetBusyError) as refused:
            with dataset_writer_lock(dataset):
                pass
        assert time.monotonic() - started < 5  # at once, not after a wait
        line = refused.value.one_line()
        assert "\n" not in line and str(dataset.root) in line
        assert "`toolkit run-all Synth --preset quick`" in line and f"pid {holder.pid}" in line
        assert "--wait" in line
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(dataset):
    holder = _hold(dataset, 60)
    assert current_holder(dataset).pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert current_holder(dataset) is None  # the kernel's table: nobody holds it
    assert parse_holder(dataset.writer_lock.read_text()) is not None  # its record stays...
    with dataset_writer_lock(dataset) as me:  # ...but the kernel released its lock
        assert me.pid == os.getpid()
        assert parse_holder(dataset.writer_lock.read_text()) == me
    assert not dataset.writer_lock.exists()  # let go: nothing left behind


def test_wait_blocks_until_the_holder_ends(dataset):
    holder = _hold(dataset, 1.5)
    said = []
    started = time.monotonic()
    with dataset_writer_lock(dataset, wait=True, notify=said.append):
        waited = time.monotonic() - started
        # the holder removed its file when done: this lock is on the file in place now
        assert parse_holder(dataset.writer_lock.read_text()).pid == os.getpid()
    holder.wait()
    assert not dataset.writer_lock.exists()
    assert waited > 1.0  # until the holder let go, 1.5 s after it took the lock
    assert len(said) == 1 and "waiting for `toolkit run-all Synth" in said[0]


def test_the_lock_lies_beside_the_dataset_and_survives_a_replaced_folder(dataset, tmp_path):
    assert dataset.writer_lock == (tmp_path / "workspace" / ".Synth.lock").resolve()
    with dataset_writer_lock(dataset):
        os.rename(dataset.root, tmp_path / "old")  # e.g. import-model --force
        dataset.root.mkdir()
        with pytest.raises(DatasetBusyError):  # the same dataset name: still held
            with dataset_writer_lock(DatasetPaths(dataset.root)):
                pass


def test_a_command_that_writes_is_refused_with_one_line_and_exit_2(dataset, capsys):
    holder = _hold(dataset, 30)
    try:
        with pytest.raises(SystemExit) as done:
            main(["fingerprint", str(dataset.root)])
        err = capsys.readouterr().err
        assert done.value.code == 2
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
        assert f"pid {holder.pid}" in err and "toolkit run-all Synth" in err
    finally:
        holder.kill()
        holder.wait()


def test_readers_do_not_block(dataset, tmp_path):
    holder = _hold(dataset, 30)
    try:
        # status reads: it runs (and reports the missing stages) while the holder writes
        done = subprocess.run(
            [sys.executable, "-m", "toolkit", "status", str(dataset.root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "another toolkit command" not in done.stderr
        # and it says who writes the dataset now, seen without touching the lock
        assert f"being written now by `toolkit run-all Synth --preset quick` (pid {holder.pid}" in (
            " ".join(done.stdout.split())
        )
        # a prediction into a folder outside every dataset takes no lock
        with writing_into(tmp_path / "predictions", wait=False):
            pass
        # one into the dataset's folder does
        with pytest.raises(DatasetBusyError):
            with writing_into(dataset.root / "predictions", wait=False):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_the_dataset_holding_a_path(dataset, tmp_path):
    inside = dataset.root / "models" / "2d" / "fold_0" / "x.nii.gz"
    assert DatasetPaths.holding(inside).root == dataset.root.resolve()
    assert DatasetPaths.holding(tmp_path / "elsewhere" / "out") is None
    assert DatasetPaths.holding("/") is None


def test_the_holder_record_is_json_and_a_foreign_file_names_no_holder(dataset):
    with dataset_writer_lock(dataset, command="toolkit train Synth 2d 0"):
        record = json.loads(dataset.writer_lock.read_text())
        assert record["command"] == "toolkit train Synth 2d 0" and record["pid"] == os.getpid()
    assert parse_holder("") is None and parse_holder('{"pid": 1}') is None
    assert parse_holder("not json") is None


def test_the_command_line_reads_as_typed():
    assert command_line(["/venv/bin/toolkit", "run-all", "My Data"]) == "toolkit run-all 'My Data'"
    assert command_line(["/x/toolkit/__main__.py", "train"]) == "toolkit train"


def _commands() -> dict[str, object]:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_every_command_that_writes_a_dataset_offers_wait_and_readers_do_not():
    commands = _commands()
    assert READERS <= set(commands)
    for name, command in commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        if name in READERS:
            assert "--wait" not in options, name
        else:
            assert "--wait" in options, f"{name} writes a dataset's folder but takes no lock"


@pytest.mark.parametrize("name", sorted(set(_commands()) - READERS))
def test_every_writing_command_holds_the_lock(name):
    """Each writing command's function enters `writing`/`writing_into` (or passes --wait on to
    the stage that takes the lock where only it knows the dataset: import-model)."""
    source = inspect.getsource(_commands()[name].callback)  # type: ignore[attr-defined]
    assert "with writing" in source or "wait=wait" in source, name


def test_import_model_takes_the_lock_of_the_dataset_it_installs(dataset):
    """Only the install knows the dataset's name (the archive's, or --name): it takes the lock
    before it looks at, stages or replaces anything."""
    from toolkit.modelzip.install import staged_install

    filled = []
    holder = _hold(dataset, 30)
    try:
        with pytest.raises(DatasetBusyError):
            staged_install(dataset.root.parent, "Synth", True, lambda p, n: filled.append(p))
    finally:
        holder.kill()
        holder.wait()
    assert filled == [] and dataset.dataset_json.is_file()
    staged_install(dataset.root.parent, "Other", False, lambda p, n: filled.append(p))
    assert len(filled) == 1 and not DatasetPaths(dataset.root.parent / "Other").writer_lock.exists()


def test_another_users_lock_file_is_locked_read_only(dataset, monkeypatch):
    """In a shared workspace the lock file may be another user's (mode 0644): flock needs no
    write access, so the lock still keeps writers apart; only the record is left out."""
    from toolkit.io import lock

    dataset.writer_lock.write_text("")  # left by another user's killed command
    real_open = os.open

    def open_as_another_user(path, flags, *args):
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(lock.os, "open", open_as_another_user)
    with dataset_writer_lock(dataset):
        monkeypatch.setattr(lock.os, "open", real_open)
        assert current_holder(dataset).describe() == f"process {os.getpid()}"  # no record
        with pytest.raises(DatasetBusyError):
            with dataset_writer_lock(dataset):
                pass


# processes that each add 1 to a counter file N times, reading and writing it under the lock
# with --wait: a lost update would mean two held the lock at once (the holder removes the
# lock file as it lets go, and a waiter must then retake the file in place)
COUNTER = """
import sys, time
from pathlib import Path
from toolkit.io.lock import dataset_writer_lock
from toolkit.workspace import DatasetPaths
paths, counter = DatasetPaths(Path(sys.argv[1])), Path(sys.argv[2])
for _ in range(int(sys.argv[3])):
    with dataset_writer_lock(paths, wait=True):
        value = int(counter.read_text())
        time.sleep(0.002)
        counter.write_text(str(value + 1))
"""


def test_writers_that_wait_never_overlap(dataset, tmp_path):
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    writers = [
        subprocess.Popen([sys.executable, "-c", COUNTER, str(dataset.root), str(counter), "25"])
        for _ in range(4)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    assert counter.read_text() == "100" and not dataset.writer_lock.exists()


def test_only_rank_zero_of_a_torchrun_job_takes_the_lock():
    from toolkit.io.lock import is_secondary_rank

    assert not is_secondary_rank({})
    assert not is_secondary_rank({"RANK": "0", "WORLD_SIZE": "2"})
    assert is_secondary_rank({"RANK": "1", "WORLD_SIZE": "2"})
    assert not is_secondary_rank({"RANK": "1", "WORLD_SIZE": "1"})
    assert not is_secondary_rank({"RANK": "x", "WORLD_SIZE": "2"})
