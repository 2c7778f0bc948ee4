"""A phase's algorithm interfaces as Grand Challenge defines them, bound to the model.

On the platform an *interface* is a set of input sockets and a set of output sockets; a
socket has a ``slug``, a ``kind`` (``Image``, ``Segmentation``, ``Anything``, ...) and a
``relative_path`` under ``/input`` or ``/output`` (an image socket's path is a folder that
starts with ``images/``, and need not equal the slug). A ``Segmentation`` socket declares its
``overlay_segments`` (``name``, ``voxel_value``, ``visible``): the platform refuses an output
with any other value, 0 (background) always being allowed. An algorithm may offer several
interfaces; a job's ``/input/inputs.json`` lists the sockets it got, which says which one.

The file ``--interfaces`` reads is JSON in the shapes the platform and grand-challenge-forge
use: a list of ``{"inputs": [...], "outputs": [...]}``, or an object holding it as
``algorithm_interfaces`` (a phase, ``{"algorithm": ...}``, or a challenge pack context with
one phase).

Binding (:func:`bind_interfaces`) checks an interface against the model: one image input
per channel (mapped by name, or by an explicit ``--channel-map SOCKET=CHANNEL``; ambiguous
names are an error, never a guess), image outputs that can hold every label value, and only
output kinds the toolkit can write (``Segmentation``/``Image``: the label map; ``Anything``:
the label volumes as JSON). Non-image inputs are accepted and not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.io.confine import relative_parts
from toolkit.io.json_files import read_json

IMAGE_KINDS = ("Image", "Segmentation", "Heat Map")  # image sockets whose files we read
LABEL_OUTPUT_KINDS = ("Segmentation", "Image")  # image outputs that get the label map
JSON_OUTPUT_KINDS = ("Anything",)  # JSON outputs that get the label volumes
SEGMENTATION_KIND = "Segmentation"
IMAGE_PREFIX = "images/"
OUTPUT_IMAGE = "output.mha"  # the file an image output socket's folder gets
BACKGROUND = 0  # always allowed in a segmentation, declared or not
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def check_slug(slug: str, option: str) -> str:
    if not _SLUG_RE.match(slug):
        raise ToolkitError(
            f"{option} {slug!r} is not an interface slug (lower-case letters, digits and single hyphens, e.g. 't2-weighted-mri')"
        )
    return slug


def slugify(text: str) -> str:
    """``"T2 FLAIR"`` -> ``"t2-flair"``."""
    return "-".join(w for w in re.split(r"[^a-z0-9]+", text.lower()) if w) or "image"


@dataclass(frozen=True)
class Segment:
    name: str
    voxel_value: int
    visible: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "voxel_value": self.voxel_value, "visible": self.visible}


@dataclass(frozen=True)
class Socket:
    slug: str
    kind: str
    relative_path: str
    title: str = ""
    overlay_segments: tuple[Segment, ...] = ()
    channel: int | None = None  # bound image inputs: the model channel this socket feeds

    @property
    def is_image(self) -> bool:
        return self.kind in IMAGE_KINDS

    @property
    def written_path(self) -> str:
        """What the job writes for this output socket, under ``/output``: an image socket's
        ``output.mha`` in its folder, a JSON socket's file itself."""
        if self.kind in LABEL_OUTPUT_KINDS:
            return f"{self.relative_path}/{OUTPUT_IMAGE}"
        return self.relative_path

    @property
    def super_kind(self) -> str:
        return "Image" if self.is_image else "File"

    @property
    def allowed_values(self) -> set[int] | None:
        """Values a written segmentation may hold (``None``: the socket declares none)."""
        if not self.overlay_segments:
            return None
        return {s.voxel_value for s in self.overlay_segments} | {BACKGROUND}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "slug": self.slug,
            "kind": self.kind,
            "super_kind": self.super_kind,
            "relative_path": self.relative_path,
        }
        if self.title:
            data["title"] = self.title
        if self.overlay_segments:
            data["overlay_segments"] = [s.to_dict() for s in self.overlay_segments]
        if self.channel is not None:
            data["channel"] = self.channel
        return data


