"""Finding a job's inputs (pure functions of the input folder's content): the interface
``/input/inputs.json`` asks for, each channel's folder confined to ``/input``, the one image
in each folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.container.interfaces import Interface
from toolkit.container.spec import AlgorithmSpec
from toolkit.errors import ToolkitError
from toolkit.io.confine import check_inside, confined_path, relative_parts
from toolkit.io.json_files import read_json

INPUTS_JSON = "inputs.json"
INPUT_SUFFIXES = (".mha", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd")


def read_inputs_json(path: Path) -> dict[str, str]:
    """``inputs.json`` -> {socket slug: relative path} (empty path: the socket's own)."""
    data = read_json(
        path, what="inputs.json (a list of inputs, each with an 'interface')", kind=list
    )
    folders: dict[str, str] = {}
    for k, entry in enumerate(data):
        interface = entry.get("interface") if isinstance(entry, dict) else None
        if not isinstance(interface, dict) or not isinstance(interface.get("slug"), str):
            raise ToolkitError(f"input {k} has no interface slug", path)
        relative = interface.get("relative_path")
        if relative is not None and relative != "":
            # checked here, before anything runs: a path that leaves /input is refused
            relative_parts(relative, what=f"input {k}'s relative_path", source=path)
        folders[interface["slug"]] = relative if isinstance(relative, str) and relative else ""
    return folders


@dataclass(frozen=True)
class Choice:
    """The interface a job is served by, and where each channel's folder is."""

    index: int  # 0-based, in the algorithm's list
    interface: Interface
    folders: list[Path] = field(default_factory=list)  # channel order


def choose_interface(
    interfaces: list[Interface], input_dir: Path, declared: dict[str, str] | None
) -> Choice:
    """The interface of a job: by the sockets ``inputs.json`` lists (``declared``: slug ->
    relative path), else (a local run without it) by which input folders exist."""
    if declared is not None:
        listed = set(declared)
        exact = [k for k, i in enumerate(interfaces) if set(i.input_slugs) == listed]
        covered = [k for k, i in enumerate(interfaces) if set(i.input_slugs) <= listed]
        if not exact and not covered:
            offered = "; ".join(f"[{', '.join(i.input_slugs)}]" for i in interfaces)
            raise ToolkitError(
                f"lists input socket(s) [{', '.join(sorted(listed)) or 'none'}]; this algorithm's "
                f"interface(s) take {offered}",
                input_dir / INPUTS_JSON,
            )
        index = exact[0] if exact else max(covered, key=lambda k: len(interfaces[k].inputs))
        interface = interfaces[index]
        folders = [
            confined_path(
                input_dir,
                declared.get(s.slug) or s.relative_path,
                what=f"input {s.slug}'s relative_path",
                source=input_dir / INPUTS_JSON,
            )
            for s in interface.channel_inputs
        ]
        return Choice(index, interface, folders)
    present = [
        k
        for k, i in enumerate(interfaces)
        if all((input_dir / s.relative_path).is_dir() for s in i.channel_inputs)
    ]
    if not present:
        first = interfaces[0].channel_inputs
        missing = next(s for s in first if not (input_dir / s.relative_path).is_dir())
        images = input_dir / "images"
        found = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        raise ToolkitError(
            f"no input folder {missing.relative_path}/ (found {found or 'no folders'} under images/; "
            f"this algorithm reads {[s.relative_path for s in first]}, one per channel)",
            input_dir,
        )
    index = max(present, key=lambda k: len(interfaces[k].channel_inputs))
    interface = interfaces[index]
    folders = [
        confined_path(input_dir, s.relative_path, what=f"input {s.slug}'s folder", source=input_dir)
        for s in interface.channel_inputs
    ]
    return Choice(index, interface, folders)


def choose(input_dir: Path, spec: AlgorithmSpec) -> Choice:
    """The job's interface (by ``inputs.json``'s sockets) and its channel folders."""
    inputs_json = input_dir / INPUTS_JSON
    declared = None
    if inputs_json.is_file():
        listed = read_inputs_json(inputs_json)
        declared = {slug: path or _socket_path(spec, slug) for slug, path in listed.items()}
    return choose_interface(spec.interfaces, input_dir, declared)


def _socket_path(spec: AlgorithmSpec, slug: str) -> str:
    for interface in spec.interfaces:
        for socket in interface.inputs:
            if socket.slug == slug:
                return socket.relative_path
    return f"images/{slug}"


def input_folders(input_dir: Path, spec: AlgorithmSpec) -> list[Path]:
    """The folder of each channel's input socket, in channel order."""
    return choose(input_dir, spec).folders


def is_input_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(INPUT_SUFFIXES)


def find_image(folder: Path) -> Path:
    """The one image in an interface folder (its file name is not fixed)."""
    if not folder.is_dir():
        raise ToolkitError("input folder not found", folder)
    images = sorted(p for p in folder.iterdir() if is_input_image(p))
    for image in images:  # a link in the folder may not lead out of it
        check_inside(folder, image, what="input image", shown=image.name, source=folder)
    if not images:
        raise ToolkitError(f"holds no image ({', '.join(INPUT_SUFFIXES)})", folder)
    if len(images) > 1:
        raise ToolkitError(
            f"holds {len(images)} images ({', '.join(p.name for p in images)}); the platform gives one per interface",
            folder,
        )
    return images[0]


def find_inputs(input_dir: Path, spec: AlgorithmSpec) -> list[Path]:
    return [find_image(folder) for folder in input_folders(input_dir, spec)]
