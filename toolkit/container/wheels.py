"""What the image installs: the toolkit as a wheel, and its runtime requirements.

The container needs only what its entrypoint imports (torch, numpy, scipy, SimpleITK and the
few small packages the toolkit's inference modules use, found by importing them in a fresh
interpreter), each pinned to the version installed here, so the container computes what ``toolkit predict``
computes on this machine. A lean image (``--runtime openvino|onnxruntime``) installs neither
torch nor SimpleITK: its job reads and writes MetaImage with :mod:`toolkit.io.metaimage`,
and its imports are measured with SimpleITK made unimportable, as it is in the image. The ``cpu`` image uses PyTorch's CPU build (``torch==X+cpu``,
about 190 MB instead of several GB of CUDA libraries).

With a wheelhouse, every wheel is downloaded on the host (``pip download`` for the image's
platform: Linux x86-64, CPython 3.11) and the image installs them with ``--no-index``: the
build needs no network at all, which also suits machines behind TLS-intercepting proxies.
The CPU build of torch lives on PyTorch's own index; where pip does not already find it
(``pip config list``), set ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import toolkit
from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path

PYTHON_VERSION = "3.11"
IMPLEMENTATION = "cp"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# always in the image; the rest is what the entrypoint's imports pull in (see below)
BASE_DISTRIBUTIONS = ("numpy", "scipy")
# the torch image reads every format SimpleITK reads; a lean one reads MetaImage without it
TORCH_IMAGE_DISTRIBUTIONS = (*BASE_DISTRIBUTIONS, "SimpleITK")
# what a lean image's job must import without: the probe makes them unimportable
LEAN_EXCLUDED_MODULES = ("torch", "SimpleITK")
# modules the container's job imports: their distributions are what the image installs
ENTRYPOINT_MODULES = (
    "toolkit.container.entrypoint",
    "toolkit.inference.files",
    "toolkit.inference.predictor",
)
# a lean image's job (export-container --runtime openvino|onnxruntime): the torch-free
# predictor and the runtime's own package, no torch
LEAN_ENTRYPOINT_MODULES = (
    "toolkit.container.entrypoint",
    "toolkit.inference.files",
    "toolkit.inference.runtime",
)
PACKAGE_NAME = "toolkit"


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ToolkitError(
            f"{distribution} is not installed in this Python ({sys.executable})"
        ) from None


def torch_requirement(device: str, torch_version: str | None = None) -> str:
    """``torch==2.13.0+cpu`` for a CPU image, ``torch==2.13.0`` (CUDA build) for a GPU image."""
    version = (torch_version or installed_version("torch")).split("+", 1)[0]
    return f"torch=={version}+cpu" if device == "cpu" else f"torch=={version}"


def imported_distributions(
    modules: tuple[str, ...] = ENTRYPOINT_MODULES, excluded: tuple[str, ...] = ()
) -> list[str]:
    """Distributions whose packages a fresh interpreter loads when it imports ``modules``,
    with the top-level modules ``excluded`` made unimportable (as they are in a lean image:
    an import of one fails the probe, so it cannot slip in unseen).

    Measured rather than listed by hand, so a new import in inference reaches the image
    without anyone remembering to add it here.
    """
    probe = "import importlib, sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in excluded)
    probe += "".join(f"importlib.import_module({m!r})\n" for m in modules)
    probe += (
        "print('\\n'.join(sorted({name.split('.')[0] for name, module in sys.modules.items()"
        " if module is not None})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise ToolkitError(f"importing the container's modules failed here: {tail}")
    owners = importlib.metadata.packages_distributions()
    found = {dist for top in result.stdout.split() for dist in owners.get(top, [])}
    return sorted(found, key=str.lower)


def entrypoint_modules(runtime: str = "torch") -> tuple[str, ...]:
    """The modules the image's job imports with ``runtime`` running the networks."""
    if runtime == "torch":
        return ENTRYPOINT_MODULES
    return (*LEAN_ENTRYPOINT_MODULES, runtime)


