"""Converting a task's .tar archive, and refusing archives that would write outside their folder."""

import io
import tarfile
from pathlib import Path

import pytest

from toolkit.convert.archive import safe_extract
from toolkit.convert.stage import convert_task, dataset_paths_for
from toolkit.errors import ToolkitError
from toolkit.workspace import DatasetPaths


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_archive_converts_like_its_folder(msd_tasks, tmp_path, mode, suffix):
    source = msd_tasks["2d"]
    archive = tmp_path / f"{source.name}{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(source, arcname=source.name)
    stat = archive.stat()
    paths = dataset_paths_for(archive, tmp_path / "ws", None)
    assert paths.name == source.name
    result = convert_task(archive, paths, workers=1, quiet=True)
    assert result.converted and result.report.ok and result.training_cases == 3
    assert archive.stat().st_mtime_ns == stat.st_mtime_ns and archive.stat().st_size == stat.st_size
    assert sorted(p.name for p in paths.root.iterdir()) == ["raw"]  # unpacked copy removed


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info, None


MALICIOUS = {
    "absolute path": ([_file("/tmp/evil_abs.txt")], "absolute path"),
    "dot-dot": ([_file("Task/../../evil_dotdot.txt")], "'..' component"),
    "symlink to an absolute path": ([_link("Task/link", "/etc")], "absolute path"),
    "symlink out of the folder": ([_link("Task/link", "../../outside")], "pointing out"),
    "hard link out of the folder": (
        [_link("Task/hard", "../outside", tarfile.LNKTYPE)],
        "pointing out",
    ),
    "write through a symlink": (
        [_link("Task/up", "../.."), _file("Task/up/evil_through_link.txt")],
        "pointing out",
    ),
    "fifo": ([_special("Task/pipe")], "special file"),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_archives_are_refused_before_writing(tmp_path, case):
    members, phrase = MALICIOUS[case]
    archive = tmp_path / "sub" / "Task.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.addfile(*_file("Task/dataset.json", b"{}"))  # a harmless member first
        for info, data in members:
            tar.addfile(info, data)
    before = sorted(p for p in tmp_path.rglob("*"))
    paths = DatasetPaths(tmp_path / "ws" / "Task")
    with pytest.raises(ToolkitError, match=phrase) as err:
        convert_task(archive, paths, workers=1, quiet=True)
    assert "refusing to unpack" in str(err.value) and str(archive) in str(err.value)
    after = sorted(p for p in tmp_path.rglob("*") if p != paths.root.parent)
    assert after == before  # nothing written anywhere, not even an empty dataset folder
    assert not (tmp_path.parent / "evil_dotdot.txt").exists()
    assert not list(tmp_path.parent.parent.glob("evil_*"))
    assert not Path("/tmp/evil_abs.txt").exists()


def test_link_inside_the_folder_is_fine(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(*_file("Task/data/a.txt", b"hello"))
        tar.addfile(*_link("Task/alias.txt", "data/a.txt"))
    safe_extract(archive, tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "Task" / "alias.txt").read_text() == "hello"


def test_corrupt_archive_is_one_error(tmp_path):
    archive = tmp_path / "Task.tar"
    archive.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ToolkitError, match="tar archive"):
        convert_task(archive, DatasetPaths(tmp_path / "ws" / "Task"), workers=1, quiet=True)


def test_archive_without_a_task_is_refused(tmp_path):
    archive = tmp_path / "Task.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(*_file("a/readme.txt"))
        tar.addfile(*_file("b/readme.txt"))
    with pytest.raises(ToolkitError, match="no task folder"):
        convert_task(archive, DatasetPaths(tmp_path / "ws" / "Task"), workers=1, quiet=True)
