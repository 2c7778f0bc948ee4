"""Fine-tuning as a user runs it: a second dataset planned like the first (`plan --like`),
then trained from the first one's model (`train --pretrained`)."""

from __future__ import annotations

import torch

from toolkit.cli import main
from toolkit.core.checkpoint import KEY_NETWORK, KEY_RUN, load_checkpoint
from toolkit.synthetic.msd import generate_task
from toolkit.training.job import KEY_PRETRAINED
from toolkit.training.pretrained import pretrained_weights
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths

TRAIN = ["--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--no-validate", "-q"]


def cli(argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_a_dataset_planned_like_another_fine_tunes_from_its_model(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    for name, seed in (("Source", 1), ("Target", 2)):
        task = generate_task(
            "mr", tmp_path / name, n_cases=5, seed=seed, shape=(16, 32, 32), n_test=0
        )
        cli(["convert", str(task), "-w", ws, "--name", name, "-q"], capsys)
        cli(["fingerprint", name, "-w", ws, "-q"], capsys)
    cli(["plan", "Source", "-w", ws, "--preset", "cpu"], capsys)
    cli(["plan", "Target", "-w", ws, "--like", "Source"], capsys)
    for name in ("Source", "Target"):
        cli(["preprocess", name, "-w", ws, "--configs", "3d_fullres", "-q"], capsys)
    cli(["train", "Source", "3d_fullres", "0", "-w", ws, *TRAIN], capsys)
    source_model = DatasetPaths(tmp_path / "ws" / "Source").model_dir("3d_fullres")

    out = cli(
        ["train", "Target", "3d_fullres", "0", "-w", ws, *TRAIN, "--pretrained", str(source_model)],
        capsys,
    )
    source = pretrained_weights(source_model / "fold_0" / CHECKPOINT_FINAL)
    assert f"pretrained: loaded {len(source)} of {len(source)} tensors" in out  # the same network
    target = DatasetPaths(tmp_path / "ws" / "Target")
    checkpoint = load_checkpoint(target.fold_dir("3d_fullres", 0) / CHECKPOINT_FINAL)
    assert checkpoint[KEY_RUN][KEY_PRETRAINED] == str(source_model)  # recorded as given
    # one step from the source's weights, not from a fresh initialisation: still close to them
    moved = [
        (checkpoint[KEY_NETWORK][k] - v).abs().max().item() / (v.abs().max().item() + 1e-8)
        for k, v in source.items()
        if k.endswith("conv.weight")
    ]
    assert max(moved) < 0.5
    fresh = torch.nn.init.kaiming_normal_(torch.empty_like(source["encoder.0.0.conv.weight"]))
    assert not torch.allclose(fresh, checkpoint[KEY_NETWORK]["encoder.0.0.conv.weight"])
