"""The build context: what goes in (and what does not), the Dockerfile, the wheel, the specs."""

import json
import tarfile
import zipfile

import pytest
import torch
from container_helpers import CONFIG, make_dataset, tiny_ensemble, write_selection

from toolkit.container import wheels
from toolkit.container.context import (
    BAKED_MODEL_DIR,
    TARBALL_MODEL_DIR,
    TEMPLATE_NAME,
    ExportOptions,
    dockerfile_values,
    ensemble_from_selection,
    render_dockerfile,
    template_dir,
    write_context,
)
from toolkit.container.interfaces import shorthand_interface
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec, default_input_slugs, slugify
from toolkit.core.checkpoint import weights_only
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths, ExportPaths


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ws"), folds=(0, 1, 2))


@pytest.fixture(scope="module")
def requirements():
    # measured once per module: importing the entrypoint's modules takes a few seconds
    return wheels.runtime_requirements("cpu")


def options(**kw):
    """A torch image's options (these tests are about its context; the lean one's are in
    test_container_lean.py)."""
    base = {"tag": "algo:1", "base_image": "localhost/toolkit-base:bookworm", "runtime": "torch"}
    return ExportOptions(**(base | kw))


def test_baked_context_holds_only_what_the_ensemble_uses(
    dataset, tmp_path, monkeypatch, requirements
):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device: requirements)
    export = ExportPaths(tmp_path / "export")
    summary = write_context(dataset, tiny_ensemble((0, 2)), options(), export)
    files = set(summary.files)
    assert {
        "Dockerfile",
        ".dockerignore",
        "requirements.txt",
        "entrypoint.py",
        "algorithm.json",
        "model/ensemble.json",
    } <= files
    bundle = DatasetPaths(export.model)
    assert sorted(p.name for p in bundle.model_dir(CONFIG).iterdir()) == [
        "dataset.json",
        "fold_0",
        "fold_2",
        "plans.json",
    ]
    assert not export.model_tarball.exists()
    # training state stripped, weights kept and loadable as the predictor loads them
    checkpoint = torch.load(bundle.fold_dir(CONFIG, 0) / CHECKPOINT_FINAL, weights_only=True)
    assert set(checkpoint) == {"format_version", "network", "configuration", "epoch"}
    original = torch.load(dataset.fold_dir(CONFIG, 0) / CHECKPOINT_FINAL, weights_only=True)
    assert all(torch.equal(original["network"][k], v) for k, v in checkpoint["network"].items())
    # every file readable by the image's non-root user
    assert all((p.stat().st_mode & 0o444) == 0o444 for p in export.context.rglob("*"))
    # the specs the entrypoint reads
    spec = AlgorithmSpec.load(export.algorithm_json)
    assert spec.input_slugs == ["mr-image"] and spec.output_slug == "segmentation"
    assert spec.labels == {"background": 0, "blob": 1, "rim": 2}
    assert EnsembleSpec.load(export.ensemble_json) == tiny_ensemble((0, 2))
    # the Dockerfile: non-root, amd64, unbuffered, the model baked in, pinned requirements
    dockerfile = export.dockerfile.read_text()
    assert "USER algorithm" in dockerfile and "--platform=linux/amd64" in dockerfile
    assert "PYTHONUNBUFFERED=1" in dockerfile and f"COPY model/ {BAKED_MODEL_DIR}/" in dockerfile
    assert f"TOOLKIT_MODEL_DIR={BAKED_MODEL_DIR}" in dockerfile and "{{" not in dockerfile
    assert export.requirements.read_text().splitlines() == requirements
    assert "model" not in export.dockerignore.read_text().split()


