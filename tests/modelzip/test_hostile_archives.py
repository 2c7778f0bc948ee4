"""Hostile and malformed model archives (issue 24, defects 2-5 and 8b): one-line errors naming
the member, limits on what an archive unpacks into, members streamed, the manifest checked
against what an install needs, names confined, ``--force`` by renames only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from container_helpers import CASES, CONFIG, make_dataset, write_selection

from toolkit.cli import main
from toolkit.errors import ToolkitError
from toolkit.io import atomic
from toolkit.modelzip import archive as archive_module
from toolkit.modelzip import install
from toolkit.modelzip.archive import MANIFEST, ArchiveReader, Member, write_archive
from toolkit.modelzip.stage import ModelExportOptions, export_model, import_model
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths, channel_file, label_file

NAME = "Dataset901_Hostile"
ODD_CASE = "Synth mr#2"  # the name, sorted first: the example case


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    paths = make_dataset(tmp_path_factory.mktemp("source"), NAME, folds=(0, 1))
    write_selection(paths, folds=(0, 1))
    # the example case (the first training case) gets a name convert accepts (defect 5)
    for folder, old, new in [
        (paths.images_tr, channel_file(CASES[0], 0), channel_file(ODD_CASE, 0)),
        (paths.labels_tr, label_file(CASES[0]), label_file(ODD_CASE)),
    ]:
        (folder / old).rename(folder / new)
    return paths


@pytest.fixture(scope="module")
def archive(source, tmp_path_factory):
    target = tmp_path_factory.mktemp("zip") / "model.zip"
    export_model(source, target, ModelExportOptions())
    return target


def rebuilt(archive: Path, target: Path, members=None, manifest=None) -> Path:
    """A copy of ``archive``: ``members(dict name -> bytes)`` changes the content (the
    manifest's checksums follow it), ``manifest(dict)`` changes the manifest after."""
    with zipfile.ZipFile(archive) as zf:
        content = {n: zf.read(n) for n in zf.namelist()}
    document = json.loads(content.pop(MANIFEST))
    content = members(content) if members else content
    document["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in content.items()}
    document = manifest(document) if manifest else document
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(document))
        for name, data in content.items():
            zf.writestr(name, data)
    return target


def untouched(workspace: Path) -> bool:
    """Nothing installed, nothing left behind (no staging folder, no dataset)."""
    return not workspace.exists() or not any(workspace.iterdir())


def _drop(name):
    def change(document):
        document["members"].pop(name)
        return document

    return change


def _replace(name, data):
    return lambda members: members | {name: data}


PLANS_OF_CONFIG = f"models/{CONFIG}/plans.json"


@pytest.mark.parametrize(
    ("members", "manifest", "message"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "postprocessing.json"}, None,
         "lacks what an install needs: postprocessing.json"),
        (_replace("postprocessing.json", b"{not json"), None,
         "member postprocessing.json: is not valid JSON"),
        (_replace("postprocessing.json", b"[{}]"), None,
         "member postprocessing.json: postprocessing file must hold a JSON object"),
        (_replace("postprocessing.json", b"[1]"), None, "member postprocessing.json"),
        (_replace("postprocessing.json", b'{"largest_component_classes": [0]}'), None,
         "member postprocessing.json: largest_component_classes"),
        (_replace("selection.json", b"[1]"), None, "member selection.json: selection must hold"),
        (_replace("selection.json", b"\xff\xfe"), None, "member selection.json: cannot be read"),
        (_replace("selection.json", b'{"configurations": ["x"]}'), None,
         "member selection.json: is not a valid selection"),
        (_replace("plans.json", b"{}"), None, "member plans.json: plans format version"),
        (_replace("dataset.json", b"[]"), None, "member dataset.json: dataset.json must hold"),
        (_replace(PLANS_OF_CONFIG, b'{"format_version": 4}'), None,
         f"member {PLANS_OF_CONFIG}: "),
        (None, lambda d: d | {"folds": "all"}, "manifest.json is incomplete"),
    ],
    ids=[
        "no-postprocessing", "postprocessing-not-json", "postprocessing-list-of-object",
        "postprocessing-list-of-int", "postprocessing-background-class", "selection-list",
        "selection-not-utf8", "selection-incomplete", "plans-empty", "dataset-json-list",
        "model-plans-wrong", "manifest-folds-text",
    ],
)  # fmt: skip
def test_a_malformed_member_is_one_line_naming_it(archive, tmp_path, members, manifest, message):
    broken = rebuilt(archive, tmp_path / "broken.zip", members, manifest)
    workspace = tmp_path / "ws"
    with pytest.raises(ToolkitError, match=message) as err:
        import_model(broken, workspace)
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
    assert untouched(workspace)


