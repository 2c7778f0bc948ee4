"""``toolkit export-container`` and ``toolkit test-container``: the stages, start to end.

Export: selection -> build context (wheels from this machine: the build needs no network)
-> image (Docker SDK, streamed log) -> a test run on a cross-validation case per interface,
laid out as on the platform (no network, the selected memory minus the platform's 1 GiB,
read-only input, the time limit; output checked and compared with the predictor on this
machine) -> ``docker save`` as ``.tar.gz`` (refused over 10 GiB) -> the platform's archive
checks -> the model card. ``--no-build`` stops after the context and runs the exported
entrypoint as a subprocess instead (no engine needed).

Test: the exported image on several cross-validation cases (interfaces in turn), with time
and peak memory per case, every output equal to the reference prediction.

What happened is written to ``export.json`` and ``container-test.json`` in the export
folder, and summarised in its ``README.md`` (:mod:`~toolkit.container.card`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.container.archive import check_archive
from toolkit.container.base import DEBOOTSTRAP_IMAGE, PULLED_IMAGE, cache_dir
from toolkit.container.card import write_model_card
from toolkit.container.context import (
    ExportOptions,
    default_tag,
    ensemble_from_selection,
    write_context,
)
from toolkit.container.engine import DEFAULT_MEMORY, connect, resolve_engine
from toolkit.container.interfaces import (
    Interface,
    bind_interfaces,
    parse_channel_map,
    read_interfaces,
)
from toolkit.container.limits import (
    check_image_size,
    describe_job_memory,
    gpu_memory_report,
    host_has_gpu,
    job_memory_bytes,
)
from toolkit.container.records import DEFAULT_TIME_LIMIT, ContainerTestReport, ExportRecord
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec
from toolkit.container.testrun import (
    CaseLimits,
    CaseResult,
    cross_validation_cases,
    extract_model_tarball,
    run_container,
    run_dry,
    test_case,
)
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.atomic import write_json
from toolkit.progress import info, track
from toolkit.workspace import DatasetPaths, ExportPaths

__all__ = ["ExportOptions", "default_tag", "export_container", "test_container"]

DEFAULT_TEST_CASES = 3
BUILDER_STAGE = "builder"  # the Dockerfile template's third-party stage


def builder_tag(device: str, runtime: str = "torch") -> str:
    """The third-party stage's tag: one per device and runtime, so that a torch image's and a
    lean image's cached stages do not replace each other."""
    return f"toolkit-builder-cache:{device}" + ("" if runtime == "torch" else f"-{runtime}")


def default_base_image(engine_kind: str | None) -> str:
    """Debootstrap's base for the private podman service (no registry), else python:3.11-slim."""
    return DEBOOTSTRAP_IMAGE if engine_kind == "podman" else PULLED_IMAGE


