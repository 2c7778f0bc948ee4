"""The build context of an algorithm image: everything ``docker build`` needs, in one folder.

::

    context/Dockerfile          from container/template/Dockerfile.template (two stages, non-root)
    context/requirements.txt    pinned runtime requirements and the toolkit itself
    context/wheels/             every third-party wheel, from this machine (offline build);
                                empty with --online-build (pip downloads inside the build)
    context/toolkit-wheel/      the toolkit itself as a wheel
    context/entrypoint.py       container/template/entrypoint.py
    context/algorithm.json      the interfaces (bound to channels), labels, device
    context/model/              ensemble.json + only the configurations and folds used

The model goes into the image (``baked``) or into ``model.tar.gz`` for the platform's
``/opt/ml/model`` (``tarball``; then ``.dockerignore`` keeps it out of the image).
A lean image (``--runtime openvino|onnxruntime``; OpenVINO is the default on the CPU:
:func:`default_runtime`) holds each fold's ONNX graph (exported here, or copied when the
dataset's model is already ONNX) and installs neither torch nor SimpleITK: only the
distributions its job imports, the runtime's included, and of OpenVINO only its CPU plugin
and ONNX reader. A torch image (``--runtime torch``, and every ``--device cuda`` image) holds
checkpoints copied without their training state (optimizer, scaler): inference needs the
network's weights only, and the image is smaller for it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import toolkit
from toolkit.container import wheels
from toolkit.container.base import PULLED_IMAGE
from toolkit.container.interfaces import (
    bind_interfaces,
    parse_channel_map,
    read_interfaces,
    shorthand_interface,
)
from toolkit.container.models import copy_models
from toolkit.container.spec import (
    RUNTIMES,
    AlgorithmSpec,
    EnsembleSpec,
    default_input_slugs,
    default_runtime,
    slugify,
)
from toolkit.core.labels import dataset_label_model
from toolkit.core.plans import Plans
from toolkit.core.selection import Selection
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.atomic import atomic_path, replace_folder, write_text
from toolkit.io.dataset_json import read_dataset_info
from toolkit.io.staging import staging_folder, sweep_staging
from toolkit.workspace import (
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    DatasetPaths,
    ExportPaths,
)

MODEL_MODES = ("baked", "tarball")
TEMPLATE_NAME = "Dockerfile.template"
ENTRYPOINT_NAME = "entrypoint.py"
# where the model lives in the image: baked in, or where the platform extracts model.tar.gz
BAKED_MODEL_DIR = "/opt/algorithm/model"
TARBALL_MODEL_DIR = "/opt/ml/model"
DEFAULT_OUTPUT_SLUG = "segmentation"
STAGING_PREFIX = ".partial."  # the export folder's staging folders (toolkit.io.staging)
CONTEXT_MTIME = 946684800  # 2000-01-01: every context file gets this time stamp


def template_dir() -> Path:
    """The Dockerfile template and entrypoint, shipped inside the package (no source checkout needed)."""
    folder = Path(__file__).resolve().parent / "template"
    if not (folder / TEMPLATE_NAME).is_file():
        raise ToolkitError(
            f"{TEMPLATE_NAME} is missing from the installed toolkit package: reinstall it", folder
        )
    return folder


def default_tag(dataset_name: str) -> str:
    return f"toolkit-{slugify(dataset_name)}:latest"


@dataclass(frozen=True)
class ExportOptions:
    tag: str
    base_image: str | None  # None: the engine's default (export_container resolves it)
    model_mode: str = "baked"
    input_slugs: list[str] | None = None  # default: one per channel, from the channel names
    output_slug: str = DEFAULT_OUTPUT_SLUG
    device: str = "cpu"
    # wheels downloaded here on this machine, the build then needs no network; None: pip
    # downloads them inside the build (export_container fills in the default wheelhouse)
    wheelhouse: Path | None = None
    folds: list[int | str] | None = None  # None: the selection's; e.g. ["all"]: fold_all
    interfaces: Path | None = None  # the phase's interfaces (JSON); None: the slug shorthand
    channel_map: list[str] | None = None  # "SOCKET=CHANNEL" where names do not tell
    online_build: bool = False  # pip downloads the wheels inside the build (needs network)
    # torch, or openvino / onnxruntime: a lean image of ONNX networks; None: default_runtime
    runtime: str | None = None

    def __post_init__(self) -> None:
        if self.runtime is None:
            object.__setattr__(self, "runtime", default_runtime(self.device))
        if self.runtime not in RUNTIMES:
            raise ToolkitError(
                f"--runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}"
            )
        if self.runtime != "torch" and self.device != "cpu":
            raise ToolkitError(
                f"--runtime {self.runtime} runs on the CPU: give --device cpu (or --runtime torch)"
            )
        if self.model_mode not in MODEL_MODES:
            raise ToolkitError(
                f"--model-mode must be one of {', '.join(MODEL_MODES)}, not {self.model_mode!r}"
            )
        if self.interfaces is not None and (
            self.input_slugs or self.output_slug != DEFAULT_OUTPUT_SLUG
        ):
            raise ToolkitError(
                "--interfaces replaces --input-slug/--output-slug (their shorthand for one interface): give one or the other"
            )
        if self.online_build and self.wheelhouse is not None:
            raise ToolkitError(
                "--online-build downloads the wheels inside the build; --wheelhouse downloads them here: give one or the other"
            )
        if self.tag != self.tag.lower() or not self.tag:
            raise ToolkitError(
                f"--tag {self.tag!r} must be a lower-case image name such as 'my-algorithm:1.0'"
            )

    @property
    def model_dir_in_image(self) -> str:
        return BAKED_MODEL_DIR if self.model_mode == "baked" else TARBALL_MODEL_DIR


@dataclass(frozen=True)
class ContextSummary:
    """What was written, for the export record and the command's report."""

    context: Path
    algorithm: AlgorithmSpec
    ensemble: EnsembleSpec
    requirements: list[str]
    wheels: list[str]
    model_bytes: int
    model_tarball: Path | None = None
    files: list[str] = field(default_factory=list)


