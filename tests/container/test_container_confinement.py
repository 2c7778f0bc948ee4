"""Hostile job inputs: an ``inputs.json`` whose ``relative_path`` leaves ``/input`` is refused
in one line before anything is written (issue 24, defect 1); output sockets that would
overwrite each other are refused when the interfaces are bound (defect 8c)."""

import json
import os

import pytest
from container_helpers import make_dataset, tiny_ensemble

from toolkit.container import wheels
from toolkit.container.context import ExportOptions, write_context
from toolkit.container.entrypoint import main
from toolkit.container.interfaces import (
    OUTPUT_IMAGE,
    Interface,
    Segment,
    Socket,
    check_outputs,
    nested_output,
)
from toolkit.container.job_inputs import INPUTS_JSON, read_inputs_json
from toolkit.container.spec import AlgorithmSpec
from toolkit.container.testrun import cross_validation_cases, lay_out_case
from toolkit.errors import ToolkitError
from toolkit.io.staging import this_host
from toolkit.workspace import ExportPaths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    paths = make_dataset(tmp_path_factory.mktemp("ws"), folds=(0,))
    export = ExportPaths(paths.export)
    original = wheels.runtime_requirements
    wheels.runtime_requirements = lambda device, **_: ["torch==2.13.0+cpu", "numpy==2.4.6"]
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


def _a_socket_folder(input_dir):
    return f"images/{min(p.name for p in (input_dir / 'images').iterdir())}"


def _job(exported, tmp_path, relative_path):
    """A valid platform layout whose first socket's ``relative_path`` is replaced."""
    paths, export = exported
    spec = AlgorithmSpec.load(export.algorithm_json)
    case = cross_validation_cases(paths, 1)[0]
    input_dir, output_dir = lay_out_case(case, spec.interfaces[0], tmp_path / "run")
    # the same image, outside /input: what a hostile path would read
    outside = tmp_path / "elsewhere"
    first = input_dir / spec.interfaces[0].channel_inputs[0].relative_path
    outside.mkdir()
    for image in first.iterdir():
        (outside / image.name).write_bytes(image.read_bytes())
    document = json.loads((input_dir / INPUTS_JSON).read_text())
    document[0]["interface"]["relative_path"] = relative_path(outside, input_dir)
    (input_dir / INPUTS_JSON).write_text(json.dumps(document))
    argv = ["--input", str(input_dir), "--output", str(output_dir)]
    argv += ["--model", str(export.model), "--algorithm", str(export.algorithm_json)]
    return argv, input_dir, output_dir


@pytest.mark.parametrize(
    "relative_path",
    [
        lambda outside, input_dir: str(outside),  # absolute
        # through a folder that exists (the kernel resolves each part): run/input/images/S -> tmp
        lambda outside, input_dir: f"{_a_socket_folder(input_dir)}/../../../../elsewhere",
    ],
    ids=["absolute", "dot-dot"],
)
def test_a_relative_path_out_of_input_is_one_line_exit_2_and_nothing_written(
    exported, tmp_path, capsys, relative_path
):
    argv, input_dir, output_dir = _job(exported, tmp_path, relative_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(input_dir / INPUTS_JSON) in err and "relative_path" in err
    assert not any(output_dir.rglob("*"))  # no output.mha, no results.json


def test_a_link_out_of_input_is_refused(exported, tmp_path, capsys):
    argv, input_dir, output_dir = _job(exported, tmp_path, lambda o, i: "images/linked")
    (input_dir / "images" / "linked").symlink_to(tmp_path / "elsewhere")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "leads outside" in err and "Traceback" not in err
    assert not any(output_dir.rglob("*"))


def test_a_valid_job_still_runs(exported, tmp_path, capsys):
    argv, input_dir, output_dir = _job(exported, tmp_path, lambda o, i: "")
    assert main(argv) == 0, capsys.readouterr().err
    assert (output_dir / "results.json").is_file()
    assert list(output_dir.rglob(OUTPUT_IMAGE))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"not": "a list"}', "must hold a JSON list"),
        ("[1, 2]", "input 0 has no interface slug"),
        ("[{", "is not valid JSON"),
        ('[{"interface": {"slug": "a", "relative_path": "/etc"}}]', "is an absolute path"),
        ('[{"interface": {"slug": "a", "relative_path": 7}}]', "is not a path"),
    ],
)
def test_an_invalid_inputs_json_is_one_line_naming_it(tmp_path, document, message):
    path = tmp_path / INPUTS_JSON
    path.write_text(document)
    with pytest.raises(ToolkitError, match=message) as err:
        read_inputs_json(path)
    assert str(path) in str(err.value)