def export_container(
    paths: DatasetPaths,
    options: ExportOptions,
    out: Path | None = None,
    build: bool = True,
    save: bool = True,
    engine: str = "auto",
    memory: str = DEFAULT_MEMORY,
    time_limit: float = DEFAULT_TIME_LIMIT,
    ensemble: EnsembleSpec | None = None,
    echo: Callable[[str], None] | None = None,
) -> ExportRecord:
    """Write the context; then build, test-run, save and check the image (or dry-run it)."""
    paths.require_raw()
    ensemble = ensemble or ensemble_from_selection(paths, options.folds)
    export = ExportPaths(Path(out) if out is not None else paths.export)
    kind = resolve_engine(engine) if build else None
    job_memory_bytes(memory)  # a selection the platform would leave nothing of fails now
    if not options.base_image:
        options = dataclasses.replace(options, base_image=default_base_image(kind))
    options = resolve_wheelhouse(options, build)

    start = time.perf_counter()
    summary = write_context(paths, ensemble, options, export)
    record = ExportRecord(
        dataset=paths.name,
        tag=options.tag,
        base_image=options.base_image,
        model_mode=options.model_mode,
        device=options.device,
        engine="none (dry run)" if not build else kind or "",
        built=False,
        configurations=list(ensemble.configurations),
        folds=list(ensemble.folds),
        input_slugs=list(summary.algorithm.input_slugs),
        output_slug=summary.algorithm.output_slug,
        model_bytes=summary.model_bytes,
        context_seconds=round(time.perf_counter() - start, 2),
        model_tarball_bytes=summary.model_tarball.stat().st_size if summary.model_tarball else None,
        interfaces=[i.to_dict() for i in summary.algorithm.interfaces],
        interfaces_file=str(options.interfaces) if options.interfaces else None,
        channel_map=list(options.channel_map or []),
        wheels=wheel_source(options),
        memory=memory,
        time_limit=time_limit,
        runtime=options.runtime,
    )
    info(
        f"build context written to {export.context} ({len(summary.files)} files, model {summary.model_bytes / 1e6:.1f} MB); "
        f"wheels: {record.wheels}"
    )
    case = cross_validation_cases(paths, 1)[0]
    limits = CaseLimits(memory=memory, time_limit=time_limit)
    interfaces = range(len(summary.algorithm.interfaces))

    if not build:

        def dry(i, o):
            return run_dry(export, i, o, time_limit)

        record.test_runs = [
            test_case(case, paths, export, dry, "dry-run", interface=k, limits=limits).to_dict()
            for k in interfaces
        ]
        _finish(paths, export, record, "the dry run")
        info(
            f"dry run of the entrypoint on {case.case} ({len(record.test_runs)} interface(s)): output valid and identical "
            f"to the reference ({record.test_runs[0]['seconds']:.1f} s); model card {export.model_card}"
        )
        return record

    with connect(engine) as eng:
        record.engine = eng.description
        eng.ensure_base_image(options.base_image)
        info(f"building {options.tag} from {options.base_image} (log: {export.build_log})")
        export.build_log.parent.mkdir(parents=True, exist_ok=True)
        with open(export.build_log, "w") as log:
            # the third-party stage gets a tag of its own: it is the slow part, and a tagged
            # stage survives the pruning of old builds, so the next export reuses it
            stage = eng.build(
                export.context,
                builder_tag(options.device, options.runtime),
                log,
                echo,
                target=BUILDER_STAGE,
            )
            built = eng.build(export.context, options.tag, log, echo)
        record.built = True
        record.image_id = eng.image_id(options.tag) or ""
        record.build_seconds = round(stage.seconds + built.seconds, 1)
        record.image_bytes = built.size_bytes
        record.image_user = built.user
        record.image_architecture = built.architecture
        info(
            f"built {options.tag} in {record.build_seconds:.0f} s: {built.size_bytes / 1e9:.2f} GB, user {built.user}, {built.architecture}"
        )
        apply_size_limit(
            record,
            export,
            built.size_bytes,
            f"the image {options.tag} (uncompressed)",
            refuse=False,
        )
        model_mount = (
            extract_model_tarball(export.model_tarball, export.extracted_model)
            if options.model_mode == "tarball"
            else None
        )
        gpu = options.device == "cuda" and host_has_gpu()
        if options.device == "cuda" and not gpu:
            record.warnings.append(
                "no GPU on this machine: the CUDA image was tested on the CPU, its GPU memory is not measured"
            )
            warn(record.warnings[-1])

        def job(i, o):
            return run_container(eng, options.tag, i, o, model_mount, memory, time_limit, gpu)

        record.test_runs = [
            test_case(case, paths, export, job, "container", interface=k, limits=limits).to_dict()
            for k in interfaces
        ]
        _finish(paths, export, record, "the test run")
        run = record.test_runs[0]
        info(
            f"test run on {case.case} ({len(record.test_runs)} interface(s)): {run['seconds']:.1f} s, "
            f"peak memory {_mb(run['peak_memory_mb'])}, identical to the reference"
        )
        if save:
            record.save_seconds = round(eng.save(options.tag, export.image_archive), 1)
            report = check_archive(export.image_archive)
            record.archive = report.to_dict()
            record.save(export.record)
            apply_size_limit(
                record, export, report.size_bytes, f"the archive {export.image_archive.name}"
            )
            info(
                f"saved {export.image_archive} ({report.size_bytes / 1e9:.2f} GB) in {record.save_seconds:.0f} s: passes the platform's checks"
            )
        eng.prune_dangling_images()
    record.save(export.record)
    write_model_card(paths, export)
    return record


