"""The container's entrypoint: the platform's input layout, its outputs, its failures.

The end-to-end tests run the exported entrypoint as a subprocess with /input and /output
mapped to folders (what `--no-build` and `test-container --dry-run` do), on a tiny model.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from container_helpers import CASES, make_dataset, tiny_ensemble, write_selection

from toolkit.cli import app
from toolkit.container import wheels
from toolkit.container.context import ExportOptions, write_context
from toolkit.container.entrypoint import label_volumes, to_output_labels
from toolkit.container.interfaces import shorthand_interface
from toolkit.container.job_inputs import find_image, find_inputs, input_folders
from toolkit.container.spec import AlgorithmSpec
from toolkit.container.testrun import (
    check_output,
    cross_validation_cases,
    inputs_json_document,
    lay_out_case,
    run_dry,
    test_case,
)
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry, read_channels, write_image
from toolkit.workspace import DatasetPaths, ExportPaths

LABELS = {"background": 0, "a": 1, "b": 2}
SPEC = AlgorithmSpec(
    "D",
    ["T2", "ADC"],
    LABELS,
    [shorthand_interface(["t2-image", "adc-image"], "segmentation", ["T2", "ADC"], LABELS)],
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- finding inputs ---------------------------------------------------------------------


def test_inputs_json_gives_the_folders_in_channel_order(tmp_path):
    names = {"t2-image": "x.mha", "adc-image": "y.mha"}
    document = inputs_json_document("c", SPEC.interfaces[0], names)
    document[0]["interface"]["relative_path"] = "images/somewhere-else"  # read, not assumed
    (tmp_path / "inputs.json").write_text(json.dumps(document[::-1]))
    touch(tmp_path / "images/somewhere-else/3f2a.mha")
    touch(tmp_path / "images/adc-image/77.tif")
    assert input_folders(tmp_path, SPEC) == [
        tmp_path / "images/somewhere-else",
        tmp_path / "images/adc-image",
    ]
    assert [p.name for p in find_inputs(tmp_path, SPEC)] == ["3f2a.mha", "77.tif"]


def test_without_inputs_json_the_slug_folders_are_globbed(tmp_path):
    touch(tmp_path / "images/t2-image/a.nii.gz")
    touch(tmp_path / "images/adc-image/b.mha")
    touch(tmp_path / "images/adc-image/.hidden.mha")
    assert [p.name for p in find_inputs(tmp_path, SPEC)] == ["a.nii.gz", "b.mha"]


def test_input_problems_name_what_is_missing(tmp_path):
    touch(tmp_path / "images/t2-image/a.mha")
    touch(tmp_path / "images/other/b.mha")
    with pytest.raises(
        ToolkitError, match=r"no input folder images/adc-image/ \(found \['other', 't2-image'\]"
    ):
        find_inputs(tmp_path, SPEC)
    (tmp_path / "inputs.json").write_text(
        json.dumps(inputs_json_document("c", SPEC.interfaces[0], {"t2-image": "a"})[:1])
    )
    with pytest.raises(
        ToolkitError, match=r"lists input socket\(s\) \[t2-image\]; .* take \[t2-image, adc-image\]"
    ):
        find_inputs(tmp_path, SPEC)
    (tmp_path / "inputs.json").write_text("{not json")
    with pytest.raises(ToolkitError, match="not valid JSON"):
        find_inputs(tmp_path, SPEC)
    touch(tmp_path / "two/a.mha")
    touch(tmp_path / "two/b.mha")
    with pytest.raises(ToolkitError, match="holds 2 images"):
        find_image(tmp_path / "two")
    touch(tmp_path / "none/readme.txt")
    with pytest.raises(ToolkitError, match="holds no image"):
        find_image(tmp_path / "none")


# --- outputs ----------------------------------------------------------------------------


def test_label_volumes_use_the_spacing():
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :2] = 1
    geometry = Geometry((0.5, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 3, 2))
    volumes = label_volumes(labels, geometry, SPEC)
    assert [(v.name, v.voxels, v.volume_ml) for v in volumes] == [("a", 2, 0.002), ("b", 0, 0.0)]


def test_output_labels_are_uint8_and_declared():
    assert to_output_labels(np.array([[[0, 2]]], np.int64), SPEC).dtype == np.uint8
    with pytest.raises(ToolkitError, match=r"label values \[7\]"):
        to_output_labels(np.array([[[0, 7]]]), SPEC)


def test_check_output_finds_what_the_platform_refuses(tmp_path):
    geometry = Geometry((1.0, 1.0, 2.0), (1, 2, 3), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 3, 2))
    labels = {"background": 0, "a": 1}
    spec = AlgorithmSpec(
        "D", ["T2"], labels, [shorthand_interface(["t2-image"], "segmentation", ["T2"], labels)]
    )
    out = tmp_path / "out"
    folder = out / "images/segmentation"
    write_image(folder / "output.mha", np.ones((2, 3, 4), np.uint8), geometry)
    (out / "results.json").write_text("{}")
    labels, problems = check_output(out, spec, geometry)
    assert problems == [] and labels.shape == (2, 3, 4)
    (out / "results.json").write_text('{"x": NaN}')
    write_image(folder / "second.mha", np.ones((2, 3, 4), np.uint8), geometry)
    _, problems = check_output(out, spec, geometry)
    assert any("holds 2 files" in p for p in problems)
    assert any("not valid JSON" in p for p in problems)
    assert any("unexpected files" in p for p in problems)
    (folder / "second.mha").unlink()
    (out / "results.json").write_text("[]")
    write_image(folder / "output.mha", np.full((2, 3, 4), 3, np.int16), geometry)
    _, problems = check_output(out, spec, geometry)
    assert any("16-bit signed integer" in p or "int16" in p.lower() for p in problems)
    assert any("undeclared label values [3]" in p for p in problems)
    other = Geometry((1.0, 1.0, 3.0), (1, 2, 3), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 3, 2))
    write_image(folder / "output.mha", np.ones((2, 3, 4), np.uint8), other)
    _, problems = check_output(out, spec, geometry)
    assert any("geometry differs" in p for p in problems)


# --- the entrypoint as a subprocess on a tiny model ------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    paths = make_dataset(tmp_path_factory.mktemp("ws"), folds=(0,))
    export = ExportPaths(paths.export)
    # runtime requirements are not what these tests are about; the import probe is slow
    requirements = ["torch==2.13.0+cpu", "numpy==2.4.6"]
    original = wheels.runtime_requirements
    wheels.runtime_requirements = lambda device: requirements
    try:
        write_context(
            paths,
            tiny_ensemble((0,)),
            ExportOptions(tag="algo:1", base_image="b", runtime="torch"),
            export,
        )
    finally:
        wheels.runtime_requirements = original
    return paths, export


def test_dry_run_writes_a_valid_output_equal_to_the_reference(exported):
    paths, export = exported
    case = cross_validation_cases(paths, 1)[0]
    result = test_case(case, paths, export, lambda i, o: run_dry(export, i, o, 600), "dry-run")
    assert result.ok, result
    assert result.identical and result.differing_voxels == 0
    assert result.peak_memory_mb and result.peak_memory_mb > 50
    assert result.process_peak_mb and 0 < result.job_seconds <= result.seconds
    output = export.run_dir(case.case) / "output"
    image = sitk.ReadImage(str(output / "images/segmentation/output.mha"))
    assert image.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    _, geometry = read_channels(case.images)
    assert Geometry.of(image) == geometry  # the input's exact geometry, non-identity direction
    results = json.loads((output / "results.json").read_text())
    assert [v["name"] for v in results["labels"]] == ["blob", "rim"]
    assert (
        results["configurations"] == ["3d_fullres"]
        and results["postprocessing"]["largest_component_foreground"]
    )


def test_failures_exit_non_zero_with_one_clear_line(exported, tmp_path):
    _, export = exported
    spec = AlgorithmSpec.load(export.algorithm_json)
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    (input_dir / "images" / "wrong-slug").mkdir(parents=True)
    output_dir.mkdir()
    command = [
        sys.executable,
        str(export.entrypoint),
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--model",
        str(export.model),
        "--algorithm",
        str(export.algorithm_json),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert (
        f"no input folder images/{spec.input_slugs[0]}/" in result.stderr.strip().splitlines()[-1]
    )
    assert not any(output_dir.iterdir())
    # a model folder without ensemble.json
    touch(input_dir / "images" / spec.input_slugs[0] / "x.mha")
    command[command.index("--model") + 1] = str(tmp_path)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "ensemble.json not found" in result.stderr


def test_a_fold_all_model_is_exported_and_runs(tmp_path, monkeypatch):
    paths = make_dataset(tmp_path / "ws", folds=(0,))
    model = paths.model_dir("3d_fullres")
    (model / "fold_0").rename(model / "fold_all")
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device: ["numpy==2.4.6"])
    export = ExportPaths(paths.export)
    write_context(
        paths,
        tiny_ensemble(("all",)),
        ExportOptions(tag="algo:1", base_image="b", runtime="torch"),
        export,
    )
    assert (
        DatasetPaths(export.model).fold_dir("3d_fullres", "all") / "checkpoint_final.pt"
    ).is_file()
    case = cross_validation_cases(paths, 1)[0]
    result = test_case(case, paths, export, lambda i, o: run_dry(export, i, o, 600), "dry-run")
    assert result.ok and result.identical, result


def test_platform_layout_of_a_case(exported):
    paths, export = exported
    case = cross_validation_cases(paths, 1, [CASES[3]])[0]
    spec = AlgorithmSpec.load(export.algorithm_json)
    input_dir, output_dir = lay_out_case(case, spec.interfaces[0], export.run_dir(case.case))
    document = json.loads((input_dir / "inputs.json").read_text())
    assert [e["interface"]["slug"] for e in document] == spec.input_slugs
    (image,) = (input_dir / "images" / spec.input_slugs[0]).iterdir()
    assert image.suffix == ".mha" and image.name == f"{document[0]['image']['pk']}.mha"
    assert list(output_dir.iterdir()) == [] and (output_dir.stat().st_mode & 0o777) == 0o777
    with pytest.raises(ToolkitError, match="not training cases"):
        cross_validation_cases(paths, 1, ["nope"])


def test_validation_cases_are_taken_round_robin_over_folds(exported):
    paths, _ = exported
    assert [c.case for c in cross_validation_cases(paths, 3)] == CASES[:3]


def test_cli_no_build_and_dry_run_test(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    paths = make_dataset(tmp_path / "ws", folds=(0,))
    write_selection(paths, folds=(0,))
    # the default runtime (openvino on the CPU): a lean image; its requirements are measured
    # in test_container_lean.py, the import probe is slow
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device, **_: ["numpy==2.4.6"])
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "export-container",
            paths.name,
            "-w",
            str(tmp_path / "ws"),
            "--no-build",
            "--input-slug",
            "t2-weighted-mri",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(ExportPaths(paths.export).record.read_text())
    assert record["built"] is False and record["test_run"]["identical"] is True
    assert record["runtime"] == "openvino"
    bundle = DatasetPaths(ExportPaths(paths.export).model)
    assert (bundle.fold_dir("3d_fullres", 0) / "network.onnx").is_file()
    assert (
        record["input_slugs"] == ["t2-weighted-mri"]
        and record["base_image"] == "python:3.11-slim-bookworm"
    )
    result = runner.invoke(
        app,
        [
            "test-container",
            paths.name,
            "-w",
            str(tmp_path / "ws"),
            "--dry-run",
            "--case",
            CASES[1],
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(ExportPaths(paths.export).test_report.read_text())
    assert report["ok"] and [c["case"] for c in report["cases"]] == [CASES[1]]
