"""The phase's interfaces (sockets with relative paths that are not their slugs, several
interfaces, overlay segments), the platform's limits, and the model card.

The end-to-end tests export a two-channel tiny model with an interfaces file and dry-run the
exported entrypoint on platform-style folders: it must read and write exactly the sockets'
relative paths, and pick the interface from ``inputs.json``.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from container_helpers import CASES, LABELS, make_dataset, write_selection

from toolkit.cli import app
from toolkit.container import wheels
from toolkit.container.card import axis_directions
from toolkit.container.entrypoint import check_segment_values
from toolkit.container.interfaces import (
    bind_interfaces,
    parse_channel_map,
    parse_interfaces,
    shorthand_interface,
)
from toolkit.container.job_inputs import choose_interface, find_inputs
from toolkit.container.limits import (
    GIB,
    check_image_size,
    gpu_memory_report,
    job_memory_bytes,
    memory_problem,
    time_problem,
)
from toolkit.container.outputs import check_output
from toolkit.container.spec import AlgorithmSpec
from toolkit.container.testrun import run_container
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry, read_channels, write_image
from toolkit.workspace import ExportPaths

SEGMENTS = [{"name": n, "voxel_value": v, "visible": True} for n, v in LABELS.items() if v]


def socket(slug, path, kind="Image", **extra):
    return {"slug": slug, "kind": kind, "super_kind": "Image", "relative_path": path} | extra


# two interfaces whose folders are not their slugs, two channels (T2, ADC), one segmentation
PHASE = {
    "slug": "phase-1",
    "algorithm_interfaces": [
        {
            "inputs": [
                socket("transverse-t2-prostate-mri", "images/transverse-t2-prostate-mri-scan"),
                socket("prostate-adc-map", "images/apparent-diffusion-coefficient"),
            ],
            "outputs": [
                socket(
                    "prostate-zones",
                    "images/prostate-zone-segmentation",
                    "Segmentation",
                    overlay_segments=SEGMENTS,
                ),
                {"slug": "zone-volumes", "kind": "Anything", "relative_path": "zone-volumes.json"},
            ],
        },
        {
            "inputs": [
                socket("adc-second-look", "images/adc-second"),
                socket("t2-second-look", "images/t2-second"),
            ],
            "outputs": [
                socket(
                    "second-zones",
                    "images/second-look-zones",
                    "Segmentation",
                    overlay_segments=SEGMENTS,
                )
            ],
        },
    ],
}
CHANNELS = ["T2", "ADC"]


def bound():
    return bind_interfaces(parse_interfaces(PHASE), CHANNELS, sorted(LABELS.values()))


# --- reading and binding interfaces ----------------------------------------------------


def test_every_shape_the_platform_uses_is_read():
    plain = parse_interfaces(PHASE["algorithm_interfaces"])
    assert parse_interfaces(PHASE) == plain
    assert parse_interfaces({"algorithm": {"title": "x", **PHASE}}) == plain
    assert parse_interfaces({"challenge": {"slug": "c", "phases": [PHASE]}}) == plain
    with pytest.raises(ToolkitError, match="holds 2 phases"):
        parse_interfaces({"challenge": {"phases": [PHASE, PHASE]}})
    with pytest.raises(ToolkitError, match="starts with 'images/'"):
        parse_interfaces([{"inputs": [socket("a", "a")], "outputs": [socket("b", "images/b")]}])
    with pytest.raises(ToolkitError, match="has no 'relative_path'"):
        parse_interfaces(
            [{"inputs": [{"slug": "a", "kind": "Image"}], "outputs": [socket("b", "images/b")]}]
        )
    with pytest.raises(ToolkitError, match="has no output sockets"):
        parse_interfaces([{"inputs": [], "outputs": []}])
    assert plain[0].outputs[0].allowed_values == {0, 1, 2}


def test_input_sockets_are_mapped_to_channels_by_name_or_explicitly():
    first, second = bound()
    assert [(s.slug, s.channel) for s in first.channel_inputs] == [
        ("transverse-t2-prostate-mri", 0),
        ("prostate-adc-map", 1),
    ]
    assert [s.slug for s in second.channel_inputs] == ["t2-second-look", "adc-second-look"]
    vague = [
        {
            "inputs": [socket("scan-one", "images/one"), socket("scan-two", "images/two")],
            "outputs": PHASE["algorithm_interfaces"][1]["outputs"],
        }
    ]
    with pytest.raises(ToolkitError, match="cannot tell from the names.*--channel-map") as error:
        bind_interfaces(parse_interfaces(vague), CHANNELS, [0, 1, 2])
    assert "\n" not in str(error.value)
    explicit = parse_channel_map(["scan-one=adc", "scan-two=0"], CHANNELS)
    (interface,) = bind_interfaces(parse_interfaces(vague), CHANNELS, [0, 1, 2], explicit)
    assert [s.slug for s in interface.channel_inputs] == ["scan-two", "scan-one"]
    with pytest.raises(ToolkitError, match="not a channel of the model"):
        parse_channel_map(["scan-one=FLAIR"], CHANNELS)
    with pytest.raises(
        ToolkitError,
        match=r"2 image input socket\(s\) \(scan-one, scan-two\) for the model.s 1 channel",
    ):
        bind_interfaces(parse_interfaces(vague), ["T2"], [0, 1, 2])


def test_outputs_must_hold_the_models_labels():
    def with_output(**out):
        entry = dict(PHASE["algorithm_interfaces"][0])
        return parse_interfaces([entry | {"outputs": [out]}])

    segments = [{"name": "a", "voxel_value": 1, "visible": True}]
    narrow = with_output(**socket("z", "images/z", "Segmentation", overlay_segments=segments))
    with pytest.raises(ToolkitError, match=r"label value\(s\) \[2\] that socket z does not allow"):
        bind_interfaces(narrow, CHANNELS, [0, 1, 2])
    with pytest.raises(ToolkitError, match="declares no overlay_segments"):
        bind_interfaces(with_output(**socket("z", "images/z", "Segmentation")), CHANNELS, [0, 1])
    with pytest.raises(ToolkitError, match="no Segmentation output"):
        bind_interfaces(
            with_output(slug="v", kind="Anything", relative_path="v.json"), CHANNELS, [0, 1]
        )
    with pytest.raises(ToolkitError, match="of kind 'Float'"):
        bind_interfaces(
            parse_interfaces(
                [
                    dict(PHASE["algorithm_interfaces"][1])
                    | {
                        "outputs": PHASE["algorithm_interfaces"][1]["outputs"]
                        + [{"slug": "p", "kind": "Float", "relative_path": "p.json"}]
                    }
                ]
            ),
            CHANNELS,
            [0, 1, 2],
        )


def test_the_interface_is_chosen_by_the_sockets_inputs_json_lists(tmp_path):
    interfaces = bound()
    declared = {"t2-second-look": "images/t2-second", "adc-second-look": "images/adc-second"}
    choice = choose_interface(interfaces, tmp_path, declared)
    assert choice.index == 1
    assert choice.folders == [tmp_path / "images/t2-second", tmp_path / "images/adc-second"]
    with pytest.raises(ToolkitError, match=r"lists input socket\(s\) \[t2-second-look\]"):
        choose_interface(interfaces, tmp_path, {"t2-second-look": "images/t2-second"})
    # without inputs.json: the interface whose folders exist
    (tmp_path / "images/transverse-t2-prostate-mri-scan").mkdir(parents=True)
    (tmp_path / "images/apparent-diffusion-coefficient").mkdir(parents=True)
    assert choose_interface(interfaces, tmp_path, None).index == 0


def test_a_tif_input_is_read(tmp_path):
    interface = shorthand_interface(["ct"], "seg", ["CT"], LABELS)
    spec = AlgorithmSpec("D", ["CT"], LABELS, [interface])
    folder = tmp_path / "images/ct"
    folder.mkdir(parents=True)
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "3f2a.tif"))
    (path,) = find_inputs(tmp_path, spec)
    image, _ = read_channels([path])
    assert path.suffix == ".tif" and np.array_equal(image[0], array)


def test_segment_values_are_checked_on_writing_and_on_checking(tmp_path):
    segments = [{"name": "a", "voxel_value": 1, "visible": True}]
    (interface,) = parse_interfaces(
        [
            {
                "inputs": [socket("ct", "images/ct")],
                "outputs": [socket("seg", "images/out", "Segmentation", overlay_segments=segments)],
            }
        ]
    )
    labels = np.array([[[0, 1, 2]]], np.uint8)
    with pytest.raises(ToolkitError, match=r"socket seg holds value\(s\) \[2\] outside"):
        check_segment_values(labels, interface.outputs[0])
    check_segment_values(labels.clip(0, 1), interface.outputs[0])
    # the test run's check of a written output says the same
    geometry = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (3, 1, 1))
    write_image(tmp_path / "images/out/output.mha", labels, geometry)
    (tmp_path / "results.json").write_text("{}")
    spec = AlgorithmSpec("D", ["CT"], LABELS, [interface])
    _, problems = check_output(tmp_path, spec, geometry, interface)
    assert problems == [
        "seg: the output holds value(s) [2] outside the socket's overlay segments [0, 1]"
    ]


# --- limits ----------------------------------------------------------------------------


def test_memory_reservation_size_limit_time_and_gpu_rules():
    assert job_memory_bytes("8g") == 7 * GIB and job_memory_bytes("4g") == 3 * GIB
    with pytest.raises(ToolkitError, match="reserves 1 GiB"):
        job_memory_bytes("1g")
    assert memory_problem(7000.0, "8g") is None
    assert "over the 3072 MB a job gets" in memory_problem(3500.0, "4g")
    assert check_image_size(2 * GIB, "the image") is None
    assert "accepts up to 10 GiB" in check_image_size(5 * GIB, "the image")
    with pytest.raises(ToolkitError, match="refuses images over 10 GiB"):
        check_image_size(10 * GIB + 1, "the archive")
    assert time_problem(12.0, 60) is None
    assert "over the time limit of 10 s" in time_problem(12.0, 10)
    assert gpu_memory_report([("a", 10, None)]) is None
    report = gpu_memory_report([("small", 10, 9000.0), ("large", 99, 3000.0), ("cpu", 500, None)])
    assert report.startswith("GPU memory at the largest test case (large, 99 voxels): 3000 MB")
    assert "fits" in report
    assert "does NOT fit" in gpu_memory_report([("a", 1, 17000.0)])


def test_a_container_test_run_gets_the_memory_minus_the_reservation(tmp_path):
    calls = []

    class FakeEngine:
        def run(self, tag, mounts, memory, timeout, gpu):
            calls.append((memory, gpu))
            from toolkit.container.engine import RunResult

            return RunResult(0, 1.0, "", "", False, 5 * 1024**2, "fake")

    outcome = run_container(FakeEngine(), "t", tmp_path, tmp_path, None, "8g", 60, True)
    assert calls == [(str(7 * GIB), True)] and outcome.peak_memory_mb == 5.0


def test_axis_directions():
    assert axis_directions((1, 0, 0, 0, 1, 0, 0, 0, 1)) == "LPS"
    assert axis_directions((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == "RAS"
    assert axis_directions((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)) == "PLI"


# --- end to end: export with an interfaces file, dry-run, test-container --------------


@pytest.fixture(scope="module")
def phase_export(tmp_path_factory):
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("phase")
    paths = make_dataset(root / "ws", folds=(0,), channels=("T2", "ADC"))
    write_selection(paths, folds=(0,))
    interfaces = root / "phase.json"
    interfaces.write_text(json.dumps({"challenge": {"slug": "c", "phases": [PHASE]}}))
    original = wheels.runtime_requirements
    wheels.runtime_requirements = lambda device, **_: ["torch==2.13.0+cpu"]
    try:
        result = CliRunner().invoke(
            app,
            [
                "export-container",
                paths.name,
                "-w",
                str(root / "ws"),
                "--no-build",
                "--interfaces",
                str(interfaces),
                "--memory",
                "4g",
                "--runtime",
                "torch",
                "-q",
            ],
        )
    finally:
        wheels.runtime_requirements = original
    assert result.exit_code == 0, result.output
    return paths, ExportPaths(paths.export), interfaces


def test_export_reads_and_writes_exactly_the_sockets_paths(phase_export):
    paths, export, _ = phase_export
    record = json.loads(export.record.read_text())
    runs = record["test_runs"]
    assert [r["interface"] for r in runs] == [1, 2]
    assert all(r["ok"] and r["identical"] for r in runs), runs
    assert record["memory"] == "4g" and "inside the build" in record["wheels"]
    case = runs[0]["case"]
    first, second = export.run_dir(case), export.run_dir(f"{case}.interface-2")
    inputs = sorted(str(p.relative_to(first / "input")) for p in (first / "input").rglob("*.mha"))
    assert [p.rsplit("/", 1)[0] for p in inputs] == [
        "images/apparent-diffusion-coefficient",
        "images/transverse-t2-prostate-mri-scan",
    ]
    outputs = sorted(str(p.relative_to(first / "output")) for p in (first / "output").rglob("*"))
    assert outputs == [
        "images",
        "images/prostate-zone-segmentation",
        "images/prostate-zone-segmentation/output.mha",
        "results.json",
        "zone-volumes.json",
    ]
    volumes = json.loads((first / "output/zone-volumes.json").read_text())
    assert volumes["interface"] == 1 and [v["name"] for v in volumes["labels"]] == ["blob", "rim"]
    assert (second / "output/images/second-look-zones/output.mha").is_file()
    listed = json.loads((second / "input/inputs.json").read_text())
    assert {e["interface"]["relative_path"] for e in listed} == {
        "images/adc-second",
        "images/t2-second",
    }
    assert json.loads((second / "output/results.json").read_text())["interface"] == 2
    # the channels went to the right sockets: the second interface lists ADC first
    spec = AlgorithmSpec.load(export.algorithm_json)
    assert [s.channel for s in spec.interfaces[1].inputs] == [1, 0]


def test_model_card_is_written_with_the_export(phase_export):
    _, export, _ = phase_export
    card = export.model_card.read_text()
    for expected in (
        "## What it segments",
        "| 1 | blob |",
        "Channels (in order): T2, ADC.",
        "Expected spacing",
        "Orientation",
        "`images/transverse-t2-prostate-mri-scan`",
        "## Cross-validation",
        "1: blob",
        "## Time and memory per case",
        "## Reproduce",
    ):
        assert expected in card, expected


def test_test_container_takes_the_interfaces_in_turn(phase_export):
    from typer.testing import CliRunner

    paths, export, interfaces = phase_export
    common = ["test-container", paths.name, "-w", str(paths.root.parent), "--dry-run", "-q"]
    result = CliRunner().invoke(app, [*common, "--case", CASES[1], "--case", CASES[2]])
    assert result.exit_code == 0, result.output
    report = json.loads(export.test_report.read_text())
    assert [(c["case"], c["interface"]) for c in report["cases"]] == [(CASES[1], 1), (CASES[2], 2)]
    assert "| dry-run |" in export.model_card.read_text().replace(f"| {CASES[1]} ", "| ")
    # a phase file with sockets the image does not serve: the job fails, one line per case
    other = json.loads(interfaces.read_text())
    phase = other["challenge"]["phases"][0]["algorithm_interfaces"][0]
    phase["inputs"][0]["slug"] = "renamed-t2-mri"
    interfaces.write_text(json.dumps(other))
    result = CliRunner().invoke(app, [*common, "--case", CASES[3], "--interfaces", str(interfaces)])
    assert isinstance(result.exception, ToolkitError)
    assert "1 of 1 case(s) failed" in str(result.exception)
    report = json.loads(export.test_report.read_text())
    assert "renamed-t2-mri" in report["cases"][0]["stderr_tail"]


def test_the_export_refuses_an_archive_over_the_limit_and_records_why(tmp_path):
    from toolkit.container.stage import ExportRecord, apply_size_limit

    record = ExportRecord(
        dataset="D", tag="t", base_image="b", model_mode="baked", device="cpu", engine="e",
        built=True, configurations=["c"], folds=[0], input_slugs=["x"], output_slug="s",
        model_bytes=1, context_seconds=0.0,
    )  # fmt: skip
    export = ExportPaths(tmp_path)
    apply_size_limit(record, export, 11 * GIB, "the image (uncompressed)", refuse=False)
    assert "the saved archive (compressed) is what the limit applies to" in record.warnings[0]
    with pytest.raises(ToolkitError, match="refuses images over 10 GiB"):
        apply_size_limit(record, export, 11 * GIB, "the archive image.tar.gz")
    saved = json.loads(export.record.read_text())
    assert "refuses images over 10 GiB" in saved["warnings"][-1]


def test_a_case_over_the_time_or_memory_limit_fails(phase_export):
    from toolkit.container.testrun import CaseLimits, JobOutcome, cross_validation_cases, test_case

    paths, export, _ = phase_export
    case = cross_validation_cases(paths, 1)[0]
    outcome = JobOutcome(124, 5.0, 4000.0, "fake", "", timed_out=True)
    limits = CaseLimits(memory="4g", time_limit=2)
    result = test_case(case, paths, export, lambda i, o: outcome, "dry-run", limits=limits)
    assert not result.ok and len(result.problems) == 3
    assert result.problems[0].startswith("took 5.0 s, over the time limit of 2 s")
    assert "peak memory 4000 MB is over the 3072 MB a job gets" in result.problems[1]
    assert "stopped at the time limit" in result.problems[2]


def test_the_gpu_path_is_requested_and_its_peak_read_back():
    """No GPU here: the device request and the parsing of the job's GPU peak are what can be
    checked; the GPU run itself needs Docker and an NVIDIA GPU."""
    from toolkit.container.engine import gpu_device_requests
    from toolkit.container.entrypoint import DONE_LINE, DONE_PATTERN, GPU_SUFFIX

    (request,) = gpu_device_requests()
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    line = DONE_LINE.format(
        output="images/a/output.mha, images/b/output.mha", seconds=2.5, peak_mb=900
    )
    assert DONE_PATTERN.search(line).group("gpu_mb") is None
    done = DONE_PATTERN.search(line + GPU_SUFFIX.format(gpu_mb=5321.4))
    assert done.group("seconds") == "2.5" and done.group("gpu_mb") == "5321"
