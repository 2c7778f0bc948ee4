"""The real cycle, through the Docker SDK against a private podman service.

A smoke-trained model (`run-all --preset smoke` on a small synthetic two-channel MR task,
3d_fullres, fold 0) is exported: its image (the default on the CPU: OpenVINO's lean image,
from a host wheelhouse, base made with debootstrap) is built, run offline on a
cross-validation case laid out as on the platform, compared with `toolkit predict`, saved as
`.tar.gz` and checked as the platform checks uploads. Then a torch image (CPU torch) with
`--model-mode tarball` runs with the model mounted at /opt/ml/model (under the same tag), and
`test-container` runs the first export on another case, loading its saved archive because
the tag has moved. The base image, the wheelhouse and the third-party layers are cached under
the toolkit cache folder ($TOOLKIT_CACHE, else ~/.cache/toolkit), so a second run builds only
the small layers.
"""

import json

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.container.archive import validate_archive
from toolkit.container.base import ROOTFS_TARBALL, cache_dir, debootstrap_unavailable_reason
from toolkit.container.podman import podman_unavailable_reason
from toolkit.convert.stage import convert_task
from toolkit.io.dataset_json import training_cases
from toolkit.pipeline.runner import RunOptions, run_all
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths, ExportPaths

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(2400)]

TAG = "toolkit-ci-test:latest"
# issue 26's targets for a lean image, uncompressed and saved + gzipped (the torch image:
# 1.35 / 0.42 GB); met without SimpleITK (0.27 GB installed), which the lean image leaves out
LEAN_IMAGE_BYTES = 0.5e9
LEAN_ARCHIVE_BYTES = 0.2e9
SMOKE = RunOptions(
    preset="smoke",
    configs=("3d_fullres",),
    folds=(0,),
    epochs=1,
    iters_per_epoch=2,
    val_iters=1,
    device="cpu",
    workers=1,
    quiet=True,
)


def unavailable_reason() -> str | None:
    reason = podman_unavailable_reason()
    if reason is None and not (cache_dir() / "base" / ROOTFS_TARBALL).is_file():
        reason = debootstrap_unavailable_reason()
    return reason


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def smoke_trained(root) -> DatasetPaths:
    task = generate_task("mr", root / "source", n_cases=6, seed=5, shape=(16, 32, 32), n_test=0)
    paths = DatasetPaths(root / "workspace" / "Synth")
    convert_task(task, paths, workers=1, quiet=True)
    run_all(paths, SMOKE)
    return paths


def phase_interfaces(paths: DatasetPaths) -> dict:
    """Two interfaces whose folders are not their slugs: T2 and ADC in, one segmentation out."""
    labels = json.loads(paths.dataset_json.read_text())["labels"]
    segments = [{"name": n, "voxel_value": v, "visible": True} for n, v in labels.items() if v]

    def image(slug, path, kind="Image", **extra):
        return {"slug": slug, "kind": kind, "relative_path": path} | extra

    return {
        "algorithm_interfaces": [
            {
                "inputs": [
                    image("transverse-t2-mri", "images/transverse-t2-scan"),
                    image("adc-map", "images/apparent-diffusion"),
                ],
                "outputs": [
                    image("lesion", "images/lesion-mask", "Segmentation", overlay_segments=segments)
                ],
            },
            {
                "inputs": [image("adc-second", "images/adc-2"), image("t2-second", "images/t2-2")],
                "outputs": [
                    image("lesion-2", "images/lesion-2", "Segmentation", overlay_segments=segments)
                ],
            },
        ]
    }