def test_a_malformed_member_exits_2_at_the_cli(archive, tmp_path, capsys):
    broken = rebuilt(archive, tmp_path / "b.zip", _replace("postprocessing.json", b"[{}]"))
    with pytest.raises(SystemExit) as exit_:
        main(["import-model", str(broken), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "member postprocessing.json" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            lambda d: d | {"configurations": ["../../../../../etc"]},
            "configuration '../../../../../etc' holds a path separator",
        ),
        (lambda d: d | {"model_configurations": [".."], "configurations": [".."]}, "'..'"),
        (lambda d: d | {"example_case": "../x"}, "example case '../x'"),
        (lambda d: d | {"configurations": ["2d"]}, r"configuration\(s\) \['2d'\] without"),
    ],
    ids=["config-escapes", "config-dot-dot", "example-escapes", "config-without-model"],
)
def test_names_from_the_manifest_are_confined(archive, tmp_path, manifest, message):
    broken = rebuilt(archive, tmp_path / "broken.zip", manifest=manifest)
    with pytest.raises(ToolkitError, match=message):
        import_model(broken, tmp_path / "ws")
    assert untouched(tmp_path / "ws")


def test_an_archive_without_plans_or_models_is_refused(archive, tmp_path):
    def strip(members):
        return {
            n: d for n, d in members.items() if n != "plans.json" and not n.startswith("models/")
        }

    broken = rebuilt(archive, tmp_path / "broken.zip", strip)
    with pytest.raises(ToolkitError, match="lacks what an install needs: plans.json"):
        import_model(broken, tmp_path / "ws")
    assert untouched(tmp_path / "ws")


def test_a_zip_bomb_is_refused_before_anything_is_read(archive, tmp_path):
    weights = f"models/{CONFIG}/fold_0/{CHECKPOINT_FINAL}"
    big = b"\0" * (64 << 20)  # 64 MB of zeros deflate to about 64 KB
    bomb = rebuilt(archive, tmp_path / "bomb.zip", _replace(weights, big))
    del big
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ToolkitError, match=f"member {weights} would unpack .* zip bomb"):
            import_model(bomb, tmp_path / "ws")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert untouched(tmp_path / "ws")