def _segmentation(slug, path):
    return Socket(slug, "Segmentation", path, overlay_segments=(Segment("a", 1),))


@pytest.mark.parametrize(
    ("outputs", "refused"),
    [
        (
            (_segmentation("seg", "images/seg"), Socket("v", "Anything", "images/seg/output.mha")),
            True,
        ),
        ((_segmentation("seg", "images/seg"), Socket("v", "Anything", "images")), True),
        (
            (_segmentation("seg", "images/seg"), Socket("v", "Anything", "images/seg/x/y.json")),
            False,
        ),
        ((_segmentation("seg", "images/seg"), _segmentation("s2", "images/seg/inner")), False),
        ((_segmentation("seg", "images/seg"), Socket("v", "Anything", "volumes.json")), False),
    ],
    ids=["same-file", "file-over-folder", "beside", "folder-in-folder", "apart"],
)
def test_outputs_that_overwrite_each_other_are_refused(outputs, refused):
    interface = Interface((Socket("t2", "Image", "images/t2", channel=0),), outputs)
    assert (nested_output(interface) is not None) == refused
    if refused:
        with pytest.raises(ToolkitError, match="one would overwrite the other"):
            check_outputs(interface, [0, 1], "interface 1")
    else:
        check_outputs(interface, [0, 1], "interface 1")


def test_an_export_leaves_other_exports_staging_folders_alone(exported, tmp_path, dead_pid):
    """Defect 7's staging half: the build context is staged in a folder of its own, so an
    export never deletes what another export, running at once, is staging; but it removes
    the staging folder of an export killed half-way (its process is gone)."""
    paths, export = exported
    running = f".partial.{this_host()}-{os.getppid()}.abcdefgh"  # a live process's
    others = [export.root / ".partial", export.root / ".partial.other", export.root / running]
    for folder in others:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "marker").write_text("another export's file")
    # an export killed half-way: its process is gone, its staging folder is swept
    killed = export.root / f".partial.{this_host()}-{dead_pid}.abcdefgh"
    (killed / "model").mkdir(parents=True)
    original = wheels.runtime_requirements
    wheels.runtime_requirements = lambda device, **_: ["torch==2.13.0+cpu", "numpy==2.4.6"]
    try:
        write_context(
            paths,
            tiny_ensemble((0,)),
            ExportOptions(tag="algo:1", base_image="b", runtime="torch"),
            export,
        )
    finally:
        wheels.runtime_requirements = original
    assert all((folder / "marker").is_file() for folder in others)
    assert not killed.exists()
    assert sorted(p.name for p in export.root.glob(".partial*")) == sorted(p.name for p in others)
    for folder in others:
        (folder / "marker").unlink()
        folder.rmdir()


@pytest.mark.parametrize(
    "document",
    [
        [{"inputs": [], "outputs": [{"slug": "a", "kind": "Segmentation", "relative_path": "images/a", "overlay_segments": True}]}],
        {"challenge": [1]},
        {"challenge": True},
    ],
    ids=["segments-not-a-list", "challenge-a-list", "challenge-a-bool"],
)  # fmt: skip
def test_interfaces_files_found_by_the_fuzz_suite_are_one_line(document):
    """Found by tests/fuzz: a TypeError and an AttributeError, now one-line errors."""
    from toolkit.container.interfaces import parse_interfaces

    with pytest.raises(ToolkitError):
        parse_interfaces(document, "interfaces.json")