def test_tarball_mode_puts_the_model_in_model_tar_gz(dataset, tmp_path, monkeypatch, requirements):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device: requirements)
    export = ExportPaths(tmp_path / "export")
    write_context(dataset, tiny_ensemble((1,)), options(model_mode="tarball"), export)
    with tarfile.open(export.model_tarball) as archive:
        names = sorted(archive.getnames())
        assert all(m.uid == 0 and (m.mode & 0o444) == 0o444 for m in archive.getmembers())
    assert "ensemble.json" in names and f"models/{CONFIG}/fold_1/{CHECKPOINT_FINAL}" in names
    assert not any("fold_0" in n for n in names)
    assert "model" in export.dockerignore.read_text().split()
    dockerfile = export.dockerfile.read_text()
    assert (
        f"TOOLKIT_MODEL_DIR={TARBALL_MODEL_DIR}" in dockerfile and "COPY model/" not in dockerfile
    )


def test_a_second_export_replaces_the_context(dataset, tmp_path, monkeypatch, requirements):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device: requirements)
    export = ExportPaths(tmp_path / "export")
    write_context(dataset, tiny_ensemble((0, 1)), options(), export)
    write_context(dataset, tiny_ensemble((2,)), options(), export)
    folds = sorted(p.name for p in DatasetPaths(export.model).model_dir(CONFIG).glob("fold_*"))
    assert folds == ["fold_2"]
    assert not list(export.root.glob(".partial*"))


def test_missing_fold_names_the_command(dataset, tmp_path, monkeypatch, requirements):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device: requirements)
    with pytest.raises(MissingStageError, match="toolkit train .* 4"):
        write_context(dataset, tiny_ensemble((0, 4)), options(), ExportPaths(tmp_path / "export"))


def test_dockerfile_pip_source_depends_on_wheelhouse_and_device(tmp_path):
    template = "FROM {{BASE_IMAGE}}\nRUN pip install {{PIP_SOURCE}}\n"
    ensemble = tiny_ensemble((0,))
    values = dockerfile_values(options(wheelhouse=tmp_path), "D", ensemble)
    assert "--no-index" in render_dockerfile(template, values)
    values = dockerfile_values(options(), "D", ensemble)
    assert f"--extra-index-url {wheels.TORCH_CPU_INDEX}" in render_dockerfile(template, values)
    assert dockerfile_values(options(device="cuda"), "D", ensemble)["PIP_SOURCE"] == ""
    with pytest.raises(ToolkitError, match="give one or the other"):
        options(online_build=True, wheelhouse=tmp_path)
    with pytest.raises(ValueError, match="NOPE"):
        render_dockerfile("FROM {{NOPE}}", values)


def test_export_options_are_checked():
    with pytest.raises(ToolkitError, match="--model-mode"):
        options(model_mode="inside")
    with pytest.raises(ToolkitError, match="lower-case"):
        options(tag="Algo:1")


def test_slim_checkpoint_drops_only_training_state():
    checkpoint = {
        "network": {"w": torch.ones(2)},
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.ones(2)}},
            "param_groups": [{"lr": 0.1}],
        },
        "grad_scaler": {"scale": torch.tensor(1.0)},
        "configuration": "3d_fullres",
        "mirror_axes": [0, 1, 2],
        "epoch": 3,
    }
    assert set(weights_only(checkpoint)) == {"network", "configuration", "mirror_axes", "epoch"}


def test_ensemble_from_selection(dataset):
    write_selection(dataset, folds=(0, 1))
    ensemble = ensemble_from_selection(dataset)
    assert ensemble.configurations == [CONFIG] and ensemble.folds == [0, 1]
    assert ensemble.postprocessing.largest_component_foreground
    assert ensemble_from_selection(dataset, ["all"]).folds == ["all"]  # export-container -f all


def test_toolkit_wheel_is_complete_and_reproducible(tmp_path, requirements):
    first = wheels.build_toolkit_wheel(tmp_path / "a", requirements)
    second = wheels.build_toolkit_wheel(tmp_path / "b", requirements)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        metadata = archive.read("toolkit-0.1.0.dist-info/METADATA").decode()
        record = archive.read("toolkit-0.1.0.dist-info/RECORD").decode()
    assert "toolkit/container/entrypoint.py" in names and "toolkit/inference/predictor.py" in names
    assert not any("__pycache__" in n for n in names)
    assert all(f"Requires-Dist: {r}" in metadata for r in requirements)
    assert len(record.strip().splitlines()) == len(names)