def wheel_source(options: ExportOptions) -> str:
    if options.wheelhouse is not None:
        return f"downloaded on this machine through {options.wheelhouse} (offline build)"
    return "downloaded by pip inside the build (needs network)"


def default_wheelhouse() -> Path:
    return cache_dir() / "wheelhouse"


def resolve_wheelhouse(options: ExportOptions, build: bool) -> ExportOptions:
    """Offline by default: a build gets its wheels from this machine (the default
    wheelhouse) unless ``--online-build``; ``--no-build`` downloads nothing it was not asked
    to (its Dockerfile then downloads inside its build, and says so in export.json)."""
    if build and not options.online_build and options.wheelhouse is None:
        return dataclasses.replace(options, wheelhouse=default_wheelhouse())
    return options


def apply_size_limit(
    record: ExportRecord, export: ExportPaths, size_bytes: int, what: str, refuse: bool = True
) -> None:
    """Refuse (one line) an upload the platform refuses; warn about a large image. The
    uncompressed image only warns: its archive, the upload, decides."""
    try:
        warning = check_image_size(size_bytes, what)
    except ToolkitError as exc:
        if refuse:
            record.warnings.append(exc.one_line())
            record.save(export.record)
            raise
        warning = f"{exc.one_line()}; the saved archive (compressed) is what the limit applies to"
    if warning:
        record.warnings.append(warning)
        warn(warning)


def _finish(paths: DatasetPaths, export: ExportPaths, record: ExportRecord, what: str) -> None:
    """Record the test runs and the model card; a failed run is the command's error."""
    record.test_run = record.test_runs[0]
    record.gpu_memory = gpu_memory_report(
        [(r["case"], r["input_voxels"], r["gpu_peak_mb"]) for r in record.test_runs]
    )
    if record.gpu_memory:
        info(record.gpu_memory)
    record.save(export.record)
    write_model_card(paths, export)
    for run in record.test_runs:
        if not run["ok"]:
            raise ToolkitError(f"{what}: {CaseResult(**_case_fields(run)).summary_line()}")


def _case_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {f.name: data[f.name] for f in dataclasses.fields(CaseResult) if f.name in data}


def _mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f} MB"


def ensure_exported_image(eng, record: ExportRecord, export: ExportPaths) -> None:
    """The engine's ``record.tag`` must be the exported image; else load the saved archive.

    The tag may be missing (another engine, a cleaned storage) or name a later build (another
    export with the same tag).
    """
    current = eng.image_id(record.tag)
    if current is not None and (not record.image_id or current == record.image_id):
        return
    if not export.image_archive.is_file():
        what = "is not in the engine" if current is None else "names another image now"
        raise ToolkitError(
            f"the exported image {record.tag} {what} and there is no saved archive: "
            f"run `toolkit export-container {record.dataset}` again",
            export.image_archive,
        )
    info(f"loading {export.image_archive.name} into the engine")
    eng.load(export.image_archive)
    loaded = eng.image_id(record.tag)
    if record.image_id and loaded != record.image_id:
        raise ToolkitError(
            f"holds image {loaded}, not the exported {record.image_id}: export again",
            export.image_archive,
        )


