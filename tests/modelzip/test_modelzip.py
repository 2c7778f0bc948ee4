"""A model as one file: export -> import on a fresh workspace -> the same labels; damaged,
foreign and nnU-Net v2 archives."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from container_helpers import CASES, CONFIG, make_dataset, write_selection
from typer.testing import CliRunner

from toolkit.cli import app, main
from toolkit.container import wheels
from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.core.selection import Selection
from toolkit.errors import ToolkitError
from toolkit.inference.stage import PredictOptions, run_predict
from toolkit.io.images import read_image, write_image
from toolkit.modelzip.archive import MANIFEST
from toolkit.modelzip.nnunet_postprocessing import KEEP_LARGEST, convert_postprocessing
from toolkit.modelzip.stage import ModelExportOptions, export_model, import_model
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths, ExportPaths, channel_file

NAME = "Dataset900_Tiny"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    paths = make_dataset(tmp_path_factory.mktemp("source"), NAME, folds=(0, 1, 2))
    write_selection(paths, folds=(0, 1))
    return paths


@pytest.fixture(scope="module")
def archive(source, tmp_path_factory):
    target = tmp_path_factory.mktemp("zip") / "model.zip"
    export_model(source, target, ModelExportOptions())
    return target


def predict_labels(tmp_path: Path, image: Path, mirroring: bool = False, **where) -> np.ndarray:
    out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
    options = PredictOptions(device="cpu", use_mirroring=mirroring, quiet=True)
    run_predict(image, out, options, **where)
    (written,) = sorted(out.glob("*.nii.gz"))
    return read_image(written)[0]


def test_the_archive_holds_slim_weights_and_a_manifest_of_checksums(archive):
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        assert manifest["configurations"] == [CONFIG] and manifest["folds"] == [0, 1]
        assert manifest["toolkit_version"] and manifest["torch_version"] == torch.__version__
        assert manifest["example_case"] == CASES[0]
        names = set(zf.namelist()) - {MANIFEST}
        assert names == set(manifest["members"])
        for name, digest in manifest["members"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        assert {"plans.json", "dataset.json", "postprocessing.json", "selection.json"} <= names
        assert f"models/{CONFIG}/fold_2/{CHECKPOINT_FINAL}" not in names  # not selected
        weights = f"models/{CONFIG}/fold_0/{CHECKPOINT_FINAL}"
        path = archive.parent / "fold_0.pt"
        path.write_bytes(zf.read(weights))
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"format_version", "network", "configuration"}  # no optimizer


def test_the_same_model_gives_the_same_bytes(source, archive, tmp_path):
    again = tmp_path / "again.zip"
    export_model(source, again, ModelExportOptions())
    assert again.read_bytes() == archive.read_bytes()


def test_export_import_predict_gives_the_same_labels(source, archive, tmp_path):
    imported = import_model(archive, tmp_path / "ws", name="Shared")
    paths = imported.paths
    assert paths.root == tmp_path / "ws" / "Shared"
    assert sorted(p.name for p in paths.model_dir(CONFIG).iterdir()) == [
        "dataset.json",
        "fold_0",
        "fold_1",
        "plans.json",
    ]
    selection = Selection.load(paths.selection_json)
    assert selection.dataset == "Shared" and selection.folds == [0, 1]
    assert selection.postprocessing.largest_component_foreground
    assert (paths.images_tr / channel_file(CASES[0], 0)).is_file()
    image = source.images_tr / channel_file(CASES[3], 0)
    expected = predict_labels(tmp_path, image, dataset=str(source.root))
    got = predict_labels(tmp_path, image, dataset="Shared", workspace=tmp_path / "ws")
    assert np.array_equal(expected, got)


def test_config_and_folds_choose_what_is_exported(source, tmp_path):
    done = export_model(
        source, tmp_path / "m.zip", ModelExportOptions(configurations=[CONFIG], folds=[2])
    )
    assert done.manifest.folds == [2]
    imported = import_model(tmp_path / "m.zip", tmp_path / "ws")
    assert imported.paths.name == NAME and imported.folds == [2]
    assert Selection.load(imported.paths.selection_json).folds == [2]


def test_an_existing_dataset_is_replaced_only_with_force(archive, tmp_path):
    import_model(archive, tmp_path / "ws", name="A")
    with pytest.raises(ToolkitError, match="--force"):
        import_model(archive, tmp_path / "ws", name="A")
    import_model(archive, tmp_path / "ws", name="A", force=True)
    assert not list((tmp_path / "ws").glob(".*.importing.*"))


def rewritten(archive: Path, target: Path, change) -> Path:
    """A copy of ``archive`` whose members (name -> bytes) went through ``change``."""
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in change(members).items():
            zf.writestr(name, data)
    return target


def _flip_a_weight(members):
    name = next(n for n in members if n.endswith(".pt"))
    data = bytearray(members[name])
    data[-100] ^= 0xFF
    return members | {name: bytes(data)}


def _drop_plans(members):
    return {n: d for n, d in members.items() if n != "models/3d_fullres/plans.json"}


def _foreign_manifest(members):
    return members | {MANIFEST: b'{"format": "something-else"}'}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_flip_a_weight, "does not match its sha256"),
        (_drop_plans, "member models/3d_fullres/plans.json is missing"),
        (_foreign_manifest, "is not a toolkit model archive"),
        (lambda m: {"README.txt": b"hello"}, "is not a model archive"),
    ],
    ids=["bad-checksum", "missing-member", "foreign-manifest", "foreign-zip"],
)
def test_a_damaged_or_foreign_zip_is_a_one_line_error(archive, tmp_path, change, message):
    broken = rewritten(archive, tmp_path / "broken.zip", change)
    with pytest.raises(ToolkitError, match=message) as error:
        import_model(broken, tmp_path / "ws")
    assert error.value.path == broken
    assert not (tmp_path / "ws" / NAME).exists()


def test_not_a_zip_exits_2_naming_the_file(tmp_path, capsys):
    bogus = tmp_path / "model.zip"
    bogus.write_bytes(b"not a zip at all")
    with pytest.raises(SystemExit) as done:
        main(["import-model", str(bogus), "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.count("\n") == 1 and f"{bogus}: is not a zip archive" in err


def test_cli_export_import_then_export_container_no_build(source, tmp_path, monkeypatch):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device, **_: ["numpy==2.4.6"])
    runner = CliRunner()
    target = tmp_path / "model.zip"
    result = runner.invoke(
        app, ["export-model", str(source.root), "-o", str(target), "--folds", "0"]
    )
    assert result.exit_code == 0, result.output
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["import-model", str(target), "-w", str(ws), "--name", "Shared"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export-container", "Shared", "-w", str(ws), "--no-build", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(ExportPaths(DatasetPaths(ws / "Shared").export).record.read_text())
    assert record["test_run"]["identical"] is True and record["folds"] == [0]


# --- nnU-Net v2 archives -----------------------------------------------------------------


def nnunet_archive(tmp_path: Path) -> tuple[Path, Path]:
    from test_nnunet_v2 import write_fake_nnunet_model

    dataset = tmp_path / "nnunet" / "Dataset990_Synth"
    model = write_fake_nnunet_model(dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    pickle = model / "crossval_results_folds_0" / "postprocessing.pkl"
    pickle.parent.mkdir()
    pickle.write_bytes(b"\x80\x04not to be unpickled")
    steps = {
        "postprocessing_fns": [KEEP_LARGEST, KEEP_LARGEST],
        "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}],
    }
    (pickle.parent / "postprocessing.json").write_text(json.dumps(steps))
    target = tmp_path / "nnunet.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(dataset.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dataset.parent).as_posix())
        # a model of every case, which the toolkit's numbered folds leave out
        zf.writestr(f"{dataset.name}/{model.name}/fold_all/checkpoint_final.pth", b"not read")
    return target, model


def test_an_nnunet_v2_archive_predicts_like_its_model_folder(tmp_path):
    from inference_helpers import make_case

    target, model = nnunet_archive(tmp_path)
    imported = import_model(target, tmp_path / "ws")
    assert imported.kind == "nnU-Net v2" and imported.paths.name == "Dataset990_Synth"
    assert imported.configurations == ["3d_fullres"] and imported.folds == [0]
    assert any("postprocessing.pkl" in n and "never unpickled" in n for n in imported.notes)
    assert any("fold_all left out" in n for n in imported.notes)
    selection = Selection.load(imported.paths.selection_json)
    assert selection.postprocessing == Postprocessing(True, [2])
    image, _, geometry = make_case(3)
    case = tmp_path / "in"
    write_image(case / "c_0000.nii.gz", image, geometry)
    write_image(case / "c_0001.nii.gz", image / 100, geometry)
    expected = apply_postprocessing(
        predict_labels(tmp_path, case / "c_0000.nii.gz", True, model=model),
        Postprocessing(True, [2]),
    )
    # mirrored over the axes the nnU-Net checkpoint allows, as its folder is
    got = predict_labels(
        tmp_path,
        case / "c_0000.nii.gz",
        True,
        dataset="Dataset990_Synth",
        workspace=tmp_path / "ws",
    )
    assert np.array_equal(expected, got)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], Postprocessing()),
        ([[1, 2]], Postprocessing(True, [])),
        ([[1, 2], 1, [2]], Postprocessing(True, [1, 2])),
        ([[1]], Postprocessing(False, [1])),
        ([[1, 3]], None),  # a region: not ours
        ([7], None),
    ],
)
def test_nnunet_postprocessing_json_maps_onto_ours(steps, expected):
    data = {
        "postprocessing_fns": [KEEP_LARGEST] * len(steps),
        "postprocessing_kwargs": [{"labels_or_regions": s} for s in steps],
    }
    assert convert_postprocessing(data, [1, 2]) == expected
    assert convert_postprocessing(
        {**data, "postprocessing_fns": ["other"] * len(steps)}, [1, 2]
    ) == (expected if not steps else None)


def test_a_cascade_travels_with_its_first_stage(tmp_path):
    from inference_helpers import make_plans, save_model_dir, write_raw_dataset

    paths = DatasetPaths(tmp_path / "src" / "Synth")
    write_raw_dataset(paths.raw, cases=2, test_cases=0)
    plans = make_plans(cascade=True)
    plans.save(paths.plans_json)
    save_model_dir(paths.model_dir("3d_lowres"), plans, "3d_lowres")
    save_model_dir(paths.model_dir("3d_cascade_fullres"), plans, "3d_cascade_fullres", seed=7)
    done = export_model(
        paths,
        tmp_path / "cascade.zip",
        ModelExportOptions(configurations=["3d_cascade_fullres"], folds=[0]),
    )
    assert done.manifest.model_configurations == ["3d_lowres", "3d_cascade_fullres"]
    imported = import_model(tmp_path / "cascade.zip", tmp_path / "ws")
    image = paths.images_tr / channel_file("synth_001", 0)
    expected = predict_labels(
        tmp_path, image, dataset=str(paths.root), configurations=["3d_cascade_fullres"]
    )
    got = predict_labels(tmp_path, image, dataset="Synth", workspace=tmp_path / "ws")
    assert imported.configurations == ["3d_cascade_fullres"] and np.array_equal(expected, got)


def test_nnunet_postprocessing_of_a_region_model_maps_onto_our_regions():
    regions = [(1, 2, 3), (2, 3), (3,)]
    data = {
        "postprocessing_fns": [KEEP_LARGEST] * 3,
        "postprocessing_kwargs": [
            {"labels_or_regions": [1, 2, 3]},
            {"labels_or_regions": [2, 3]},
            {"labels_or_regions": [3]},
        ],
    }
    assert convert_postprocessing(data, [1, 2, 3], regions) == Postprocessing(
        True, [], [[2, 3], [3]]
    )
    bad = {**data, "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]}
    bad["postprocessing_fns"] = [KEEP_LARGEST]
    assert convert_postprocessing(bad, [1, 2, 3], regions) is None


def test_an_import_killed_half_way_is_swept_by_the_next(archive, tmp_path):
    """SIGKILL at the import's second write leaves its staging folder (maybe gigabytes of
    weights); the next import of that dataset removes it, and one of another dataset stays."""
    runner = Path(__file__).parents[1] / "faults" / "kill_at_write.py"
    workspace = tmp_path / "ws"
    command = [sys.executable, str(runner), "2", "", "import-model", str(archive)]
    command += ["-w", str(workspace), "--name", "A"]
    env = {**os.environ, "TOOLKIT_QUIET": "1"}
    killed = subprocess.run(
        command, env=env, capture_output=True, text=True, start_new_session=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = list(workspace.glob(".A.importing.*"))
    assert len(left) == 1 and any(left[0].rglob("*")) and not (workspace / "A").exists()
    other = workspace / f".AB.importing.{left[0].name.split('.')[3]}.abcdefgh"
    other.mkdir()  # another dataset's (a dead process's, but not this import's to sweep)
    import_model(archive, workspace, name="A")
    assert not list(workspace.glob(".A.importing.*")) and other.is_dir()
    assert Selection.load(DatasetPaths(workspace / "A").selection_json).dataset == "A"
