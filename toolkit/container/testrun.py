"""Test runs of an exported algorithm, on cases laid out exactly as the platform lays them out.

Per case and interface: ``runs/<case>/input/<relative_path>/<uuid>.mha`` (one folder per
image input socket, a file name that is not fixed) with ``input/inputs.json`` listing the
interface's sockets, and an empty ``output/`` writable by the image's user. The job runs in
the image (no network, the selected memory minus the platform's 1 GiB reservation,
read-only input, a GPU when the image is for CUDA and this machine has one) or, without an
engine, as a subprocess of the exported entrypoint. Its output must be what the platform
accepts (exactly one single-channel uint8 image per image output socket, at its
``relative_path``, with the input's geometry and only values the socket's overlay segments
allow; valid JSON), within the time and memory limits, and must equal, voxel for voxel, what
``toolkit predict`` writes for the same case with the same configurations, folds and
postprocessing, from the workspace's models.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.container.engine import Mounts
from toolkit.container.entrypoint import DONE_PATTERN
from toolkit.container.interfaces import Interface
from toolkit.container.job_inputs import INPUTS_JSON
from toolkit.container.limits import job_memory_bytes, memory_problem, time_problem
from toolkit.container.outputs import check_output
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec
from toolkit.container.wheels import LEAN_EXCLUDED_MODULES
from toolkit.core.splits import read_splits
from toolkit.errors import ToolkitError
from toolkit.inference.files import predict_paths
from toolkit.inference.stage import PredictOptions, load_predictors, run_predict
from toolkit.io.atomic import write_json
from toolkit.io.dataset_json import CaseFiles, load_dataset_info, training_cases
from toolkit.io.images import make_sitk, read_channels, read_image
from toolkit.workspace import FILE_ENDING, DatasetPaths, ExportPaths

UUID_NAMESPACE = uuid.UUID("6f1c5a52-8f0e-4a4e-9d1e-2f6f3f0c9a11")


@dataclass
class CaseResult:
    case: str
    mode: str  # "container" or "dry-run"
    exit_code: int
    seconds: float
    peak_memory_mb: float | None
    memory_source: str
    job_seconds: float | None = None  # inside the job, as the entrypoint measured it
    process_peak_mb: float | None = None  # the entrypoint process's own peak resident memory
    reference_seconds: float | None = None
    identical: bool | None = None
    differing_voxels: int | None = None
    oom_killed: bool = False
    interface: int = 1  # which of the algorithm's interfaces the case was laid out for
    input_voxels: int = 0
    gpu_peak_mb: float | None = None  # PyTorch's peak reserved GPU memory, when on a GPU
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.problems and self.identical is not False

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}

    def summary_line(self) -> str:
        """One line for the person at the terminal."""
        memory = "unknown" if self.peak_memory_mb is None else f"{self.peak_memory_mb:.0f} MB"
        if self.process_peak_mb is not None and self.mode == "container":
            memory += f" (the entrypoint process alone: {self.process_peak_mb:.0f} MB resident)"
        if self.ok:
            verdict = "ok, identical to the reference" if self.identical else "ok"
        else:
            reasons = list(self.problems)
            if self.identical is False:
                reasons.append(
                    f"{self.differing_voxels} voxel(s) differ from the reference prediction"
                )
            verdict = "FAILED: " + "; ".join(reasons)
        if self.gpu_peak_mb is not None:
            memory += f", GPU {self.gpu_peak_mb:.0f} MB"
        return f"{self.case} (interface {self.interface}): {self.seconds:.1f} s, peak memory {memory}, {verdict}"


# --- choosing and laying out cases -----------------------------------------------------


def cross_validation_cases(
    paths: DatasetPaths, count: int, names: list[str] | None = None
) -> list[CaseFiles]:
    """``names`` if given; else ``count`` validation cases taken round-robin over the folds."""
    cases = {c.case: c for c in training_cases(paths, load_dataset_info(paths))}
    if names:
        unknown = [n for n in names if n not in cases]
        if unknown:
            raise ToolkitError(
                f"case(s) {unknown} are not training cases of {paths.name}", paths.images_tr
            )
        return [cases[n] for n in names]
    order: list[str] = []
    if paths.splits_json.is_file():
        folds = [s.val for s in read_splits(paths.splits_json)]
        for k in range(max((len(v) for v in folds), default=0)):
            order += [v[k] for v in folds if k < len(v) and v[k] in cases]
    order += [c for c in sorted(cases) if c not in order]
    if not order:
        raise ToolkitError("no training case to test with", paths.images_tr)
    return [cases[c] for c in order[:count]]


def case_uuid(case: str, channel: int) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, f"{case}/{channel}"))


def inputs_json_document(case: str, interface: Interface, files: dict[str, str]) -> list[dict]:
    """The platform's ``inputs.json`` for one case: one entry per input socket
    (``files``: slug -> the image file's name; other sockets get no value)."""
    entries = []
    for k, socket in enumerate(interface.inputs):
        entries.append(
            {
                "pk": case_uuid(case, k + 1000),
                "interface": {
                    "slug": socket.slug,
                    "kind": socket.kind,
                    "super_kind": socket.super_kind,
                    "relative_path": socket.relative_path,
                    "title": socket.title or socket.slug,
                },
                "image": {"pk": case_uuid(case, k), "name": files[socket.slug]}
                if socket.slug in files
                else None,
                "value": None,
                "file": None,
            }
        )
    return entries


def lay_out_case(
    case: CaseFiles, interface: Interface, run_dir: Path, suffix: str = ".mha"
) -> tuple[Path, Path]:
    """``run_dir/input`` as the platform fills it for ``interface`` and an empty ``run_dir/output``."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    input_dir, output_dir = run_dir / "input", run_dir / "output"
    names = {}
    for socket in interface.channel_inputs:
        folder = input_dir / socket.relative_path
        folder.mkdir(parents=True)
        name = f"{case_uuid(case.case, socket.channel or 0)}{suffix}"
        # pixels and geometry only: the source format's metadata has no place in a .mha
        array, geometry = read_image(case.images[socket.channel or 0])
        sitk.WriteImage(
            make_sitk(array, geometry), str(folder / name), useCompression=suffix == ".mha"
        )
        names[socket.slug] = name
    write_json(input_dir / INPUTS_JSON, inputs_json_document(case.case, interface, names))
    output_dir.mkdir(parents=True)
    for root, _dirs, files in os.walk(input_dir):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o644)
    # the image's user is not this machine's: the platform's /output is writable to it
    os.chmod(output_dir, 0o777)
    return input_dir, output_dir


# --- running one case ------------------------------------------------------------------


@dataclass(frozen=True)
class JobOutcome:
    exit_code: int
    seconds: float
    peak_memory_mb: float | None
    memory_source: str
    stderr: str
    oom_killed: bool = False
    timed_out: bool = False


# the entrypoint run with some top-level modules unimportable (``sys.argv[1]``: the script)
_WITHOUT_MODULES = (
    "import runpy, sys\n"
    "sys.modules.update(dict.fromkeys({modules!r}))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def entrypoint_command(script: Path, runtime: str) -> list[str]:
    """How this Python runs the exported entrypoint as the image would: for a lean runtime,
    with the modules its image does not install (torch, SimpleITK) unimportable, so a job
    that needs one fails here as it would in the image."""
    if runtime == "torch":
        return [sys.executable, str(script)]
    code = _WITHOUT_MODULES.format(modules=LEAN_EXCLUDED_MODULES)
    return [sys.executable, "-c", code, str(script)]


def run_dry(export: ExportPaths, input_dir: Path, output_dir: Path, timeout: float) -> JobOutcome:
    """The exported entrypoint as a subprocess of this Python, folders given as options
    (a lean export's without torch and SimpleITK, as in its image)."""
    env = dict(os.environ, TOOLKIT_QUIET="1", PYTHONUNBUFFERED="1")
    runtime = AlgorithmSpec.load(export.algorithm_json).runtime
    command = [
        *entrypoint_command(export.entrypoint, runtime),
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--model",
        str(export.model),
        "--algorithm",
        str(export.algorithm_json),
    ]
    start = time.perf_counter()
    with open(output_dir.parent / "stderr.txt", "w+b") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline, timed_out = start + timeout, False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid != 0:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return JobOutcome(
        exit_code=process.returncode,
        seconds=time.perf_counter() - start,
        peak_memory_mb=usage.ru_maxrss / 1024.0,
        memory_source="peak resident memory of the entrypoint process (wait4)",
        stderr=stderr,
        timed_out=timed_out,
    )


def run_container(
    engine,
    tag: str,
    input_dir: Path,
    output_dir: Path,
    model_dir: Path | None,
    memory: str,
    timeout: float,
    gpu: bool = False,
) -> JobOutcome:
    """One job in the image, with the memory the platform leaves the job (``memory`` minus
    the system's reservation) and, with ``gpu``, every GPU of this machine."""
    result = engine.run(
        tag,
        Mounts(input_dir, output_dir, model_dir),
        memory=str(job_memory_bytes(memory)),
        timeout=timeout,
        gpu=gpu,
    )
    return JobOutcome(
        exit_code=result.exit_code,
        seconds=result.seconds,
        peak_memory_mb=None
        if result.peak_memory_bytes is None
        else result.peak_memory_bytes / 1024**2,
        memory_source=result.memory_source,
        stderr=result.stderr,
        oom_killed=result.oom_killed,
        timed_out=result.timed_out,
    )


def extract_model_tarball(tarball: Path, target: Path) -> Path:
    """What the platform puts in ``/opt/ml/model``: the tarball extracted."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as archive:
        archive.extractall(target, filter="data")
    for root, _dirs, files in os.walk(target):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o644)
    return target


def reference_labels(
    paths: DatasetPaths,
    ensemble: EnsembleSpec,
    case: CaseFiles,
    folder: Path,
    runtime: str = "torch",
    model_root: Path | None = None,
) -> np.ndarray:
    """What ``toolkit predict --dataset D --config C --folds F --postprocess P`` writes for the case.

    Run through the command's own code (on this machine's CPU, from the workspace's models),
    so the job's output is compared with what a user of ``toolkit predict`` gets. A lean
    image (``runtime`` openvino or onnxruntime) is compared with ``toolkit predict --backend
    RUNTIME`` on the ONNX networks it ships (``model_root``, the export's model folder).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if runtime != "torch":
        if model_root is None:
            raise ValueError("a lean image's reference needs the exported model folder")
        return _runtime_reference(ensemble, case, folder, runtime, model_root)
    postprocessing = folder / "postprocessing.json"
    ensemble.postprocessing.save(postprocessing)
    target = folder / f"{case.case}{FILE_ENDING}"
    options = PredictOptions(
        folds=list(ensemble.folds), device="cpu", use_mirroring=ensemble.use_mirroring, quiet=True
    )
    run_predict(
        case.images[0],
        target,
        options,
        dataset=str(paths.root),
        configurations=list(ensemble.configurations),
        postprocess=postprocessing,
    )
    labels, _ = read_image(target)
    return labels


def _runtime_reference(
    ensemble: EnsembleSpec, case: CaseFiles, folder: Path, runtime: str, model_root: Path
) -> np.ndarray:
    options = PredictOptions(
        folds=list(ensemble.folds),
        use_mirroring=ensemble.use_mirroring,
        backend=runtime,
        quiet=True,
    )
    bundle = DatasetPaths(model_root)
    predictors = load_predictors([bundle.model_dir(c) for c in ensemble.configurations], options)
    target = folder / f"{case.case}{FILE_ENDING}"
    predict_paths(
        predictors, case.images[0], target, postprocessing=ensemble.postprocessing, quiet=True
    )
    labels, _ = read_image(target)
    return labels


@dataclass(frozen=True)
class CaseLimits:
    """The platform's limits a test run is checked against."""

    memory: str = "8g"  # selected; the job gets 1 GiB less
    time_limit: float = 3600.0


def test_case(
    case: CaseFiles,
    paths: DatasetPaths,
    export: ExportPaths,
    run,
    mode: str,
    *,
    compare: bool = True,
    interface: int = 0,
    interfaces: list[Interface] | None = None,
    limits: CaseLimits | None = None,
) -> CaseResult:
    """Lay out one case for interface ``interface`` (of ``interfaces``, default the export's),
    run the job (``run(input_dir, output_dir) -> JobOutcome``), check it."""
    spec = AlgorithmSpec.load(export.algorithm_json)
    ensemble = EnsembleSpec.load(export.ensemble_json)
    chosen = (interfaces or spec.interfaces)[interface]
    run_name = case.case if interface == 0 else f"{case.case}.interface-{interface + 1}"
    input_dir, output_dir = lay_out_case(case, chosen, export.run_dir(run_name))
    outcome: JobOutcome = run(input_dir, output_dir)
    _, geometry = read_channels(list(case.images))
    result = CaseResult(
        case=case.case,
        mode=mode,
        exit_code=outcome.exit_code,
        seconds=round(outcome.seconds, 3),
        peak_memory_mb=None if outcome.peak_memory_mb is None else round(outcome.peak_memory_mb, 1),
        memory_source=outcome.memory_source,
        oom_killed=outcome.oom_killed,
        interface=interface + 1,
        input_voxels=int(np.prod(geometry.shape_zyx)),
        stderr_tail="\n".join(outcome.stderr.strip().splitlines()[-5:]),
    )
    done = DONE_PATTERN.search(outcome.stderr)
    if done is not None:
        result.job_seconds = float(done.group("seconds"))
        result.process_peak_mb = float(done.group("peak_mb"))
        if done.group("gpu_mb"):
            result.gpu_peak_mb = float(done.group("gpu_mb"))
    if limits is not None:
        for problem in (
            time_problem(outcome.seconds, limits.time_limit),
            memory_problem(result.peak_memory_mb, limits.memory),
        ):
            if problem:
                result.problems.append(problem)
    if outcome.exit_code != 0:
        reason = (
            "killed for memory (exit 137)"
            if outcome.oom_killed
            else "stopped at the time limit"
            if outcome.timed_out
            else f"exit code {outcome.exit_code}"
        )
        result.problems.append(f"the job failed: {reason}: {result.stderr_tail or 'no stderr'}")
        return result
    labels, problems = check_output(output_dir, spec, geometry, chosen)
    result.problems += problems
    if compare and labels is not None:
        start = time.perf_counter()
        reference = reference_labels(
            paths, ensemble, case, export.reference_dir(run_name), spec.runtime, export.model
        )
        result.reference_seconds = round(time.perf_counter() - start, 3)
        if reference.shape != labels.shape:
            result.identical, result.differing_voxels = False, int(max(reference.size, labels.size))
        else:
            differing = int(np.count_nonzero(reference.astype(np.int64) != labels.astype(np.int64)))
            result.identical, result.differing_voxels = differing == 0, differing
    return result


test_case.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
