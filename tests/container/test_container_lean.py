"""A lean image (``export-container --runtime openvino|onnxruntime``): ONNX networks, no torch.

The context is written and its entrypoint dry-run here (no engine): the model folder holds
each fold's ``network.onnx`` and no checkpoint, the requirements no torch, and the job's
labels are identical to ``toolkit predict --backend RUNTIME`` on the same ONNX networks.
The image itself is built and run with podman in ``test_container_image.py``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from container_helpers import CASES, make_dataset, write_selection
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.container import wheels
from toolkit.container.context import ExportOptions, dockerfile_values
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec, default_runtime
from toolkit.container.testrun import entrypoint_command
from toolkit.errors import ToolkitError
from toolkit.workspace import DatasetPaths, ExportPaths

pytest.importorskip("onnx")


def test_lean_requirements_hold_the_runtime_and_no_torch():
    for runtime in ("openvino", "onnxruntime"):
        requirements = wheels.runtime_requirements("cpu", runtime=runtime)
        names = {r.split("==")[0].lower() for r in requirements}
        assert runtime in names and "torch" not in names, requirements
        assert {"numpy", "scipy"} <= names and "simpleitk" not in names, requirements
        assert "sympy" not in names  # declared by onnxruntime, imported by no job
    torch_image = wheels.runtime_requirements("cpu")
    assert torch_image[0].startswith("torch==")
    assert "simpleitk" in {r.split("==")[0].lower() for r in torch_image}
    command = wheels.pip_download_command(["onnxruntime==1"], wheels.Path("d"), no_deps=True)
    assert "--no-deps" in command


def test_a_lean_dry_run_cannot_import_what_its_image_lacks(tmp_path):
    """The dry run of a lean export runs its entrypoint without torch and SimpleITK."""
    script = tmp_path / "entrypoint.py"
    script.write_text(
        "import sys\n"
        "for name in ('numpy', 'SimpleITK', 'torch'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "        print(name, 'yes')\n"
        "    except ImportError:\n"
        "        print(name, 'no')\n"
        "print(sys.argv[1:])\n"
    )
    for runtime, answer in [("openvino", "no"), ("onnxruntime", "no"), ("torch", "yes")]:
        command = entrypoint_command(script, runtime) + ["--input", "x"]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == [
            "numpy yes",
            f"SimpleITK {answer}",
            f"torch {answer}",
            "['--input', 'x']",
        ], (runtime, out)


def test_the_default_runtime_is_openvino_on_the_cpu_and_torch_for_cuda():
    assert default_runtime("cpu") == "openvino" and default_runtime("cuda") == "torch"
    assert ExportOptions(tag="a:1", base_image="b").runtime == "openvino"
    assert ExportOptions(tag="a:1", base_image="b", device="cuda").runtime == "torch"
    assert ExportOptions(tag="a:1", base_image="b", runtime="torch").runtime == "torch"


def test_lean_options_are_checked():
    with pytest.raises(ToolkitError, match="--runtime must be one of"):
        ExportOptions(tag="a:1", base_image="b", runtime="tensorrt")
    with pytest.raises(ToolkitError, match="runs on the CPU"):
        ExportOptions(tag="a:1", base_image="b", runtime="openvino", device="cuda")
    values = dockerfile_values(
        ExportOptions(tag="a:1", base_image="b", runtime="openvino"),
        "D",
        EnsembleSpec(configurations=["3d_fullres"], folds=[0]),
    )
    assert values["RUNTIME"] == "openvino" and values["PIP_SOURCE"].endswith("--no-deps")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_lean_export_dry_run_equals_predict_with_that_backend(runtime, tmp_path):
    paths = make_dataset(tmp_path / "ws", folds=(0, 1))
    write_selection(paths, folds=(0, 1))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "export-container",
            paths.name,
            "-w",
            str(tmp_path / "ws"),
            "--no-build",
            "--runtime",
            runtime,
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    export = ExportPaths(paths.export)
    record = json.loads(export.record.read_text())
    assert record["runtime"] == runtime and record["test_run"]["identical"] is True
    assert AlgorithmSpec.load(export.algorithm_json).runtime == runtime
    bundle = DatasetPaths(export.model)
    for fold in (0, 1):
        assert (bundle.fold_dir("3d_fullres", fold) / "network.onnx").is_file()
        assert (bundle.fold_dir("3d_fullres", fold) / "network.json").is_file()
    assert not list(export.model.rglob("*.pt"))
    requirements = export.requirements.read_text()
    assert "torch" not in requirements and runtime in requirements
    assert f"--runtime {runtime}" in export.model_card.read_text()
    # a second case through test-container --dry-run
    result = runner.invoke(
        app,
        ["test-container", paths.name, "-w", str(tmp_path / "ws"), "--dry-run"]
        + ["--case", CASES[1], "-q"],
    )
    assert result.exit_code == 0, result.output
    # what the lean image cannot read (a TIFF; a damaged .mha): one line naming the file, exit 2
    spec = AlgorithmSpec.load(export.algorithm_json)
    for name, content, message in [
        ("case.tif", b"II*\x00" + bytes(64), "export the container with --runtime torch"),
        (
            "case.mha",
            b"NDims = 3\nDimSize = 9 9 9\nElementType = MET_UCHAR\n"
            b"ElementDataFile = LOCAL\n" + bytes(8),
            "need 729",
        ),
    ]:
        job = tmp_path / f"job-{name}"
        (job / "input" / "images" / spec.input_slugs[0]).mkdir(parents=True)
        (job / "input" / "images" / spec.input_slugs[0] / name).write_bytes(content)
        (job / "output").mkdir()
        command = entrypoint_command(export.entrypoint, runtime)
        command += ["--input", str(job / "input"), "--output", str(job / "output")]
        command += ["--model", str(export.model), "--algorithm", str(export.algorithm_json)]
        failed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        last = failed.stderr.strip().splitlines()[-1]
        assert failed.returncode == 2 and message in last and name in last, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert not any((job / "output").iterdir())


def test_a_model_of_onnx_networks_needs_a_lean_runtime(tmp_path):
    from container_helpers import tiny_ensemble

    from toolkit.container.context import copy_models

    paths = make_dataset(tmp_path / "ws", folds=(0,))
    (paths.fold_dir("3d_fullres", 0) / "checkpoint_final.pt").unlink()
    (paths.fold_dir("3d_fullres", 0) / "network.onnx").write_bytes(b"not read")
    with pytest.raises(ToolkitError, match="--runtime openvino or --runtime onnxruntime"):
        copy_models(paths, tiny_ensemble((0,)), tmp_path / "bundle")