def runtime_requirements(
    device: str, distributions: list[str] | None = None, runtime: str = "torch"
) -> list[str]:
    """Pinned requirements of the image (torch by device, or no torch for a lean runtime),
    without the toolkit itself."""
    lean = runtime != "torch"
    names = {d.lower(): d for d in (BASE_DISTRIBUTIONS if lean else TORCH_IMAGE_DISTRIBUTIONS)}
    if distributions is None:
        excluded = LEAN_EXCLUDED_MODULES if lean else ()
        distributions = imported_distributions(entrypoint_modules(runtime), excluded)
    for dist in distributions:
        names.setdefault(dist.lower(), dist)
    names.pop(PACKAGE_NAME, None)
    names.pop("torch", None)
    pinned = [f"{names[key]}=={installed_version(names[key])}" for key in sorted(names)]
    return ([torch_requirement(device)] if runtime == "torch" else []) + pinned


def pip_download_command(
    requirements: list[str], dest: Path, find_links: Path | None = None, no_deps: bool = False
) -> list[str]:
    """``pip download`` for the image's platform, not this machine's (pure function)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
    ]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += [
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        IMPLEMENTATION,
        "--only-binary=:all:",
    ]
    if find_links is not None:
        command += ["--find-links", str(find_links)]
    if no_deps:  # the requirements are every distribution the job imports, measured
        command.append("--no-deps")
    return command + list(requirements)


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def download_wheels(
    requirements: list[str], dest: Path, wheelhouse: Path, no_deps: bool = False
) -> list[Path]:
    """Put into ``dest`` exactly the wheels ``requirements`` need, through ``wheelhouse``.

    Wheels already in the wheelhouse are reused; newly downloaded ones are added to it, so a
    second export downloads nothing. ``no_deps``: the requirements alone (a lean image pins
    every distribution its job imports and leaves out what the runtimes only declare, such
    as sympy for ONNX Runtime's tools).
    """
    dest.mkdir(parents=True, exist_ok=True)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    command = pip_download_command(requirements, dest, find_links=wheelhouse, no_deps=no_deps)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [
            line
            for line in (result.stderr or result.stdout).strip().splitlines()
            if not line.startswith("WARNING: Location")
        ]
        hint = ""
        if any("+cpu" in r for r in requirements):
            hint = f"; the CPU build of torch is on PyTorch's index: set PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX}"
        raise ToolkitError(f"pip download failed: {' | '.join(lines[-4:])}{hint}", wheelhouse)
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        _link_or_copy(wheel, wheelhouse / wheel.name)
    return wheels


# --- the toolkit as a wheel -------------------------------------------------------------


def _package_files(package_dir: Path) -> list[Path]:
    files = []
    for path in sorted(package_dir.rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and path.suffix not in (".pyc", ".pyo")
        ):
            files.append(path)
    return files


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_toolkit_wheel(dest: Path, requirements: list[str]) -> Path:
    """A pure-Python wheel of the installed ``toolkit`` package (no build tools needed).

    Built from the package's files as they are installed here (an editable checkout or a
    regular install), with ``requirements`` as its declared dependencies; file times are
    fixed so that the same sources give the same wheel.
    """
    package_dir = Path(toolkit.__file__).resolve().parent
    version = toolkit.__version__
    dist_info = f"{PACKAGE_NAME}-{version}.dist-info"
    target = dest / f"{PACKAGE_NAME}-{version}-py3-none-any.whl"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            f"Name: {PACKAGE_NAME}",
            f"Version: {version}",
            "Requires-Python: >=3.10",
        ]
        + [f"Requires-Dist: {r}" for r in requirements]
    )
    wheel_meta = "\n".join(
        [
            "Wheel-Version: 1.0",
            "Generator: toolkit.container.wheels",
            "Root-Is-Purelib: true",
            "Tag: py3-none-any",
        ]
    )
    entries: list[tuple[str, bytes]] = []
    for path in _package_files(package_dir):
        entries.append(
            (f"{PACKAGE_NAME}/{path.relative_to(package_dir).as_posix()}", path.read_bytes())
        )
    entries.append((f"{dist_info}/METADATA", (metadata + "\n").encode()))
    entries.append((f"{dist_info}/WHEEL", (wheel_meta + "\n").encode()))
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in entries]
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, data)
    return target