# --- pure parts ------------------------------------------------------------------------


def render_dockerfile(template: str, values: dict[str, str]) -> str:
    """Fill ``{{NAME}}`` placeholders; every placeholder must get a value."""
    text = template
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(
            f"Dockerfile template placeholder without a value: {text[start : text.index('}}', start) + 2]}"
        )
    return text


def dockerfile_values(
    options: ExportOptions, dataset_name: str, ensemble: EnsembleSpec
) -> dict[str, str]:
    if options.wheelhouse is not None:
        pip_source = "--no-index"  # every wheel is in the context: no network during the build
    elif options.device == "cpu":
        pip_source = f"--extra-index-url {wheels.TORCH_CPU_INDEX}"
    else:
        pip_source = ""
    if options.runtime != "torch":
        # every distribution the job imports is pinned (measured): the runtimes' declared
        # extras (sympy, protobuf, ...) stay out
        pip_source += " --no-deps"
    model_copy = (
        f"COPY model/ {BAKED_MODEL_DIR}/"
        if options.model_mode == "baked"
        else (
            f"# the model comes as model.tar.gz, extracted by the platform to {TARBALL_MODEL_DIR}"
        )
    )
    return {
        "DATASET": dataset_name,
        "TAG": options.tag,
        "VERSION": toolkit.__version__,
        "ENSEMBLE": " + ".join(ensemble.configurations),
        "BASE_IMAGE": options.base_image or PULLED_IMAGE,
        "PIP_SOURCE": pip_source,
        "MODEL_COPY": model_copy,
        "MODEL_DIR": options.model_dir_in_image,
        "PYTHON_VERSION": wheels.PYTHON_VERSION,
        "RUNTIME": options.runtime,
    }


def dockerignore_lines(options: ExportOptions) -> list[str]:
    lines = ["**/__pycache__", "**/*.pyc"]
    if options.model_mode == "tarball":
        lines.append("model")
    return lines


def ensemble_from_selection(
    paths: DatasetPaths, folds: list[int | str] | None = None
) -> EnsembleSpec:
    """The chosen configurations, folds and postprocessing of ``selection.json``; ``folds``
    replaces the selection's (e.g. ``["all"]``: the models trained on every case)."""
    selection = Selection.load(paths.selection_json)
    previous_stages = {}
    for config in selection.configurations:
        plans_path = paths.model_dir(config) / MODEL_PLANS
        if not plans_path.is_file():
            raise MissingStageError(plans_path, f"toolkit train {paths.name} {config}")
        previous = Plans.load(plans_path).configuration(config).previous_stage
        if previous:
            previous_stages[config] = previous
    return EnsembleSpec(
        configurations=list(selection.configurations),
        folds=list(folds) if folds else list(selection.folds),
        postprocessing=selection.postprocessing,
        previous_stages=previous_stages,
    )


def make_reproducible(folder: Path) -> None:
    """Files 0644, folders 0755, one fixed time stamp.

    The image's non-root user must read what is copied in; and engines key their build cache
    on file metadata too, so an unchanged context must look unchanged to reuse the layers.
    """
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)
            os.utime(Path(root) / name, (CONTEXT_MTIME, CONTEXT_MTIME))
    for root, dirs, _files in os.walk(folder, topdown=False):
        for name in dirs:
            os.utime(Path(root) / name, (CONTEXT_MTIME, CONTEXT_MTIME))
    os.chmod(folder, 0o755)
    os.utime(folder, (CONTEXT_MTIME, CONTEXT_MTIME))


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_model_tarball(model_dir: Path, target: Path) -> Path:
    """``model.tar.gz`` whose root is the model folder's content (what /opt/ml/model gets)."""
    with atomic_path(target) as tmp:
        with tarfile.open(tmp, "w:gz") as archive:
            for child in sorted(model_dir.iterdir()):
                archive.add(child, arcname=child.name, filter=_tar_filter)
    return target