def test_smoke_trained_image_is_built_run_offline_saved_and_accepted(tmp_path, monkeypatch):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the container cycle needs podman, runc and debootstrap: {reason}")
    # the image picks its precision from the real CPU: so does the reference it is checked by
    monkeypatch.delenv("TOOLKIT_CPU_FLAGS")
    paths = smoke_trained(tmp_path)
    wheelhouse = cache_dir() / "wheelhouse"
    common = ["-w", str(paths.root.parent), "--engine", "podman", "--wheelhouse", str(wheelhouse)]
    interfaces = tmp_path / "phase.json"
    interfaces.write_text(json.dumps(phase_interfaces(paths)))

    invoke(
        "export-container",
        paths.name,
        "--tag",
        TAG,
        "--memory",
        "4g",
        "--interfaces",
        str(interfaces),
        *common,
        "-q",
    )
    export = ExportPaths(paths.export)
    record = json.loads(export.record.read_text())
    assert record["built"] and record["image_user"] == "algorithm"
    assert record["runtime"] == "openvino"  # the default on the CPU: the lean image
    assert record["image_architecture"] == "amd64" and "offline build" in record["wheels"]
    assert record["input_slugs"] == ["transverse-t2-mri", "adc-map"]  # channel order
    assert "--no-index" in export.dockerfile.read_text()
    runs = record["test_runs"]
    assert [(r["interface"], r["ok"], r["identical"]) for r in runs] == [
        (1, True, True),
        (2, True, True),
    ], runs
    run = runs[0]
    assert run["mode"] == "container"
    # the container read and wrote exactly the sockets' relative paths
    first, second = export.run_dir(run["case"]), export.run_dir(f"{run['case']}.interface-2")
    assert len(list((first / "input/images/transverse-t2-scan").glob("*.mha"))) == 1
    assert (first / "output/images/lesion-mask/output.mha").is_file()
    assert (second / "output/images/lesion-2/output.mha").is_file()
    assert json.loads((second / "output/results.json").read_text())["interface"] == 2
    assert "## Cross-validation" in export.model_card.read_text()
    assert run["peak_memory_mb"] and run["peak_memory_mb"] > 50
    report = validate_archive(export.image_archive)
    assert report.ok and report.images == 1 and report.user == "algorithm"
    assert report.architecture == "amd64" and any(TAG.split(":")[0] in t for t in report.tags)
    print(
        f"\nimage {record['image_bytes'] / 1e9:.2f} GB ({report.size_bytes / 1e9:.2f} GB gzipped), "
        f"build {record['build_seconds']} s, save {record['save_seconds']} s; case "
        f"{run['case']}: {run['seconds']} s in the container ({run['job_seconds']} s in the job), "
        f"peak {run['peak_memory_mb']} MB (process {run['process_peak_mb']} MB), "
        f"toolkit predict here {run['reference_seconds']} s"
    )

    # a torch image, its model outside the image, mounted where the platform extracts
    # model.tar.gz; the same tag now names this second image
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
        "--runtime",
        "torch",
        "--no-save",
        *common,
        "-q",
    )
    tarball = ExportPaths(out)
    record = json.loads(tarball.record.read_text())
    assert record["model_mode"] == "tarball" and record["test_run"]["identical"]
    assert record["runtime"] == "torch" and "torch==" in tarball.requirements.read_text()
    assert record["model_tarball_bytes"] > 0 and not tarball.image_archive.exists()

    # test-container of the first export sees the tag moved and loads its saved archive
    # (the tarball image would fail here: nothing is mounted at /opt/ml/model)
    other = next(c.case for c in training_cases(paths) if c.case != run["case"])
    invoke(
        "test-container",
        paths.name,
        "-w",
        str(paths.root.parent),
        "--engine",
        "podman",
        "--case",
        other,
        "-q",
    )
    tested = json.loads(export.test_report.read_text())
    assert tested["ok"] and [c["case"] for c in tested["cases"]] == [other]
    assert tested["cases"][0]["identical"] and tested["cases"][0]["peak_memory_mb"]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_a_lean_image_without_torch_is_built_run_and_accepted(runtime, tmp_path):
    """``--runtime openvino|onnxruntime``: ONNX networks, no torch in the image, labels identical
    to ``toolkit predict --backend RUNTIME``, at most the lean bounds above."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the container cycle needs podman, runc and debootstrap: {reason}")
    pytest.importorskip("onnx")
    from container_helpers import make_dataset, write_selection

    paths = make_dataset(tmp_path / "ws", folds=(0, 1))
    write_selection(paths, folds=(0, 1))
    wheelhouse = cache_dir() / "wheelhouse"
    invoke(
        "export-container",
        paths.name,
        "-w",
        str(tmp_path / "ws"),
        "--engine",
        "podman",
        "--wheelhouse",
        str(wheelhouse),
        "--runtime",
        runtime,
        "--tag",
        f"toolkit-ci-lean-{runtime}:latest",
        "-q",
    )
    export = ExportPaths(paths.export)
    record = json.loads(export.record.read_text())
    assert record["built"] and record["runtime"] == runtime and record["image_user"] == "algorithm"
    (run,) = record["test_runs"]
    assert run["mode"] == "container" and run["ok"] and run["identical"], run
    requirements = export.requirements.read_text()
    assert "torch" not in requirements and runtime in requirements
    report = validate_archive(export.image_archive)
    assert report.ok and report.user == "algorithm"
    print(
        f"\n{runtime} image {record['image_bytes'] / 1e9:.3f} GB "
        f"({report.size_bytes / 1e9:.3f} GB gzipped); container start to output "
        f"{run['seconds']} s ({run['job_seconds']} s in the job), peak {run['peak_memory_mb']} MB"
    )
    assert record["image_bytes"] <= LEAN_IMAGE_BYTES, record["image_bytes"]
    assert report.size_bytes <= LEAN_ARCHIVE_BYTES, report.size_bytes
