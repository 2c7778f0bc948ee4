"""The real cycle, through the Docker SDK against a private podman service.

A tiny model's image is built (CPU torch from a host wheelhouse, base made with debootstrap),
run offline on a cross-validation case laid out as on the platform, compared with `toolkit
predict`, saved as `.tar.gz` and checked as the platform checks uploads; then
`test-container` runs it on more cases, and a `--model-mode tarball` export runs with the
model mounted at /opt/ml/model. The base image, the wheelhouse and the third-party layers
are cached under the toolkit cache folder ($TOOLKIT_CACHE, else ~/.cache/toolkit), so a
second run builds only the small layers.
"""

import json

import pytest
from container_helpers import CASES, make_dataset, write_selection
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.container.archive import validate_archive
from toolkit.container.base import ROOTFS_TARBALL, cache_dir, debootstrap_unavailable_reason
from toolkit.container.podman import podman_unavailable_reason
from toolkit.workspace import ExportPaths

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(1800)]

TAG = "toolkit-ci-test:latest"


def unavailable_reason() -> str | None:
    reason = podman_unavailable_reason()
    if reason is None and not (cache_dir() / "base" / ROOTFS_TARBALL).is_file():
        reason = debootstrap_unavailable_reason()
    return reason


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_image_is_built_run_offline_saved_and_accepted(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the container cycle needs podman, runc and debootstrap: {reason}")
    workspace = tmp_path / "ws"
    paths = make_dataset(workspace, folds=(0,))
    write_selection(paths, folds=(0,))
    wheelhouse = cache_dir() / "wheelhouse"
    common = ["-w", str(workspace), "--engine", "podman", "--wheelhouse", str(wheelhouse), "-q"]

    invoke("export-container", paths.name, "--tag", TAG, "--memory", "2g", *common)
    export = ExportPaths(paths.export)
    record = json.loads(export.record.read_text())
    assert record["built"] and record["image_user"] == "algorithm"
    assert record["image_architecture"] == "amd64"
    run = record["test_run"]
    assert run["mode"] == "container" and run["ok"] and run["identical"], run
    assert run["peak_memory_mb"] and run["peak_memory_mb"] > 50
    report = validate_archive(export.image_archive)
    assert report.ok and report.images == 1 and report.user == "algorithm"
    assert any(TAG.split(":")[0] in t for t in report.tags)
    print(
        f"image {record['image_bytes'] / 1e9:.2f} GB, build {record['build_seconds']} s, "
        f"save {record['save_seconds']} s, archive {report.size_bytes / 1e9:.2f} GB, "
        f"case {run['seconds']} s, peak {run['peak_memory_mb']} MB ({run['memory_source']})"
    )

    invoke(
        "test-container",
        paths.name,
        "-w",
        str(workspace),
        "--engine",
        "podman",
        "--cases",
        "2",
        "-q",
    )
    tested = json.loads(export.test_report.read_text())
    assert tested["ok"] and [c["case"] for c in tested["cases"]] == CASES[:2]
    assert all(c["identical"] and c["peak_memory_mb"] for c in tested["cases"])

    # the model outside the image, mounted where the platform extracts model.tar.gz
    out = tmp_path / "tarball-export"
    invoke(
        "export-container",
        paths.name,
        "--out",
        str(out),
        "--tag",
        TAG,
        "--model-mode",
        "tarball",
        "--no-save",
        *common,
    )
    record = json.loads(ExportPaths(out).record.read_text())
    assert record["model_mode"] == "tarball" and record["test_run"]["identical"]
    assert record["model_tarball_bytes"] > 0 and not ExportPaths(out).image_archive.exists()