def algorithm_spec(
    paths: DatasetPaths, ensemble: EnsembleSpec, options: ExportOptions
) -> AlgorithmSpec:
    """Interfaces and labels, from the (self-contained) model folder's dataset.json."""
    first = ensemble.configurations[0]
    dataset_json = paths.model_dir(first) / MODEL_DATASET_JSON
    if not dataset_json.is_file():
        raise MissingStageError(dataset_json, f"toolkit train {paths.name} {first}")
    info = read_dataset_info(dataset_json)
    # the values a prediction holds: classes, or the values regions write; never the ignore value
    written = dataset_label_model(info, dataset_json).value_names
    labels = {"background": 0, **{name: value for value, name in written.items()}}
    if options.interfaces is not None:
        interfaces = bind_interfaces(
            read_interfaces(options.interfaces),
            info.channels,
            sorted(labels.values()),
            parse_channel_map(options.channel_map, info.channels),
        )
    else:
        if options.channel_map:
            raise ToolkitError(
                "--channel-map needs --interfaces (the shorthand maps slugs in channel order)"
            )
        slugs = list(options.input_slugs or default_input_slugs(info.channels))
        interfaces = [shorthand_interface(slugs, options.output_slug, info.channels, labels)]
    return AlgorithmSpec(
        dataset_name=paths.name,
        channel_names=info.channels,
        labels=labels,
        interfaces=interfaces,
        device=options.device,
        runtime=options.runtime,
    )


def write_context(
    paths: DatasetPaths, ensemble: EnsembleSpec, options: ExportOptions, export: ExportPaths
) -> ContextSummary:
    """Write ``export.context`` afresh (and ``model.tar.gz`` in tarball mode)."""
    spec = algorithm_spec(paths, ensemble, options)
    if max(spec.label_values) > 255:
        raise ToolkitError(
            f"labels go up to {max(spec.label_values)}; the platform's segmentations are uint8 (at most 255)"
        )
    # written into a staging folder first, so an interrupted export never leaves half a
    # context; its name is unique, so exports running at once never delete each other's files,
    # and it names its process, so that the next export removes one whose process died
    sweep_staging(export.root, STAGING_PREFIX)  # of exports killed half-way
    staged = ExportPaths(staging_folder(export.root, STAGING_PREFIX))
    try:
        return _fill_context(paths, ensemble, options, export, spec, staged)
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)


def _fill_context(
    paths: DatasetPaths,
    ensemble: EnsembleSpec,
    options: ExportOptions,
    export: ExportPaths,
    spec: AlgorithmSpec,
    staged: ExportPaths,
) -> ContextSummary:
    source = template_dir()
    staged.model.mkdir(parents=True)

    model_bytes = copy_models(paths, ensemble, staged.model, options.runtime)
    ensemble.save(staged.ensemble_json)
    spec.save(staged.algorithm_json)
    shutil.copyfile(source / ENTRYPOINT_NAME, staged.entrypoint)

    lean = options.runtime != "torch"
    requirements = (
        wheels.runtime_requirements(options.device, runtime=options.runtime)
        if lean
        else wheels.runtime_requirements(options.device)
    )
    own_wheel = wheels.build_toolkit_wheel(staged.toolkit_wheel, requirements)
    staged.wheels.mkdir()
    if options.wheelhouse is not None:
        wheelhouse = Path(options.wheelhouse).expanduser()
        if lean:
            wheels.download_wheels(requirements, staged.wheels, wheelhouse, no_deps=True)
        else:
            wheels.download_wheels(requirements, staged.wheels, wheelhouse)
    write_text(staged.requirements, "\n".join(requirements) + "\n")
    template = (source / TEMPLATE_NAME).read_text()
    write_text(
        staged.dockerfile,
        render_dockerfile(template, dockerfile_values(options, paths.name, ensemble)),
    )
    write_text(staged.dockerignore, "\n".join(dockerignore_lines(options)) + "\n")
    make_reproducible(staged.context)

    replace_folder(staged.context, export.context)

    tarball = None
    if options.model_mode == "tarball":
        tarball = write_model_tarball(export.model, export.model_tarball)
    elif export.model_tarball.exists():
        export.model_tarball.unlink()  # a baked export has no separate model
    files = sorted(
        str(p.relative_to(export.context)) for p in export.context.rglob("*") if p.is_file()
    )
    return ContextSummary(
        context=export.context,
        algorithm=spec,
        ensemble=ensemble,
        requirements=requirements,
        wheels=sorted(p.name for p in export.wheels.glob("*.whl")) + [own_wheel.name],
        model_bytes=model_bytes,
        model_tarball=tarball,
        files=files,
    )
