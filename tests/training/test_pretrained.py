"""``--pretrained``: matching tensors loaded at a training's start, recorded, keyed in run-all."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from training_helpers import LABELS, run_cli, tiny_plans

from toolkit.core.checkpoint import KEY_RUN, load_checkpoint
from toolkit.core.constants import FOLD_ALL
from toolkit.errors import ToolkitError
from toolkit.nets.unet import build_network
from toolkit.pipeline import records
from toolkit.pipeline.runner import RunOptions, Stages, training_key
from toolkit.training import stage
from toolkit.training.job import KEY_PRETRAINED, TrainOptions, prepare
from toolkit.training.pretrained import load_matching, pretrained_file, pretrained_weights
from toolkit.training.schedule import Schedule
from toolkit.workspace import CHECKPOINT_FINAL

ONE = Schedule(epochs=1, iterations_per_epoch=1, validation_iterations=1)


def options(**changes) -> TrainOptions:
    base = {"schedule": ONE, "device": "cpu", "validate": False, "quiet": True}
    base.update(changes)
    return TrainOptions(**base)


@pytest.fixture
def trained(tiny_dataset):
    """Fold 0 of the tiny dataset, trained for one iteration: the source of the weights."""
    stage.train_fold(tiny_dataset, "3d_fullres", 0, options())
    return tiny_dataset.fold_dir("3d_fullres", 0) / CHECKPOINT_FINAL


@pytest.mark.parametrize(
    "change, differs",
    [
        ({"labels": {**LABELS, "edge": 3}}, "heads."),  # another label: the heads
        ({"channel_names": {"0": "MR", "1": "CT"}}, "encoder.0.0.conv.weight"),  # the first conv
    ],
)
def test_matching_tensors_are_loaded_and_the_others_stay_fresh(trained, change, differs):
    source = pretrained_weights(trained)
    plans = tiny_plans()
    plans = replace(plans, **change)
    configuration = plans.configuration("3d_fullres")
    if "channel_names" in change:
        configuration = replace(configuration, normalization=configuration.normalization * 2)
    torch.manual_seed(1)
    network = build_network(plans, configuration, deep_supervision=True)
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    match = load_matching(network, source)
    after = network.state_dict()
    assert match.total == len(after) and not match.missing
    assert match.shape_differs and all(n.startswith(differs) for n in match.shape_differs)
    for name in match.loaded:
        assert torch.equal(after[name], source[name])
    for name in match.shape_differs:
        assert torch.equal(after[name], fresh[name])
    if "labels" in change:  # the whole encoder and decoder came from the source
        assert all(n in match.loaded for n in after if n.startswith(("encoder.", "decoder.")))
    line = match.describe(trained)
    assert line.startswith(f"pretrained: loaded {len(match.loaded)} of {len(after)} tensors from ")
    assert f"{match.shape_differs[0]}" in line and "(shape differs)" in line


def test_a_training_starts_from_the_weights_records_them_and_resumes(trained, tiny_dataset, capsys):
    paths = tiny_dataset
    model_dir = paths.model_dir("3d_fullres")
    assert pretrained_file(model_dir) == trained  # no fold_all: the first fold
    assert pretrained_file(trained.parent) == trained
    capsys.readouterr()
    stage.train_fold(paths, "3d_fullres", 1, options(pretrained=str(model_dir)))
    err = capsys.readouterr().err
    total = len(pretrained_weights(trained))
    assert (
        f"pretrained: loaded {total} of {total} tensors from {trained}; not loaded: none"
        in " ".join(err.split())
    )
    final = paths.fold_dir("3d_fullres", 1) / CHECKPOINT_FINAL
    assert load_checkpoint(final)[KEY_RUN][KEY_PRETRAINED] == str(model_dir.resolve())
    # a resume restores its own checkpoint, with the same options
    job = prepare(paths, "3d_fullres", 1, options(resume=True, pretrained=str(model_dir)))
    assert job.start_from == final and job.pretrained is None
    with pytest.raises(ToolkitError, match="--pretrained"):
        prepare(paths, "3d_fullres", 1, options(resume=True))


def test_nnunet_checkpoints_are_sources_too(trained, tmp_path):
    ours = pretrained_weights(trained)
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres" / f"fold_{FOLD_ALL}"
    folder.mkdir(parents=True)
    torch.save(
        {
            "network_weights": {
                "encoder.stages.0.0.convs.0.conv.weight": ours["encoder.0.0.conv.weight"],
                "decoder.seg_layers.0.weight": torch.zeros(5, 8, 1, 1, 1),
            },
            "init_args": {"configuration": "3d_fullres", "fold": "all"},
        },
        folder / "checkpoint_final.pth",
    )
    (folder.parent / "fold_0").mkdir()
    (folder.parent / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    path = pretrained_file(folder.parent)
    assert path == folder / "checkpoint_final.pth"  # fold_all before the numbered folds
    network = build_network(tiny_plans(), tiny_plans().configuration("3d_fullres"))
    match = load_matching(network, pretrained_weights(path))
    assert match.loaded == ["encoder.0.0.conv.weight"]
    assert match.shape_differs == ["heads.0.weight"] and "heads.0.bias" in match.missing
    assert torch.equal(
        network.state_dict()["encoder.0.0.conv.weight"], ours["encoder.0.0.conv.weight"]
    )
    with pytest.raises(ToolkitError, match="cannot be loaded as an nnU-Net v2 checkpoint"):
        pretrained_weights(folder.parent / "fold_0" / "checkpoint_final.pth")


def test_a_missing_or_damaged_source_is_a_one_line_error(tiny_dataset, tmp_path, capsys):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"garbage")
    empty = tmp_path / "empty"
    empty.mkdir()
    for source, message in (
        (tmp_path / "nowhere.pt", "pretrained weights not found"),
        (damaged, "cannot be loaded as a checkpoint"),
        (empty, "holds no final checkpoint"),
    ):
        code, _, err = run_cli(
            ["train", str(tiny_dataset.root), "3d_fullres", "0", "--device", "cpu"]
            + ["--pretrained", str(source), "-q"],
            capsys,
        )
        assert code == 2 and message in err and source.name in err
    assert not tiny_dataset.fold_dir("3d_fullres", 0).exists()


def test_run_all_trains_again_when_the_pretrained_source_changes(tiny_dataset, tmp_path):
    source = tmp_path / "weights.pt"
    source.write_bytes(b"one")

    def keys(pretrained):
        stages = Stages(tiny_dataset, RunOptions(quiet=True, pretrained=pretrained))
        tasks = stages.training_tasks(tiny_plans(), ["3d_fullres"], {"3d_fullres": "p"})
        assert all(t.pretrained == pretrained for t in tasks)
        return [t.key for t in tasks]

    without, first = keys(None), keys(str(source))
    source.write_bytes(b"two")
    second = keys(str(source))
    assert len({tuple(without), tuple(first), tuple(second)}) == 3
    # without --pretrained the key is the one trainings had before the option existed
    legacy = records.digest("train", {"a": 1}, "p", [1, 2], [])
    assert training_key({"a": 1}, "p", [1, 2], []) == legacy
    assert training_key({"a": 1}, "p", [1, 2], [], "d1") != training_key(
        {"a": 1}, "p", [1, 2], [], "d2"
    )
