"""Reusable pieces of the benchmarks against nnU-Net v2.

* :func:`ensure_nnunet` creates the reference's own venv at ``bench/.venv-nnunet`` from
  ``bench/nnunet-requirements.txt`` (every package pinned, installed with ``--no-deps``: the
  2.13.0 CPU torch, no torchvision or timm, which nnU-Net v2's U-Nets, planners, trainer and
  predictor do not import), reused while its stamp names the requirements' digest and
  ``nnunetv2`` imports; ``make reference`` (run by ``.ci/run``) calls it.
* :func:`export_nnunet_raw` links a workspace dataset into ``nnUNet_raw/DatasetXXX_Name``
  (our raw layout is nnU-Net v2's, so the files are linked, not copied).
* :func:`measure` runs a command under ``/usr/bin/time -v``: wall time and peak resident
  memory (GNU time reports the largest single process of the tree, not a sum over workers).
* :func:`write_results` writes ``bench/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.io.atomic import write_json, write_text
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.workspace import DatasetPaths

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / "work"
NNUNET_VENV = BENCH / ".venv-nnunet"
NNUNET_VERSION = "2.8.1"
# every package of the reference's venv, pinned (the CPU torch, no torchvision: see the file)
NNUNET_REQUIREMENTS = BENCH / "nnunet-requirements.txt"
TIME = "/usr/bin/time"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# the reference's venv -------------------------------------------------------------------


def nnunet_python() -> Path:
    """``$TOOLKIT_NNUNET_PYTHON`` (a reference venv made elsewhere), else the bench venv's."""
    override = os.environ.get("TOOLKIT_NNUNET_PYTHON")
    return Path(override) if override else NNUNET_VENV / "bin" / "python"


def nnunet_command(name: str) -> Path:
    return nnunet_python().parent / name


def nnunet_stamp() -> Path:
    """The file that says the venv holds this version of the requirements."""
    digest = hashlib.sha256(NNUNET_REQUIREMENTS.read_bytes()).hexdigest()[:16]
    return NNUNET_VENV / f".installed-{digest}"


def nnunet_is_current() -> bool:
    """The reference's venv imports nnU-Net v2 (and, for the bench venv, holds the current
    requirements; a ``TOOLKIT_NNUNET_PYTHON`` venv made elsewhere has no stamp)."""
    python = nnunet_python()
    stamped = bool(os.environ.get("TOOLKIT_NNUNET_PYTHON")) or nnunet_stamp().is_file()
    if not python.exists() or not stamped:
        return False
    check = (
        "import importlib.metadata as m, nnunetv2, dynamic_network_architectures; "
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor; "
        f"assert m.version('nnunetv2') == '{NNUNET_VERSION}'"
    )
    return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0


def _base_python() -> str:
    """A Python that can create a venv (not the project's venv python itself)."""
    base = getattr(sys, "_base_executable", None)
    return base if base and Path(base).exists() else shutil.which("python3") or sys.executable


def ensure_nnunet() -> Path:
    """The reference's venv python; made (again) when absent or older than the requirements."""
    if nnunet_is_current():
        return nnunet_python()
    if os.environ.get("TOOLKIT_NNUNET_PYTHON"):
        raise RuntimeError(
            f"TOOLKIT_NNUNET_PYTHON={nnunet_python()} does not import nnU-Net v2 {NNUNET_VERSION}"
        )
    log(
        f"installing nnU-Net v2 {NNUNET_VERSION} into {NNUNET_VENV} from "
        f"{NNUNET_REQUIREMENTS.relative_to(ROOT)} (about 1.9 GB, minutes)"
    )
    if NNUNET_VENV.exists():  # another recipe's venv: start clean, not on top of it
        shutil.rmtree(NNUNET_VENV)
    subprocess.run([_base_python(), "-m", "venv", str(NNUNET_VENV)], check=True)
    subprocess.run(
        [
            str(nnunet_python()),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "-r",
            str(NNUNET_REQUIREMENTS),
        ],
        check=True,
    )
    nnunet_stamp().touch()
    if not nnunet_is_current():
        raise RuntimeError(
            f"nnU-Net v2 in {NNUNET_VENV} does not import; remove the folder and run again"
        )
    return nnunet_python()


def nnunet_versions() -> dict:
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ('nnunetv2', 'torch', 'dynamic-network-architectures')}))"
    out = subprocess.run(
        [str(nnunet_python()), "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@dataclass(frozen=True)
class NnunetFolders:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def env(self, threads: int | None = None) -> dict:
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
        )
        if threads is not None:
            env.update(OMP_NUM_THREADS=str(threads), nnUNet_n_proc_DA=str(threads))
        return env


def nnunet_dataset_name(dataset_id: int, name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9]", "", name.split("_", 1)[-1]) or "Dataset"
    return f"Dataset{dataset_id:03d}_{clean}"


def export_nnunet_raw(paths: DatasetPaths, folders: NnunetFolders, dataset_id: int) -> Path:
    """Link a workspace dataset into ``nnUNet_raw/DatasetXXX_Name`` (replacing an older export)."""
    info = load_dataset_info(paths)
    target = folders.raw / nnunet_dataset_name(dataset_id, paths.name)
    if target.exists():
        shutil.rmtree(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir(parents=True)
    cases = training_cases(paths, info)
    for case in cases:
        for image in case.images:
            (target / "imagesTr" / image.name).symlink_to(image.resolve())
        if case.label is not None:
            (target / "labelsTr" / case.label.name).symlink_to(case.label.resolve())
    dataset_json = {
        "channel_names": info.channel_names,
        "labels": info.labels,
        "numTraining": len(cases),
        "file_ending": info.file_ending,
        "name": paths.name,
    }
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return target


# measuring ------------------------------------------------------------------------------


@dataclass
class Measurement:
    command: str
    wall_s: float
    peak_rss_mb: float
    returncode: int
    log: str  # file with the command's output

    def check(self) -> Measurement:
        if self.returncode != 0:
            tail = Path(self.log).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`{self.command}` failed with exit code {self.returncode}:\n{tail}")
        return self


def _parse_time(text: str) -> tuple[float, float]:
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        raise RuntimeError("could not read /usr/bin/time's report")
    hours, minutes, seconds = wall.groups()
    total = (int(hours) if hours else 0) * 3600 + int(minutes) * 60 + float(seconds)
    return total, int(rss.group(1)) / 1024


def measure(
    command: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None
) -> Measurement:
    """Run ``command`` under ``/usr/bin/time -v``; output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    report = log_path.with_suffix(".time")
    shown = " ".join(str(c) for c in command)
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.run(
            [TIME, "-v", "-o", str(report), *map(str, command)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    elapsed = time.perf_counter() - start
    try:
        wall, rss = _parse_time(report.read_text())
    except (FileNotFoundError, RuntimeError):
        wall, rss = elapsed, float("nan")
    return Measurement(shown, wall, rss, proc.returncode, str(log_path))


# reporting ------------------------------------------------------------------------------


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "load_average": [round(v, 2) for v in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def cpu_flags() -> list[str]:
    """The vector-unit flags of this CPU that decide its fp32/bf16 speed (from /proc/cpuinfo)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [f for f in wanted if f in flags]


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    write_json(json_path, data)
    write_text(md_path, markdown.rstrip() + "\n")
    log(f"results: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
    return json_path, md_path


def as_dict(obj) -> dict:
    return asdict(obj)
