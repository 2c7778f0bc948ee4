"""Staging folders: named by their maker, swept only when that process is gone."""

from __future__ import annotations

import os

import pytest

from toolkit.io.staging import (
    is_stale,
    staging_folder,
    staging_owner,
    sweep_staging,
    this_host,
)

PREFIX = ".partial."


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        (".partial.node1-123.abcd_123", ("node1", 123)),
        (".partial.my-laptop-7.x", ("my-laptop", 7)),
        (".partial.abcd1234", None),  # an earlier version's name: no owner
        (".partial.node1-12a.abcd", None),
        (".partial.node1-123", None),  # no unique part
        (".partial.-123.abcd", None),  # no host
        (".other.node1-123.abcd", None),
        ("partial.node1-123.abcd", None),
    ],
)
def test_the_owner_is_read_from_the_name(name, owner):
    assert staging_owner(name, PREFIX) == owner


def test_only_a_dead_process_of_this_host_leaves_stale_folders():
    name = ".partial.node1-4242.abcdefgh"
    assert is_stale(name, PREFIX, "node1", alive=lambda pid: False)
    assert not is_stale(name, PREFIX, "node1", alive=lambda pid: True)
    assert not is_stale(name, PREFIX, "node2", alive=lambda pid: False)  # another host's
    own = f".partial.node1-{os.getpid()}.abcdefgh"
    assert not is_stale(own, PREFIX, "node1", alive=lambda pid: False)
    assert not is_stale(".partial.abcdefgh", PREFIX, "node1", alive=lambda pid: False)


def test_a_dead_makers_folder_is_swept_and_the_others_are_kept(tmp_path, dead_pid):
    host = this_host()
    dead = tmp_path / f"{PREFIX}{host}-{dead_pid}.abcdefgh"
    (dead / "model").mkdir(parents=True)
    (dead / "model" / "weights.bin").write_bytes(b"\0" * 1000)
    alive = tmp_path / f"{PREFIX}{host}-{os.getppid()}.abcdefgh"
    other_host = tmp_path / f"{PREFIX}{host}x-{dead_pid}.abcdefgh"
    older = tmp_path / f"{PREFIX}abcdefgh"
    for folder in (alive, other_host, older):
        folder.mkdir()
    mine = staging_folder(tmp_path, PREFIX)
    assert staging_owner(mine.name, PREFIX) == (host, os.getpid())
    assert sweep_staging(tmp_path, PREFIX) == 1
    assert not dead.exists()
    assert all(f.is_dir() for f in (alive, other_host, older, mine))
    assert sweep_staging(tmp_path / "absent", PREFIX) == 0


def test_a_link_named_like_a_staging_folder_is_not_followed(tmp_path, dead_pid):
    target = tmp_path / "keep"
    target.mkdir()
    (target / "file").write_text("x")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / f"{PREFIX}{this_host()}-{dead_pid}.abcdefgh").symlink_to(target)
    assert sweep_staging(folder, PREFIX) == 0
    assert (target / "file").is_file()
