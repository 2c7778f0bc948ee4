"""Archive checks on crafted `docker save` archives: what the platform accepts and refuses."""

import io
import json
import tarfile

import pytest

from toolkit.container.archive import check_archive, is_root_user, validate_archive
from toolkit.errors import ToolkitError

CONFIG_NAME = "0123abcd.json"


def write_archive(path, manifest, config=None, mode="w:gz", layer=True):
    with tarfile.open(path, mode) as archive:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        if layer:
            add("aaaa/layer.tar", b"\0" * 1024)
        if config is not None:
            add(CONFIG_NAME, json.dumps(config).encode())
        add("manifest.json", json.dumps(manifest).encode())
    return path


def image_config(user="algorithm", architecture="amd64"):
    return {
        "architecture": architecture,
        "os": "linux",
        "config": {"User": user, "Entrypoint": ["python"]},
    }


def one_image(tag="algo:latest"):
    return [{"Config": CONFIG_NAME, "RepoTags": [tag], "Layers": ["aaaa/layer.tar"]}]


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tar", "w"), (".tar.xz", "w:xz")])
def test_good_archive_passes_in_every_accepted_format(tmp_path, suffix, mode):
    path = write_archive(tmp_path / f"image{suffix}", one_image(), image_config(), mode=mode)
    report = check_archive(path)
    assert report.ok and report.images == 1
    assert (report.user, report.architecture, report.os, report.layers) == (
        "algorithm",
        "amd64",
        "linux",
        1,
    )
    assert report.tags == ["algo:latest"]


def test_two_images_are_refused(tmp_path):
    manifest = one_image("a:1") + one_image("b:1")
    report = validate_archive(write_archive(tmp_path / "two.tar.gz", manifest, image_config()))
    assert not report.ok
    assert any("holds 2 images" in p for p in report.problems)


@pytest.mark.parametrize("user", ["", "root", "0", "root:root", "0:0"])
def test_root_or_unset_user_is_refused(tmp_path, user):
    path = write_archive(tmp_path / "root.tar.gz", one_image(), image_config(user=user))
    with pytest.raises(ToolkitError, match="run as root"):
        check_archive(path)


def test_arm64_is_refused(tmp_path):
    report = validate_archive(
        write_archive(tmp_path / "arm.tar.gz", one_image(), image_config(architecture="arm64"))
    )
    assert report.problems == ["architecture is arm64; the platform runs amd64 only"]


def test_several_problems_are_reported_together(tmp_path):
    path = write_archive(
        tmp_path / "bad.tar.gz", one_image(), image_config(user="root", architecture="arm64")
    )
    with pytest.raises(ToolkitError) as caught:
        check_archive(path)
    assert "root" in str(caught.value) and "arm64" in str(caught.value)


def test_missing_config_and_missing_manifest(tmp_path):
    report = validate_archive(write_archive(tmp_path / "noconfig.tar.gz", one_image(), None))
    assert any("configuration" in p and "missing" in p for p in report.problems)
    with tarfile.open(tmp_path / "nomanifest.tar", "w") as archive:
        info = tarfile.TarInfo("x.txt")
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(ToolkitError, match="no manifest.json"):
        validate_archive(tmp_path / "nomanifest.tar")


def test_not_an_archive_and_wrong_suffix(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(ToolkitError, match="not a readable image archive"):
        validate_archive(junk)
    zipped = write_archive(tmp_path / "image.zip", one_image(), image_config(), mode="w")
    assert any("file name must end" in p for p in validate_archive(zipped).problems)


def test_root_user_rule():
    assert is_root_user("") and is_root_user("root") and is_root_user("0:1000")
    assert (
        not is_root_user("algorithm")
        and not is_root_user("1000:1000")
        and not is_root_user("rootless")
    )
