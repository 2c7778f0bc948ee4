"""Operating-system errors are one line naming the path, exit 2, never a traceback: at the
CLI's edge, in atomic writes (whatever the writer raised on a full disk) and in unpacking."""

from __future__ import annotations

import errno
import io
import os
import tarfile

import numpy as np
import pytest
from fault_helpers import assert_one_line, fill, mount_tmpfs, run, temporaries, unmount

from toolkit.errors import ToolkitError, os_error_line
from toolkit.io import atomic
from toolkit.io.atomic import atomic_path, sweep_temporaries, temporary_target, write_bytes
from toolkit.io.images import Geometry, write_image


def test_demo_data_into_a_path_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "some-file"
    blocker.write_text("x")
    code, _, err = run(capsys, "demo-data", blocker / "out", "--task", "mr", "--cases", "2")
    assert code == 2
    assert_one_line(err, f"{blocker / 'out'}", "not a directory")


def test_convert_with_a_workspace_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "some-file"
    blocker.write_text("x")
    source = tmp_path / "Task09_X"
    source.mkdir()
    code, _, err = run(capsys, "convert", source, "--workspace", blocker)
    assert code == 2
    assert_one_line(err, str(blocker))
    assert blocker.read_text() == "x"


def test_a_read_only_file_system(capsys, tmp_path):
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "1m", read_only=True)
    try:
        code, _, err = run(capsys, "demo-data", disk / "out", "--task", "mr", "--cases", "2")
    finally:
        unmount(disk)
    assert code == 2
    assert_one_line(err, str(disk / "out"), "read-only file system")


@pytest.mark.parametrize(
    "exc, phrases",
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/ws"),
            ["/data/ws: permission denied", "permissions"],
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/x.npy"),
            ["/d/x.npy: no space left", "free some space"],
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
            ["/a -> /b: invalid cross-device link"],
        ),
        (OSError(errno.EIO, "Input/output error"), ["input/output error"]),
    ],
)
def test_the_line_of_an_os_error(exc, phrases):
    line = os_error_line(exc)
    assert "\n" not in line
    for phrase in phrases:
        assert phrase in line


def test_a_writer_that_fails_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """torch and SimpleITK raise RuntimeError when the disk fills; numpy an OSError without the
    file's name: the atomic write names its target and says the disk is full."""
    target = tmp_path / "case.npy"
    monkeypatch.setattr(atomic, "_disk_full", lambda folder: True)
    with pytest.raises(OSError) as raised:
        with atomic_path(target):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists() and not temporaries(tmp_path)


def test_a_writer_error_without_a_name_gets_the_targets(tmp_path):
    target = tmp_path / "case.npy"
    with pytest.raises(OSError) as raised:
        with atomic_path(target):
            raise OSError(errno.EIO, "Input/output error")
    assert raised.value.errno == errno.EIO and raised.value.filename == str(target)


@pytest.mark.parametrize("error", [ValueError("a bug"), ToolkitError("a user's problem")])
def test_other_errors_pass_unchanged(tmp_path, error):
    with pytest.raises(type(error)):
        with atomic_path(tmp_path / "x.json"):
            raise error
    assert not temporaries(tmp_path)


def test_a_real_full_disk_in_numpy_and_in_a_plain_write(small_disk):
    fill(small_disk, 8 * 1024)
    with pytest.raises(OSError) as raised:
        with atomic_path(small_disk / "big.npy") as tmp:
            np.save(tmp, np.zeros(1 << 20))
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(small_disk / "big.npy")
    with pytest.raises(OSError) as raised:
        write_bytes(small_disk / "big.bin", b"\0" * (1 << 20))
    assert raised.value.errno == errno.ENOSPC
    assert not (small_disk / "big.npy").exists() and not temporaries(small_disk)


def test_a_nifti_written_onto_a_full_disk_never_becomes_the_target(small_disk):
    """ITK's NIfTI writer reports success on a full disk and leaves an empty file."""
    target = small_disk / "CASE.nii.gz"
    geometry = Geometry(
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=tuple(np.eye(3).ravel()),
        size=(32, 32, 16),
    )
    fill(small_disk, 0)
    with pytest.raises(OSError) as raised:
        write_image(target, np.ones((16, 32, 32), np.uint8), geometry)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists() and not temporaries(small_disk)


def test_unpacking_onto_a_full_disk_says_the_disk_is_full(capsys, tmp_path, small_disk):
    archive = tmp_path / "Task09_Big.tar"
    with tarfile.open(archive, "w") as tar:
        payload = os.urandom(1 << 20)
        member = tarfile.TarInfo("Task09_Big/imagesTr/big.nii.gz")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    fill(small_disk, 64 * 1024)
    code, _, err = run(capsys, "convert", archive, "--workspace", small_disk / "ws")
    assert code == 2
    assert_one_line(err, "no space left on device", str(small_disk / "ws"))
    assert "corrupt" not in err


def test_only_temporaries_are_swept(tmp_path):
    keep = ["CASE.nii.gz", ".hidden", ".x.tmp", "notes.tmp.txt", ".a.b.tmp"]
    gone = [
        ".CASE.nii.gz.ab12_xyz.tmp.nii.gz",
        ".summary.json.k3j4h5g6.tmp.json",
        ".f.q1w2e3r4.tmp",
    ]
    for name in keep + gone:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / gone[0]).write_text("x")
    assert sweep_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "sub"])
    assert sweep_temporaries(tmp_path, recursive=True) == 1
    assert temporary_target(gone[0]) == "CASE.nii.gz" and temporary_target(keep[0]) is None


def test_a_sweep_limited_to_targets(tmp_path):
    mine, theirs = ".A.nii.gz.abcdefgh.tmp.nii.gz", ".B.nii.gz.abcdefgh.tmp.nii.gz"
    for name in (mine, theirs):
        (tmp_path / name).write_text("x")
    assert sweep_temporaries(tmp_path, targets={"A.nii.gz"}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [theirs]


def test_atomic_writes_make_names_the_sweep_knows(tmp_path):
    seen = []
    with atomic_path(tmp_path / "plans.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert temporary_target(seen[0]) == "plans.json"
