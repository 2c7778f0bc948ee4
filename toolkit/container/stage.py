"""``toolkit export-container`` and ``toolkit test-container``: the stages, start to end.

Export: selection -> build context -> image (Docker SDK, streamed log) -> one test run on a
cross-validation case laid out as on the platform (no network, memory limit, read-only
input; output checked and compared with the predictor on this machine) -> ``docker save``
as ``.tar.gz`` -> the platform's archive checks. ``--no-build`` stops after the context and
runs the exported entrypoint as a subprocess instead (no engine needed).

Test: the exported image on several cross-validation cases, with time and peak memory per
case, every output equal to the reference prediction.

What happened is written to ``export.json`` and ``container-test.json`` in the export folder.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.container.archive import check_archive
from toolkit.container.base import DEBOOTSTRAP_IMAGE, PULLED_IMAGE
from toolkit.container.context import (
    ExportOptions,
    default_tag,
    ensemble_from_selection,
    write_context,
)
from toolkit.container.engine import DEFAULT_MEMORY, connect, resolve_engine
from toolkit.container.spec import EnsembleSpec
from toolkit.container.testrun import (
    CaseResult,
    cross_validation_cases,
    extract_model_tarball,
    run_container,
    run_dry,
    test_case,
)
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.json_files import read_contract
from toolkit.progress import info, track
from toolkit.workspace import DatasetPaths, ExportPaths

__all__ = ["ExportOptions", "default_tag", "export_container", "test_container"]

DEFAULT_TIME_LIMIT = 3600.0  # the platform's default per job
DEFAULT_TEST_CASES = 3
BUILDER_STAGE = "builder"  # the Dockerfile template's third-party stage


def builder_tag(device: str) -> str:
    return f"toolkit-builder-cache:{device}"


def default_base_image(engine_kind: str | None) -> str:
    """Debootstrap's base for the private podman service (no registry), else python:3.11-slim."""
    return DEBOOTSTRAP_IMAGE if engine_kind == "podman" else PULLED_IMAGE


@dataclass
class ExportRecord:
    """``export.json``: what was exported and how it went."""

    dataset: str
    tag: str
    base_image: str
    model_mode: str
    device: str
    engine: str
    built: bool
    configurations: list[str]
    folds: list[int | str]
    input_slugs: list[str]
    output_slug: str
    model_bytes: int
    context_seconds: float
    build_seconds: float | None = None
    image_id: str = ""
    image_bytes: int | None = None
    image_user: str = ""
    image_architecture: str = ""
    save_seconds: float | None = None
    archive: dict[str, Any] | None = None
    model_tarball_bytes: int | None = None
    test_run: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> ExportRecord:
        if not path.is_file():
            raise MissingStageError(path, f"toolkit export-container {path.parent.parent.name}")
        return read_contract(
            path,
            lambda data: cls(
                **{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            ),
            what="export record",
            producer=f"toolkit export-container {path.parent.parent.name}",
        )


def _require_ok(result: CaseResult, what: str) -> None:
    if not result.ok:
        raise ToolkitError(f"{what}: {result.summary_line()}")


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
    if not options.base_image:
        options = dataclasses.replace(options, base_image=default_base_image(kind))

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
    )
    info(
        f"build context written to {export.context} ({len(summary.files)} files, model {summary.model_bytes / 1e6:.1f} MB)"
    )
    case = cross_validation_cases(paths, 1)[0]

    if not build:
        result = test_case(
            case, paths, export, lambda i, o: run_dry(export, i, o, time_limit), "dry-run"
        )
        record.test_run = result.to_dict()
        record.save(export.record)
        _require_ok(result, "the dry run")
        info(
            f"dry run of the entrypoint on {case.case}: output valid and identical to the reference ({result.seconds:.1f} s)"
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
                export.context, builder_tag(options.device), log, echo, target=BUILDER_STAGE
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
        model_mount = (
            extract_model_tarball(export.model_tarball, export.extracted_model)
            if options.model_mode == "tarball"
            else None
        )
        result = test_case(
            case,
            paths,
            export,
            lambda i, o: run_container(eng, options.tag, i, o, model_mount, memory, time_limit),
            "container",
        )
        record.test_run = result.to_dict()
        record.save(export.record)
        _require_ok(result, "the test run")
        info(
            f"test run on {case.case}: {result.seconds:.1f} s, peak memory {_mb(result.peak_memory_mb)}, identical to the reference"
        )
        if save:
            record.save_seconds = round(eng.save(options.tag, export.image_archive), 1)
            report = check_archive(export.image_archive)
            record.archive = report.to_dict()
            info(
                f"saved {export.image_archive} ({report.size_bytes / 1e9:.2f} GB) in {record.save_seconds:.0f} s: passes the platform's checks"
            )
        eng.prune_dangling_images()
    record.save(export.record)
    return record


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


@dataclass
class ContainerTestReport:
    dataset: str
    tag: str
    mode: str
    engine: str
    memory_limit: str
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "tag": self.tag,
            "mode": self.mode,
            "engine": self.engine,
            "memory_limit": self.memory_limit,
            "ok": self.ok,
            "cases": [c.to_dict() for c in self.cases],
        }


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
) -> ContainerTestReport:
    """Run the exported image (or entrypoint) on cross-validation cases; check every output."""
    export = ExportPaths(Path(out) if out is not None else paths.export)
    record = ExportRecord.load(export.record)
    if not export.entrypoint.is_file():
        raise MissingStageError(export.context, f"toolkit export-container {paths.name}")
    selected = cross_validation_cases(paths, cases, case_names)
    report = ContainerTestReport(
        paths.name, record.tag, "dry-run" if dry_run else "container", "none", memory
    )
    if dry_run:
        for case in track(selected, "test cases (dry run)", quiet=quiet):
            report.cases.append(
                test_case(
                    case, paths, export, lambda i, o: run_dry(export, i, o, time_limit), "dry-run"
                )
            )
    else:
        with connect(engine) as eng:
            report.engine = eng.description
            ensure_exported_image(eng, record, export)
            model_mount = (
                extract_model_tarball(export.model_tarball, export.extracted_model)
                if record.model_mode == "tarball"
                else None
            )
            for case in track(selected, "test cases", quiet=quiet):
                report.cases.append(
                    test_case(
                        case,
                        paths,
                        export,
                        lambda i, o: run_container(
                            eng, record.tag, i, o, model_mount, memory, time_limit
                        ),
                        "container",
                    )
                )
    write_json(export.test_report, report.to_dict())
    for result in report.cases:
        info(result.summary_line())
    if not report.ok:
        failed = [r.case for r in report.cases if not r.ok]
        raise ToolkitError(
            f"{len(failed)} of {len(report.cases)} case(s) failed: {', '.join(failed)}",
            export.test_report,
        )
    info(f"all {len(report.cases)} case(s) passed ({report.mode}); details in {export.test_report}")
    return report


test_container.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