def test_the_total_size_is_capped(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(ToolkitError, match="would unpack into .* more than"):
        import_model(archive, tmp_path / "ws")
    assert untouched(tmp_path / "ws")


def _example_member(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return next(n for n in zf.namelist() if n.startswith("example/imagesTr/"))


@pytest.mark.parametrize("megabytes", [2, 32])
def test_import_memory_does_not_grow_with_a_member(archive, tmp_path, megabytes):
    """A large incompressible member goes to disk a chunk at a time: the import's traced
    peak stays the same whatever the member's size."""
    member = _example_member(archive)
    data = os.urandom(megabytes << 20)
    big = rebuilt(archive, tmp_path / "big.zip", _replace(member, data))
    del data
    tracemalloc.start()
    try:
        imported = import_model(big, tmp_path / "ws")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (imported.paths.images_tr / Path(member).name).stat().st_size == megabytes << 20
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MB traced for a {megabytes} MB member"


def test_writing_streams_members_from_their_files(tmp_path):
    """The writer hashes and copies a file member a chunk at a time."""
    payload = tmp_path / "example.nii.gz"
    with open(payload, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    manifest = archive_module.Manifest(
        dataset="D", configurations=["c"], model_configurations=["c"], folds=[0],
        toolkit_version="x", torch_version="y",
    )  # fmt: skip
    members = [Member(n, b"{}") for n in archive_module.required_members(manifest)]
    members.append(Member("example/imagesTr/big_0000.nii.gz", payload))
    tracemalloc.start()
    try:
        write_archive(tmp_path / "m.zip", members, manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    with ArchiveReader(tmp_path / "m.zip") as reader:
        reader.check_listing(reader.manifest())
        reader.copy("example/imagesTr/big_0000.nii.gz", tmp_path / "back", None)
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()


def test_a_member_whose_checksum_fails_leaves_no_file(archive, tmp_path):
    member = _example_member(archive)
    broken = rebuilt(
        archive,
        tmp_path / "b.zip",
        manifest=lambda d: d | {"members": d["members"] | {member: "0" * 64}},
    )
    with ArchiveReader(broken) as reader, pytest.raises(ToolkitError, match="sha256"):
        reader.copy(member, tmp_path / "out.nii.gz", "0" * 64)
    assert not any(tmp_path.glob("*out.nii.gz*"))


def test_an_odd_case_name_exports_and_imports(archive, tmp_path):
    """Defect 5: the example case's member name passes the one rule of both sides."""
    with zipfile.ZipFile(archive) as zf:
        assert f"example/imagesTr/{channel_file(ODD_CASE, 0)}" in zf.namelist()
    imported = import_model(archive, tmp_path / "ws")
    assert (imported.paths.images_tr / channel_file(ODD_CASE, 0)).is_file()
    assert (imported.paths.labels_tr / label_file(ODD_CASE)).is_file()


@pytest.mark.parametrize("name", ["a\\b", "x\ny", ".hidden"])
def test_the_exporter_refuses_before_writing_what_the_importer_would(tmp_path, name):
    manifest = archive_module.Manifest(
        dataset="D", configurations=["c"], model_configurations=["c"], folds=[0],
        toolkit_version="x", torch_version="y",
    )  # fmt: skip
    members = [Member(n, b"{}") for n in archive_module.required_members(manifest)]
    members.append(Member(f"example/imagesTr/{name}_0000.nii.gz", b"x"))
    with pytest.raises(ToolkitError, match="unsafe member name"):
        write_archive(tmp_path / "m.zip", members, manifest)
    assert not any(tmp_path.iterdir())


def test_an_nnunet_configuration_folder_named_dot_dot_is_refused(tmp_path):
    target = tmp_path / "nnunet.zip"
    with zipfile.ZipFile(target, "w") as zf:
        prefix = "Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__.."
        zf.writestr(f"{prefix}/fold_0/checkpoint_final.pth", b"x")
        zf.writestr(f"{prefix}/plans.json", b"{}")
        zf.writestr(f"{prefix}/dataset.json", b"{}")
    with pytest.raises(ToolkitError, match="configuration '..' is not a name inside"):
        import_model(target, tmp_path / "ws")
    assert untouched(tmp_path / "ws")


# --- --force by renames only, staging folders of their own ------------------------------


def _complete(root: Path, kind: str) -> bool:
    paths = DatasetPaths(root)
    record = json.loads(paths.import_record.read_text()) if paths.import_record.is_file() else {}
    return (
        paths.selection_json.is_file()
        and paths.plans_json.is_file()
        and (paths.fold_dir(CONFIG, 0) / CHECKPOINT_FINAL).is_file()
        and record.get("kind") == kind
    )


class Killed(BaseException):
    """A kill at one file-system step (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("exchange", [True, False], ids=["swap", "two-renames"])
def test_force_leaves_one_complete_dataset_whenever_it_is_killed(
    archive, tmp_path, monkeypatch, exchange
):
    workspace = tmp_path / "ws"
    import_model(archive, workspace, name="A")
    root = workspace / "A"
    record = json.loads(DatasetPaths(root).import_record.read_text())
    record["kind"] = "old"
    DatasetPaths(root).import_record.write_text(json.dumps(record))
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    steps = {"n": 0, "kill_at": 0}
    real = {"rmtree": shutil.rmtree, "replace": os.replace, "rename": Path.rename}

    def step(name):
        def run(*args, **kwargs):
            steps["n"] += 1
            if steps["n"] == steps["kill_at"]:
                raise Killed
            return real[name](*args, **kwargs)

        return run

    monkeypatch.setattr(shutil, "rmtree", step("rmtree"))
    monkeypatch.setattr(os, "replace", step("replace"))
    monkeypatch.setattr(Path, "rename", step("rename"))
    kills = 0
    for kill_at in range(1, 400):
        steps.update(n=0, kill_at=kill_at)
        try:
            import_model(archive, workspace, name="A", force=True)
        except Killed:
            kills += 1
            atomic.restore_replaced(root)  # what the next import does first
            assert _complete(root, "old") or _complete(root, "toolkit"), kill_at
            continue
        break
    assert kills > 5 and _complete(root, "toolkit")
    monkeypatch.undo()
    for left in workspace.glob(".*"):
        shutil.rmtree(left)  # staging folders of killed imports: what a sweep removes


def test_imports_at_once_keep_their_own_staging_folders(archive, tmp_path, monkeypatch):
    """A second import of the same name, run while the first fills its staging folder,
    deletes nothing of the first's: both finish."""
    workspace = tmp_path / "ws"
    real = install.staged_install
    nested = {"done": False}

    def staged(workspace_, name, force, fill, **options):
        def fill_then_import(paths, dataset):
            fill(paths, dataset)
            if not nested["done"]:
                nested["done"] = True
                import_model(archive, workspace, name="A", force=True)

        return real(workspace_, name, force, fill_then_import, **options)

    monkeypatch.setattr("toolkit.modelzip.toolkit_archive.staged_install", staged)
    # a dataset writer lock (where there is one) would refuse the second import: its staging
    # folder must not clash even so (a lock on a file system that ignores locks, NFS)
    monkeypatch.setattr(
        install, "dataset_writer_lock", lambda *a, **k: contextlib.nullcontext(), raising=False
    )
    import_model(archive, workspace, name="A", force=True)
    assert nested["done"] and _complete(workspace / "A", "toolkit")
    assert not list(workspace.glob(".*"))


def test_the_limits_users_read_are_the_code_s():
    from toolkit.cli.sharing import import_model as command

    page = (Path(__file__).parents[2] / "docs" / "how-to" / "untrusted-input.md").read_text()
    gib = f"{archive_module.MAX_TOTAL_BYTES >> 30} GiB"
    ratio = f"{archive_module.MAX_COMPRESSION_RATIO} times"
    for text in (page, command.__doc__):
        text = " ".join(text.split())
        assert gib in text and ratio in text
    assert f"{archive_module.RATIO_FREE_BYTES >> 20} MiB" in page
    assert f"({archive_module.CHUNK_BYTES >> 20} MiB)" in page


def test_folders_swap_in_one_step_here(tmp_path):
    """Where this runs (Linux), --force's replacement is one atomic swap."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "new").write_text("x")
    if not atomic._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot swap folders in one step")
    assert (tmp_path / "b" / "new").is_file() and not any((tmp_path / "a").iterdir())
