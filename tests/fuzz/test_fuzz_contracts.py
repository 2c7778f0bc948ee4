"""Generated files fed to their real readers and commands (issue 24, deliver 6).

Each test generates documents of one contract (``dataset.json``, an MSD task's file lists,
``inputs.json``, an interfaces file, ``splits.json``, model-zip manifests and members, tar
members), mostly well-shaped with hostile values and sometimes of any shape, and checks with
:func:`fuzz_helpers.run_confined` that the reader answers with its result or one
``ToolkitError`` line, writes nothing outside its folder, and loses nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from fuzz_helpers import (
    FUZZ,
    json_value,
    maybe,
    name_text,
    path_text,
    run_confined,
    sandbox,
)
from hypothesis import given
from hypothesis import strategies as st

from toolkit.container.interfaces import (
    bind_interfaces,
    nested_output,
    read_interfaces,
    shorthand_interface,
)
from toolkit.container.job_inputs import INPUTS_JSON, choose, find_image
from toolkit.container.spec import AlgorithmSpec
from toolkit.convert.archive import safe_extract
from toolkit.convert.sources import read_msd_task
from toolkit.core.labels import label_model
from toolkit.core.splits import fold_split, read_splits
from toolkit.errors import ToolkitError
from toolkit.io.confine import is_inside
from toolkit.io.dataset_json import read_dataset_info, training_cases
from toolkit.modelzip.archive import MANIFEST
from toolkit.modelzip.stage import ModelExportOptions, export_model, import_model
from toolkit.workspace import DatasetPaths, RawFolder

CHANNELS = ["T2", "ADC"]
LABELS = {"background": 0, "a": 1, "b": 2}
SPEC = AlgorithmSpec(
    "D", CHANNELS, LABELS, [shorthand_interface(["t2-image", "adc-image"], "seg", CHANNELS, LABELS)]
)
SLUGS = ["t2-image", "adc-image", "seg", "other"]
KINDS = ["Image", "Segmentation", "Anything", "Heat Map", "Float", "image"]


# --- dataset.json ----------------------------------------------------------------------

dataset_documents = st.fixed_dictionaries(
    {
        "channel_names": maybe(st.dictionaries(st.sampled_from(["0", "1", "2", "x", "-1"]), name_text, max_size=3)),
        "labels": maybe(st.dictionaries(name_text, maybe(st.integers(-1, 4) | st.lists(st.integers(-1, 4), max_size=3)), max_size=4)),
        "numTraining": maybe(st.integers(-2, 5)),
        "file_ending": maybe(st.sampled_from([".nii.gz", ".mha", ".png", "nii", "./../x", "/.gz", ".a/b"]) | path_text),
    },
    optional={"regions_class_order": maybe(st.lists(st.integers(-1, 4), max_size=3))},
)  # fmt: skip


@given(document=st.one_of(dataset_documents, dataset_documents, json_value))
@FUZZ
def test_dataset_json(tmp_path, tried, document):
    tried()
    with sandbox(tmp_path) as root:
        raw = RawFolder(root / "raw")
        raw.images_tr.mkdir(parents=True)
        (raw.images_tr / "case_0000.nii.gz").write_bytes(b"")
        raw.dataset_json.write_text(json.dumps(document))

        def read():
            info = read_dataset_info(raw.dataset_json)
            label_model(info.labels, info.regions_class_order)
            for case in training_cases(raw, info):
                for path in [*case.images, case.label]:
                    assert path is None or is_inside(raw.root, path), path
            return info

        run_confined(root, [], read)


msd_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries({"image": path_text, "label": path_text}),
        st.fixed_dictionaries({"image": st.just("./imagesTr/a.nii.gz"), "label": path_text}),
        json_value,
    ),
    max_size=4,
)


@given(training=maybe(msd_entries), test=maybe(st.lists(path_text | json_value, max_size=3)))
@FUZZ
def test_msd_task_file_lists(tmp_path, tried, training, test):
    tried()
    with sandbox(tmp_path) as root:
        task = root / "Task01_X"
        (task / "imagesTr").mkdir(parents=True)
        (task / "imagesTr" / "a.nii.gz").write_bytes(b"")
        document = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}}
        (task / "dataset.json").write_text(
            json.dumps(document | {"training": training, "test": test})
        )

        def read():
            source = read_msd_task(task)
            for case in source.training + source.test:
                for path in [*case.images, case.label]:
                    assert path is None or task in Path(path).parents, path

        run_confined(root, [], read)


# --- inputs.json and interfaces files --------------------------------------------------

input_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"interface": st.fixed_dictionaries({"slug": maybe(st.sampled_from(SLUGS)), "relative_path": maybe(path_text)})}
        ),
        json_value,
    ),
    max_size=4,
)  # fmt: skip


@given(document=st.one_of(input_entries, input_entries, json_value), link=st.booleans())
@FUZZ
def test_inputs_json(tmp_path, tried, document, link):
    tried()
    with sandbox(tmp_path) as root:
        input_dir = root / "input"
        for slug in ("t2-image", "adc-image"):
            (input_dir / "images" / slug).mkdir(parents=True)
            (input_dir / "images" / slug / "x.mha").write_bytes(b"")
        if link:  # a link planted in /input, leading out
            (input_dir / "images" / "ok").symlink_to(root / "outside")
        (input_dir / INPUTS_JSON).write_text(json.dumps(document))

        def read():
            choice = choose(input_dir, SPEC)
            for folder in choice.folders:
                assert is_inside(input_dir, folder), folder
                try:
                    image = find_image(folder)
                except ToolkitError:
                    continue
                assert is_inside(input_dir, image), image

        run_confined(root, [], read)


sockets = st.fixed_dictionaries(
    {"slug": maybe(st.sampled_from(SLUGS) | name_text), "kind": maybe(st.sampled_from(KINDS)), "relative_path": maybe(path_text)},
    optional={"overlay_segments": maybe(st.lists(st.fixed_dictionaries({"name": name_text, "voxel_value": maybe(st.integers(-1, 300))}), max_size=3))},
)  # fmt: skip
interfaces = st.lists(
    st.fixed_dictionaries({"inputs": maybe(st.lists(sockets, max_size=3)), "outputs": maybe(st.lists(sockets, max_size=3))}),
    max_size=3,
)  # fmt: skip


phases = st.fixed_dictionaries({"phases": maybe(st.lists(st.fixed_dictionaries({"algorithm_interfaces": maybe(interfaces)}), max_size=2))})  # fmt: skip
interface_documents = st.one_of(
    interfaces,
    st.fixed_dictionaries({"algorithm_interfaces": maybe(interfaces)}),
    st.fixed_dictionaries({"algorithm": maybe(st.fixed_dictionaries({"algorithm_interfaces": maybe(interfaces)}))}),
    st.fixed_dictionaries({"challenge": maybe(phases)}),
    json_value,
)  # fmt: skip


@given(document=interface_documents)
@FUZZ
def test_interfaces_file(tmp_path, tried, document):
    tried()
    with sandbox(tmp_path) as root:
        path = root / "interfaces.json"
        path.write_text(json.dumps(document))
        output = root / "output"

        def read():
            bound = bind_interfaces(read_interfaces(path), CHANNELS, [0, 1, 2])
            for interface in bound:
                assert nested_output(interface) is None
                for socket in interface.inputs + interface.outputs:
                    assert is_inside(output, output / socket.relative_path), socket
                    assert is_inside(output, output / socket.written_path), socket

        run_confined(root, [], read)


# --- splits.json -----------------------------------------------------------------------

CASES = ["case_0", "case_1", "case_2"]
folds = st.lists(
    st.one_of(
        st.fixed_dictionaries({"train": st.lists(maybe(st.sampled_from(CASES) | name_text), max_size=4), "val": st.lists(maybe(st.sampled_from(CASES) | name_text), max_size=3)}),
        json_value,
    ),
    max_size=4,
)  # fmt: skip


@given(document=st.one_of(folds, folds, json_value), fold=st.integers(-1, 4) | st.just("all"))
@FUZZ
def test_splits_json(tmp_path, tried, document, fold):
    tried()
    with sandbox(tmp_path) as root:
        path = root / "splits.json"
        path.write_text(json.dumps(document))
        preprocessed = root / "preprocessed"

        def read():
            splits = read_splits(path)
            split = fold_split(splits, fold, CASES, path)
            for case in split.train + split.val:
                assert is_inside(preprocessed, preprocessed / f"{case}.npy"), case

        run_confined(root, [], read)


# --- model archives --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory):
    from container_helpers import make_dataset, write_selection

    paths = make_dataset(tmp_path_factory.mktemp("src"), "Dataset902_Fuzz", folds=(0,))
    write_selection(paths, folds=(0,))
    target = tmp_path_factory.mktemp("zip") / "model.zip"
    export_model(paths, target, ModelExportOptions())
    with zipfile.ZipFile(target) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """The members as a zip; a name is cut at a NUL as zipfile stores it, and written once."""
    written = set()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            name = name.split("\x00")[0]
            if name and name not in written:
                written.add(name)
                zf.writestr(name, data)


def _installed_completely(workspace: Path) -> None:
    datasets = [p for p in workspace.iterdir()] if workspace.exists() else []
    assert not [p for p in datasets if p.name.startswith(".")], datasets  # no staging left
    for dataset in datasets:
        paths = DatasetPaths(dataset)
        assert paths.plans_json.is_file() and paths.selection_json.is_file()


manifests = st.fixed_dictionaries(
    {
        "format": maybe(st.just("toolkit-model")),
        "format_version": maybe(st.just(1)),
        "dataset": maybe(st.sampled_from(["D", "Dataset001_X"]) | name_text),
        "configurations": maybe(st.lists(maybe(st.sampled_from(["3d_fullres"]) | name_text), max_size=2)),
        "model_configurations": maybe(st.lists(maybe(st.sampled_from(["3d_fullres"]) | name_text), max_size=2)),
        "folds": maybe(st.lists(st.integers(-1, 2), max_size=2)),
        "toolkit_version": st.just("0"),
        "torch_version": st.just("0"),
        "example_case": maybe(st.none() | name_text),
    }
)  # fmt: skip
member_names = st.lists(st.one_of(path_text, st.sampled_from(["plans.json", "dataset.json", "postprocessing.json", "models/3d_fullres/plans.json", "models/3d_fullres/fold_0/checkpoint_final.pt", "models/../../outside/x"])), max_size=5)  # fmt: skip


@given(
    manifest=manifests, names=member_names, contents=st.lists(json_value, min_size=5, max_size=5)
)
@FUZZ
def test_model_zip_manifests(tmp_path, tried, manifest, names, contents):
    """Generated manifests over members with generated names (and contents)."""
    tried()
    with sandbox(tmp_path) as root:
        members = {n: json.dumps(c).encode() for n, c in zip(names, contents, strict=False) if n}
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
        write_zip(root / "model.zip", {MANIFEST: json.dumps(manifest).encode()} | members)
        run_confined(root, ["ws"], lambda: import_model(root / "model.zip", root / "ws"))
        _installed_completely(root / "ws")


JSON_MEMBERS = ["plans.json", "dataset.json", "postprocessing.json", "selection.json", "models/3d_fullres/plans.json", "models/3d_fullres/dataset.json"]  # fmt: skip


@st.composite
def member_changes(draw):
    """A real archive's members with one JSON member replaced, maybe one member renamed,
    maybe one manifest field replaced; checksums recomputed, so the contracts are reached."""
    target = draw(st.sampled_from(JSON_MEMBERS))
    replacement = draw(json_value)
    rename = draw(st.none() | st.tuples(st.sampled_from(JSON_MEMBERS), path_text))
    field = draw(st.none() | st.tuples(st.sampled_from(["configurations", "model_configurations", "folds", "example_case", "dataset"]), json_value))  # fmt: skip
    return target, replacement, rename, field


@given(change=member_changes(), force=st.booleans())
@FUZZ
def test_model_zip_members(tmp_path, tried, model_zip, change, force):
    tried()
    target, replacement, rename, field = change
    members = dict(model_zip)
    manifest = json.loads(members.pop(MANIFEST))
    members[target] = json.dumps(replacement).encode()
    if rename and rename[1] and rename[0] in members:
        members[rename[1]] = members.pop(rename[0])
    manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    if field:
        manifest[field[0]] = field[1]
    with sandbox(tmp_path) as root:
        write_zip(root / "model.zip", {MANIFEST: json.dumps(manifest).encode()} | members)
        if force:  # an installed dataset of the same name, to be replaced or kept whole
            write_zip(root / "good.zip", model_zip)
            import_model(root / "good.zip", root / "ws", name="Same")
        run_confined(
            root,
            ["ws"],
            lambda: import_model(root / "model.zip", root / "ws", name="Same", force=force),
        )
        _installed_completely(root / "ws")


@given(
    prefix=st.lists(path_text | st.just("Dataset004_H"), max_size=2).map("/".join),
    config=name_text,
    fold=st.sampled_from(["0", "all", "1"]),
)
@FUZZ
def test_nnunet_archive_names(tmp_path, tried, prefix, config, fold):
    tried()
    folder = f"{prefix}/nnUNetTrainer__nnUNetPlans__{config}".lstrip("/")
    with sandbox(tmp_path) as root:
        members = {
            f"{folder}/fold_{fold}/checkpoint_final.pth": b"not a checkpoint",
            f"{folder}/plans.json": b"{}",
            f"{folder}/dataset.json": b"{}",
        }
        write_zip(root / "model.zip", members)
        run_confined(root, ["ws"], lambda: import_model(root / "model.zip", root / "ws"))


# --- tar members -----------------------------------------------------------------------

tar_members = st.lists(
    st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), path_text, path_text),
    min_size=1,
    max_size=4,
)


@given(members=tar_members)
@FUZZ
def test_tar_members(tmp_path, tried, members):
    tried()
    with sandbox(tmp_path) as root:
        archive = root / "task.tar"
        with tarfile.open(archive, "w") as tar:
            for kind, name, link in members:
                if not name:
                    continue
                info = tarfile.TarInfo(name)
                data = b"x"
                if kind == "file":
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    continue
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]  # fmt: skip
                info.linkname = link
                tar.addfile(info)
        run_confined(root, ["target"], lambda: safe_extract(archive, root / "target", quiet=True))