@dataclass(frozen=True)
class Interface:
    inputs: tuple[Socket, ...]
    outputs: tuple[Socket, ...]

    @property
    def input_slugs(self) -> list[str]:
        return [s.slug for s in self.inputs]

    @property
    def channel_inputs(self) -> list[Socket]:
        """The bound image inputs in channel order."""
        bound = [s for s in self.inputs if s.channel is not None]
        return sorted(bound, key=lambda s: s.channel if s.channel is not None else -1)

    @property
    def label_outputs(self) -> list[Socket]:
        return [s for s in self.outputs if s.kind in LABEL_OUTPUT_KINDS]

    @property
    def json_outputs(self) -> list[Socket]:
        return [s for s in self.outputs if s.kind in JSON_OUTPUT_KINDS]

    def describe(self) -> str:
        return f"{', '.join(self.input_slugs)} -> {', '.join(s.slug for s in self.outputs)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }


# --- reading the platform's JSON -------------------------------------------------------


def _socket(data: Any, where: str, source: Path | None) -> Socket:
    if not isinstance(data, dict):
        raise ToolkitError(f"{where} must be an object with slug, kind and relative_path", source)
    for key in ("slug", "kind", "relative_path"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ToolkitError(f"{where} has no {key!r}", source)
    slug = check_slug(data["slug"], f"{where}'s slug")
    relative = data["relative_path"]
    parts = relative_parts(relative, what=f"{where} ({slug}): relative_path", source=source)
    if "/".join(parts) != relative:
        raise ToolkitError(
            f"{where} ({slug}): relative_path {relative!r} must be a relative path without '..', "
            "'.' or slashes at its ends",
            source,
        )
    kind = data["kind"]
    if kind in IMAGE_KINDS and not relative.startswith(IMAGE_PREFIX):
        raise ToolkitError(
            f"{where} ({slug}): an image socket's relative_path starts with {IMAGE_PREFIX!r}, not {relative!r}",
            source,
        )
    segments = []
    declared = data.get("overlay_segments") or []
    if not isinstance(declared, list):
        raise ToolkitError(f"{where} ({slug}): overlay_segments must be a list", source)
    for k, seg in enumerate(declared):
        value = seg.get("voxel_value") if isinstance(seg, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise ToolkitError(
                f"{where} ({slug}): overlay segment {k} needs an integer voxel_value 0..255", source
            )
        segments.append(Segment(str(seg.get("name", value)), value, bool(seg.get("visible", True))))
    return Socket(
        slug=slug,
        kind=kind,
        relative_path=relative,
        title=str(data.get("title") or ""),
        overlay_segments=tuple(sorted(segments, key=lambda s: s.voxel_value)),
        channel=data["channel"] if isinstance(data.get("channel"), int) else None,
    )


def _interface_list(data: Any, source: Path | None) -> list:
    """The list of interfaces inside any of the accepted shapes."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "algorithm_interfaces" in data:
            return _interface_list(data["algorithm_interfaces"], source)
        if isinstance(data.get("algorithm"), dict):
            return _interface_list(data["algorithm"], source)
        challenge = data.get("challenge")
        phases = challenge.get("phases") if isinstance(challenge, dict) else None
        if isinstance(phases, list):
            if len(phases) != 1:
                raise ToolkitError(
                    f"holds {len(phases)} phases ({', '.join(str(p.get('slug')) for p in phases if isinstance(p, dict))}); "
                    "keep the one phase to export for",
                    source,
                )
            return _interface_list(phases[0], source)
        if "inputs" in data and "outputs" in data:
            return [data]
    raise ToolkitError(
        "holds no algorithm interfaces (a list of {'inputs': [...], 'outputs': [...]}, or an object with 'algorithm_interfaces')",
        source,
    )


def parse_interfaces(data: Any, source: Path | None = None) -> list[Interface]:
    interfaces = []
    for k, entry in enumerate(_interface_list(data, source)):
        where = f"interface {k + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("inputs"), list):
            raise ToolkitError(f"{where} needs lists 'inputs' and 'outputs'", source)
        if not isinstance(entry.get("outputs"), list) or not entry["outputs"]:
            raise ToolkitError(f"{where} has no output sockets", source)
        inputs = [
            _socket(s, f"{where} input {j + 1}", source) for j, s in enumerate(entry["inputs"])
        ]
        outputs = [
            _socket(s, f"{where} output {j + 1}", source) for j, s in enumerate(entry["outputs"])
        ]
        interfaces.append(Interface(tuple(inputs), tuple(outputs)))
    if not interfaces:
        raise ToolkitError("holds an empty list of interfaces", source)
    return interfaces


def read_interfaces(path: str | Path) -> list[Interface]:
    path = Path(path).expanduser()
    return parse_interfaces(read_json(path, what="interfaces file", kind=object), path)


# --- binding to the model --------------------------------------------------------------


def parse_channel_map(entries: list[str] | None, channel_names: list[str]) -> dict[str, int]:
    """``["prostate-t2=T2", "adc-map=1"]`` -> ``{"prostate-t2": 0, "adc-map": 1}``."""
    mapping: dict[str, int] = {}
    lowered = [n.lower() for n in channel_names]
    for entry in entries or []:
        slug, sep, channel = entry.partition("=")
        if not sep or not slug or not channel:
            raise ToolkitError(f"--channel-map {entry!r} must be SOCKET=CHANNEL, e.g. t2-mri=T2")
        check_slug(slug, "--channel-map socket")
        if channel.isdigit() and int(channel) < len(channel_names):
            mapping[slug] = int(channel)
        elif channel.lower() in lowered:
            mapping[slug] = lowered.index(channel.lower())
        else:
            raise ToolkitError(
                f"--channel-map {entry!r}: {channel!r} is not a channel of the model ({', '.join(channel_names)} or 0..{len(channel_names) - 1})"
            )
    return mapping


def _tokens(text: str) -> set[str]:
    return set(slugify(text).split("-"))


def map_channels(
    sockets: list[Socket], channel_names: list[str], explicit: dict[str, int], where: str
) -> dict[str, int]:
    """Socket slug -> channel: explicit entries first, then names, never a guess."""
    if len(sockets) != len(channel_names):
        raise ToolkitError(
            f"{where} has {len(sockets)} image input socket(s) ({', '.join(s.slug for s in sockets) or 'none'}) "
            f"for the model's {len(channel_names)} channel(s) ({', '.join(channel_names)})"
        )
    mapping = {s.slug: explicit[s.slug] for s in sockets if s.slug in explicit}
    if len(set(mapping.values())) != len(mapping):
        raise ToolkitError(
            f"--channel-map gives two sockets of {where} the same channel: {mapping}"
        )
    open_sockets = [s for s in sockets if s.slug not in mapping]
    open_channels = [c for c in range(len(channel_names)) if c not in mapping.values()]
    if len(open_sockets) == 1:
        mapping[open_sockets[0].slug] = open_channels[0]
        return mapping
    candidates = {
        c: [
            s.slug
            for s in open_sockets
            if _tokens(channel_names[c]) <= _tokens(f"{s.slug} {s.title}")
        ]
        for c in open_channels
    }
    chosen = [slugs[0] for slugs in candidates.values() if len(slugs) == 1]
    if any(len(slugs) != 1 for slugs in candidates.values()) or len(set(chosen)) != len(chosen):
        raise ToolkitError(
            f"{where}: cannot tell from the names which input socket ({', '.join(s.slug for s in open_sockets)}) "
            f"is which channel ({', '.join(channel_names[c] for c in open_channels)}); "
            "give --channel-map SOCKET=CHANNEL for each"
        )
    mapping.update({slugs[0]: c for c, slugs in candidates.items()})
    return mapping


def nested_output(interface: Interface) -> tuple[Socket, Socket] | None:
    """Two output sockets of which the first writes where the second writes, or inside it
    (an ``Anything`` at ``images/seg/output.mha`` beside a Segmentation at ``images/seg``)."""
    for a in interface.outputs:
        for b in interface.outputs:
            if a is not b and (
                a.written_path == b.written_path or a.written_path.startswith(b.written_path + "/")
            ):
                return a, b
    return None


def check_outputs(interface: Interface, label_values: list[int], where: str) -> None:
    if not interface.label_outputs:
        raise ToolkitError(
            f"{where} has no Segmentation output socket (outputs: {', '.join(f'{s.slug} ({s.kind})' for s in interface.outputs)})"
        )
    paths = [s.relative_path for s in interface.outputs]
    if len(set(paths)) != len(paths):
        raise ToolkitError(f"{where}: two output sockets share a relative_path ({paths})")
    nested = nested_output(interface)
    if nested is not None:
        raise ToolkitError(
            f"{where}: output {nested[0].slug} writes {nested[0].written_path} inside the folder of "
            f"output {nested[1].slug} ({nested[1].written_path}): one would overwrite the other"
        )
    for socket in interface.outputs:
        if socket.kind not in LABEL_OUTPUT_KINDS + JSON_OUTPUT_KINDS:
            raise ToolkitError(
                f"{where}: output socket {socket.slug} is of kind {socket.kind!r}; the toolkit writes "
                f"{'/'.join(LABEL_OUTPUT_KINDS)} images (the label map) and {'/'.join(JSON_OUTPUT_KINDS)} JSON (label volumes)"
            )
        if socket.kind == SEGMENTATION_KIND:
            allowed = socket.allowed_values
            if allowed is None:
                raise ToolkitError(
                    f"{where}: the Segmentation socket {socket.slug} declares no overlay_segments (the platform requires them)"
                )
            missing = sorted(set(label_values) - allowed)
            if missing:
                raise ToolkitError(
                    f"{where}: the model writes label value(s) {missing} that socket {socket.slug} does not allow "
                    f"(its overlay segments: {sorted(allowed)})"
                )


def bind_interfaces(
    interfaces: list[Interface],
    channel_names: list[str],
    label_values: list[int],
    explicit: dict[str, int] | None = None,
) -> list[Interface]:
    """Each interface with its image inputs mapped to channels, checked against the model."""
    explicit = explicit or {}
    known = {s.slug for i in interfaces for s in i.inputs}
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise ToolkitError(
            f"--channel-map names socket(s) {unknown} that no interface has as input"
        )
    bound = []
    for k, interface in enumerate(interfaces):
        where = f"interface {k + 1} ({interface.describe()})"
        images = [s for s in interface.inputs if s.is_image]
        mapping = map_channels(images, channel_names, explicit, where)
        check_outputs(interface, label_values, where)
        inputs = tuple(
            replace(s, channel=mapping[s.slug]) if s.slug in mapping else replace(s, channel=None)
            for s in interface.inputs
        )
        bound.append(Interface(inputs, interface.outputs))
    signatures = [frozenset(i.input_slugs) for i in bound]
    if len(set(signatures)) != len(signatures):
        raise ToolkitError(
            "two interfaces take the same input sockets: a job's inputs.json could not tell them apart"
        )
    return bound


def shorthand_interface(
    input_slugs: list[str], output_slug: str, channel_names: list[str], labels: dict[str, int]
) -> Interface:
    """``--input-slug``/``--output-slug``: one interface whose folders are the slugs."""
    if len(input_slugs) != len(channel_names):
        raise ToolkitError(
            f"{len(input_slugs)} input slug(s) {input_slugs} for {len(channel_names)} channel(s) "
            f"{channel_names}: give one --input-slug per channel, in channel order"
        )
    for slug in input_slugs:
        check_slug(slug, "--input-slug")
    check_slug(output_slug, "--output-slug")
    if len(set(input_slugs)) != len(input_slugs):
        raise ToolkitError(f"input slugs must differ from each other, not {input_slugs}")
    if output_slug in input_slugs:
        raise ToolkitError(f"the output slug {output_slug!r} is also an input slug")
    names = {}
    for name, value in labels.items():
        names.setdefault(value, name)
    inputs = tuple(
        Socket(slug, "Image", f"{IMAGE_PREFIX}{slug}", title=channel_names[c], channel=c)
        for c, slug in enumerate(input_slugs)
    )
    segments = tuple(Segment(names[v], v) for v in sorted(names) if v != BACKGROUND)
    output = Socket(
        output_slug, SEGMENTATION_KIND, f"{IMAGE_PREFIX}{output_slug}", overlay_segments=segments
    )
    return Interface(inputs, (output,))


def default_input_slugs(channel_names: list[str]) -> list[str]:
    """One slug per channel from its name (``CT`` -> ``ct-image``), made unique."""
    slugs: list[str] = []
    for name in channel_names:
        slug = f"{slugify(name)}-image"
        candidate, n = slug, 2
        while candidate in slugs:
            candidate, n = f"{slug}-{n}", n + 1
        slugs.append(candidate)
    return slugs