def test_interfaces(
    export: ExportPaths, interfaces_file: Path | None, channel_map: list[str] | None
) -> list[Interface] | None:
    """``--interfaces`` of test-container: the phase's interfaces, bound like the export's
    (a socket the image maps keeps its channel unless ``--channel-map`` says otherwise)."""
    if interfaces_file is None:
        if channel_map:
            raise ToolkitError("--channel-map needs --interfaces")
        return None
    spec = AlgorithmSpec.load(export.algorithm_json)
    known = {s.slug: s.channel for i in spec.interfaces for s in i.channel_inputs}
    explicit = {k: v for k, v in known.items() if v is not None}
    explicit.update(parse_channel_map(channel_map, spec.channel_names))
    found = read_interfaces(interfaces_file)
    slugs = {s.slug for i in found for s in i.inputs}
    return bind_interfaces(
        found,
        spec.channel_names,
        spec.label_values,
        {k: v for k, v in explicit.items() if k in slugs},
    )


def test_container(
    paths: DatasetPaths,
    out: Path | None = None,
    cases: int = DEFAULT_TEST_CASES,
    case_names: list[str] | None = None,
    engine: str = "auto",
    memory: str = DEFAULT_MEMORY,
    time_limit: float = DEFAULT_TIME_LIMIT,
    dry_run: bool = False,
    quiet: bool = False,
    *,
    interfaces_file: Path | None = None,
    channel_map: list[str] | None = None,
) -> ContainerTestReport:
    """Run the exported image (or entrypoint) on cross-validation cases, the interfaces taken
    in turn; check every output against the platform's rules and limits."""
    export = ExportPaths(Path(out) if out is not None else paths.export)
    record = ExportRecord.load(export.record)
    if not export.entrypoint.is_file():
        raise MissingStageError(export.context, f"toolkit export-container {paths.name}")
    job_memory_bytes(memory)
    interfaces = test_interfaces(export, interfaces_file, channel_map)
    count = len(interfaces or AlgorithmSpec.load(export.algorithm_json).interfaces)
    selected = cross_validation_cases(paths, cases, case_names)
    report = ContainerTestReport(
        paths.name, record.tag, "dry-run" if dry_run else "container", "none", memory
    )
    limits = CaseLimits(memory=memory, time_limit=time_limit)

    def run_all(job, mode: str, label: str) -> None:
        for k, case in enumerate(track(selected, label, quiet=quiet)):
            report.cases.append(
                test_case(
                    case,
                    paths,
                    export,
                    job,
                    mode,
                    interface=k % count,
                    interfaces=interfaces,
                    limits=limits,
                )
            )

    if dry_run:
        run_all(lambda i, o: run_dry(export, i, o, time_limit), "dry-run", "test cases (dry run)")
    else:
        with connect(engine) as eng:
            report.engine = eng.description
            ensure_exported_image(eng, record, export)
            model_mount = (
                extract_model_tarball(export.model_tarball, export.extracted_model)
                if record.model_mode == "tarball"
                else None
            )
            gpu = record.device == "cuda" and host_has_gpu()
            if record.device == "cuda" and not gpu:
                warn(
                    "no GPU on this machine: the CUDA image runs on the CPU, its GPU memory is not measured"
                )
            run_all(
                lambda i, o: run_container(
                    eng, record.tag, i, o, model_mount, memory, time_limit, gpu
                ),
                "container",
                "test cases",
            )
    write_json(export.test_report, report.to_dict())
    write_model_card(paths, export)
    for result in report.cases:
        info(result.summary_line())
    gpu_line = gpu_memory_report([(c.case, c.input_voxels, c.gpu_peak_mb) for c in report.cases])
    if gpu_line:
        info(gpu_line)
    if not report.ok:
        failed = [r.case for r in report.cases if not r.ok]
        raise ToolkitError(
            f"{len(failed)} of {len(report.cases)} case(s) failed: {', '.join(failed)}",
            export.test_report,
        )
    info(
        f"all {len(report.cases)} case(s) passed ({report.mode}, {describe_job_memory(memory)} per job); "
        f"details in {export.test_report}, model card {export.model_card}"
    )
    return report


def warn(message: str) -> None:
    info(f"warning: {message}")


test_container.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