def test_runtime_requirements_follow_the_entrypoints_imports(requirements):
    names = [r.split("==")[0].lower() for r in requirements]
    assert requirements[0].startswith("torch==") and requirements[0].endswith("+cpu")
    assert {"numpy", "scipy", "simpleitk"} <= set(names)
    assert "toolkit" not in names and "matplotlib" not in names and "docker" not in names
    assert all("==" in r for r in requirements)
    assert wheels.torch_requirement("cuda", "2.13.0+cpu") == "torch==2.13.0"


def test_pip_download_targets_the_image_platform(tmp_path):
    command = wheels.pip_download_command(["numpy==2.0.0"], tmp_path / "d", find_links=tmp_path)
    text = " ".join(command)
    assert "--platform manylinux_2_28_x86_64" in text and "--python-version 3.11" in text
    assert "--only-binary=:all:" in command and "--implementation cp" in text
    assert command[-1] == "numpy==2.0.0"


def test_slugs():
    assert slugify("T2 FLAIR") == "t2-flair" and slugify("__") == "image"
    assert default_input_slugs(["CT", "ct", "ADC"]) == ["ct-image", "ct-image-2", "adc-image"]
    with pytest.raises(ToolkitError, match="one --input-slug per channel"):
        shorthand_interface(["a"], "out", ["T2", "ADC"], {"background": 0})
    with pytest.raises(ToolkitError, match="not an interface slug"):
        shorthand_interface(["Bad_Slug"], "out", ["T2"], {"background": 0})
    with pytest.raises(ToolkitError, match="also an input slug"):
        shorthand_interface(["same"], "same", ["T2"], {"background": 0})
    interface = shorthand_interface(["t2"], "seg", ["T2"], {"background": 0, "a": 1, "b": 2})
    assert interface.inputs[0].relative_path == "images/t2" and interface.inputs[0].channel == 0
    assert interface.outputs[0].kind == "Segmentation"
    assert interface.outputs[0].allowed_values == {0, 1, 2}


def test_ensemble_spec_cascade_needs_its_first_stage(tmp_path):
    spec = EnsembleSpec(
        configurations=["3d_cascade_fullres", "2d"],
        folds=[0, 1],
        previous_stages={"3d_cascade_fullres": "3d_lowres"},
    )
    assert spec.model_configurations == ["3d_lowres", "3d_cascade_fullres", "2d"]
    spec.save(tmp_path / "e.json")
    assert EnsembleSpec.load(tmp_path / "e.json") == spec
    every = EnsembleSpec(configurations=["2d"], folds=["all"])  # fold_all
    every.save(tmp_path / "all.json")
    assert EnsembleSpec.load(tmp_path / "all.json") == every
    (tmp_path / "bad.json").write_text(
        json.dumps({"format_version": 1, "configurations": ["2d"], "folds": []})
    )
    with pytest.raises(ToolkitError, match="at least one fold"):
        EnsembleSpec.load(tmp_path / "bad.json")


def test_builds_are_offline_by_default(tmp_path, monkeypatch):
    from toolkit.container import stage

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    built = stage.resolve_wheelhouse(options(), build=True)
    assert built.wheelhouse == tmp_path / "wheelhouse"
    assert "offline build" in stage.wheel_source(built)
    text = render_dockerfile(
        (template_dir() / TEMPLATE_NAME).read_text(),
        dockerfile_values(built, "D", tiny_ensemble((0,))),
    )
    assert "pip install --no-index --find-links /tmp/build/wheels" in text
    assert "download.pytorch.org" not in text
    online = stage.resolve_wheelhouse(options(online_build=True), build=True)
    assert online.wheelhouse is None and "inside the build" in stage.wheel_source(online)
    assert stage.resolve_wheelhouse(options(), build=False).wheelhouse is None
    given = stage.resolve_wheelhouse(options(wheelhouse=tmp_path / "w"), build=False)
    assert given.wheelhouse == tmp_path / "w"
