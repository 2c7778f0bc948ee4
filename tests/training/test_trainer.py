"""The training loop end to end on a tiny dataset: files, resume, errors, 2D, cascade, processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from training_helpers import blob_case, tiny_plans, write_case

from toolkit.core.checkpoint import load_checkpoint
from toolkit.errors import ToolkitError
from toolkit.training import stage, trainer
from toolkit.training.job import TrainOptions
from toolkit.training.schedule import Schedule
from toolkit.workspace import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST

FAST = Schedule(epochs=2, iterations_per_epoch=3, validation_iterations=1)


def options(**changes) -> TrainOptions:
    base = {
        "schedule": FAST,
        "device": "cpu",
        "validate": False,
        "quiet": True,
        "checkpoint_every_s": 0.0,
    }
    base.update(changes)
    return TrainOptions(**base)


def test_training_writes_a_self_contained_model_folder(tiny_dataset):
    result = stage.train_fold(tiny_dataset, "3d_fullres", 1, options(validate=True))
    fold = tiny_dataset.fold_dir("3d_fullres", 1)
    model = tiny_dataset.model_dir("3d_fullres")
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    assert {p.name for p in fold.iterdir()} >= {
        CHECKPOINT_FINAL,
        CHECKPOINT_BEST,
        "log.jsonl",
        "progress.png",
        "validation",
    }
    assert not (fold / CHECKPOINT_LATEST).exists()  # the final one replaces it
    checkpoint = torch.load(fold / CHECKPOINT_FINAL, weights_only=True)
    assert checkpoint["configuration"] == "3d_fullres" and checkpoint["epoch"] == 2
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["network"].values())
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[1]["lr"] < log[0]["lr"] == 0.01
    assert len(log[0]["pseudo_dice"]) == 2 and log[0]["train_iterations"] == 3
    splits = json.loads(tiny_dataset.splits_json.read_text())
    val = splits[1]["val"]
    for case in val:
        assert (fold / "validation" / f"{case}.nii.gz").is_file()
        probabilities = np.load(fold / "validation" / f"{case}.npz")["probabilities"]
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, 20, 24, 24)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert [r["case"] for r in summary["cases"]] == sorted(val) and result.validation == summary
    # a finished fold is a no-op
    again = stage.train_fold(tiny_dataset, "3d_fullres", 1, options(validate=True, resume=True))
    assert again.already_done


def _weights(paths, fold, name=CHECKPOINT_FINAL):
    return load_checkpoint(paths.fold_dir("3d_fullres", fold) / name)


def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny_dataset, monkeypatch):
    stage.train_fold(tiny_dataset, "3d_fullres", 0, options())
    reference = _weights(tiny_dataset, 0)
    # the same fold again, in another folder, interrupted in the middle of epoch 1
    import shutil

    shutil.rmtree(tiny_dataset.model_dir("3d_fullres"))
    real_step, calls = trainer.train_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.train_fold(tiny_dataset, "3d_fullres", 0, options())
    partial = _weights(tiny_dataset, 0, CHECKPOINT_LATEST)
    assert (partial["epoch"], partial["iteration"]) == (1, 1)
    monkeypatch.setattr(trainer, "train_step", real_step)
    with pytest.raises(ToolkitError, match="--resume"):
        stage.train_fold(tiny_dataset, "3d_fullres", 0, options())
    with pytest.raises(ToolkitError, match="same options"):
        stage.train_fold(tiny_dataset, "3d_fullres", 0, options(resume=True, seed=3))
    stage.train_fold(tiny_dataset, "3d_fullres", 0, options(resume=True))
    resumed = _weights(tiny_dataset, 0)
    for key, value in reference["network"].items():
        assert torch.equal(value, resumed["network"][key]), key
    assert [r["train_loss"] for r in resumed["history"]] == [
        r["train_loss"] for r in reference["history"]
    ]
    assert (
        resumed["optimizer"]["param_groups"][0]["lr"]
        == reference["optimizer"]["param_groups"][0]["lr"]
    )


def test_missing_stages_name_the_command(tiny_dataset):
    from toolkit.cli import main

    with pytest.raises(ToolkitError, match="toolkit preprocess Tiny --configs 2d"):
        plans = tiny_plans()
        plans.configurations["2d"] = tiny_plans(patch=(16, 16)).configurations["2d"]
        plans.configurations["2d"].data_identifier = "2d"
        plans.save(tiny_dataset.plans_json)
        stage.train_fold(tiny_dataset, "2d", 0, options())
    tiny_dataset.plans_json.unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "Tiny", "3d_fullres", "0", "--device", "cpu"])
    assert exit_info.value.code == 2


def test_cascade_without_first_stage_says_what_to_train(tiny_dataset):
    tiny_plans(cascade=True).save(tiny_dataset.plans_json)
    with pytest.raises(ToolkitError, match="toolkit train Tiny 3d_lowres 0"):
        stage.train_fold(tiny_dataset, "3d_cascade_fullres", 0, options())


def test_2d_configuration_trains(tiny_dataset):
    plans = tiny_plans()
    plans.configurations["2d"] = tiny_plans(patch=(16, 16), batch_size=3).configurations["2d"]
    plans.save(tiny_dataset.plans_json)
    stage.train_fold(tiny_dataset, "2d", 0, options(schedule=Schedule(1, 2, 1), validate=True))
    summary = json.loads(tiny_dataset.validation_summary("2d", 0).read_text())
    assert len(summary["cases"]) == 2
    assert summary["training"] == {  # the budget the report names
        "epochs": 1,
        "iterations_per_epoch": 2,
        "mirroring": True,
        "precision": "fp32",
    }


def test_bf16_on_the_cpu(tiny_dataset):
    stage.train_fold(
        tiny_dataset, "3d_fullres", 2, options(schedule=Schedule(1, 2, 1), precision="bf16")
    )
    with pytest.raises(ToolkitError, match="fp16 needs a CUDA"):
        stage.train_fold(tiny_dataset, "3d_fullres", 3, options(precision="fp16"))


# slow: other processes -----------------------------------------------------------------------


def _cli(paths, *args):
    env = {**os.environ, "TOOLKIT_WORKSPACE": str(paths.root.parent), "TOOLKIT_QUIET": "1"}
    return [sys.executable, "-m", "toolkit", "train", paths.name, *args], env


@pytest.mark.slow
def test_sigkill_then_resume_completes_the_same_schedule(tiny_dataset):
    args = [
        "3d_fullres",
        "0",
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--iters-per-epoch",
        "4",
        "--val-iters",
        "1",
        "--checkpoint-minutes",
        "0",
        "--no-validate",
    ]
    command, env = _cli(tiny_dataset, *args)
    fold = tiny_dataset.fold_dir("3d_fullres", 0)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        latest = fold / CHECKPOINT_LATEST
        if latest.is_file():
            state = load_checkpoint(latest)
            if (state["epoch"], state["iteration"]) >= (1, 2):
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    for name in (CHECKPOINT_LATEST, CHECKPOINT_BEST):
        load_checkpoint(fold / name)  # intact
    killed_at = load_checkpoint(fold / CHECKPOINT_LATEST)
    assert killed_at["epoch"] < 3 and not (fold / CHECKPOINT_FINAL).exists()
    done = subprocess.run(
        command + ["--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    final = load_checkpoint(fold / CHECKPOINT_FINAL)
    assert final["epoch"] == 3 and [r["epoch"] for r in final["history"]] == [0, 1, 2]
    assert not list(fold.glob(".*.tmp*"))
    # the same schedule, uninterrupted, in a second fold folder: identical weights
    import shutil

    killed_dir = fold.parent / "killed"
    shutil.move(fold, killed_dir)
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    straight = load_checkpoint(fold / CHECKPOINT_FINAL)
    assert [r["train_loss"] for r in straight["history"]] == [
        r["train_loss"] for r in final["history"]
    ]
    for key, value in straight["network"].items():
        assert torch.equal(value, final["network"][key]), key
    done = subprocess.run(
        command + ["--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "nothing to do" in done.stderr


@pytest.mark.slow
def test_two_processes_with_gloo(tiny_dataset):
    command, env = _cli(
        tiny_dataset,
        "3d_fullres",
        "4",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--val-iters",
        "1",
        "--devices",
        "2",
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    fold = tiny_dataset.fold_dir("3d_fullres", 4)
    final = load_checkpoint(fold / CHECKPOINT_FINAL)
    assert final["epoch"] == 1 and final["history"][0]["train_iterations"] == 2
    summary = json.loads(tiny_dataset.validation_summary("3d_fullres", 4).read_text())
    assert sorted(r["case"] for r in summary["cases"]) == sorted(
        json.loads(tiny_dataset.splits_json.read_text())[4]["val"]
    )


@pytest.mark.slow
def test_cascade_trains_on_out_of_fold_low_resolution_predictions(tiny_dataset):
    tiny_plans(cascade=True).save(tiny_dataset.plans_json)
    rng = np.random.default_rng(1)
    for i in range(10):
        image, seg = blob_case(rng, shape=(14, 16, 16))
        write_case(
            tiny_dataset.preprocessed_dir("3d_lowres"),
            f"case_{i:02d}",
            image,
            seg,
            original_shape=(20, 24, 24),
        )
    one = options(schedule=Schedule(1, 1, 1), validate=True)
    for fold in range(5):
        stage.train_fold(tiny_dataset, "3d_lowres", fold, one)
    folder = tiny_dataset.next_stage_dir("3d_lowres", "3d_cascade_fullres")
    prediction = np.load(folder / "case_03.npy")
    assert prediction.shape == (1, 20, 24, 24) and prediction.dtype == np.int8
    stage.train_fold(tiny_dataset, "3d_cascade_fullres", 0, one)
    final = load_checkpoint(tiny_dataset.fold_dir("3d_cascade_fullres", 0) / CHECKPOINT_FINAL)
    assert final["network"]["encoder.0.0.conv.weight"].shape[1] == 1 + 2  # image + one-hot classes
    assert tiny_dataset.validation_summary("3d_cascade_fullres", 0).is_file()


# CUDA (runs where a GPU is present) ---------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
def test_cuda_training_in_mixed_precision_with_validation(tiny_dataset):
    stage.train_fold(tiny_dataset, "3d_fullres", 0, options(device="cuda", validate=True))
    final = load_checkpoint(tiny_dataset.fold_dir("3d_fullres", 0) / CHECKPOINT_FINAL)
    assert final["grad_scaler"] is not None and all(
        np.isfinite(r["train_loss"]) for r in final["history"]
    )
    assert all(v.device.type == "cpu" for v in final["network"].values())
    assert tiny_dataset.validation_summary("3d_fullres", 0).is_file()


@needs_cuda
def test_augmentation_on_cuda_matches_the_cpu():
    from toolkit.training import augmentation as A
    from toolkit.training.augmentation.spatial import spatial_rules

    rules = spatial_rules((12, 14, 16))
    aug = A.Augmenter(rules)
    aug.transforms = [t for t in aug.transforms if t.name != "noise"]  # device generators differ
    g = torch.Generator().manual_seed(0)
    image = torch.rand((6, 2, *rules.crop_size), generator=g)
    labels = torch.randint(-1, 3, (6, 1, *rules.crop_size), generator=g, dtype=torch.int16)
    params = aug.sample(np.random.SeedSequence(4), 6, 2)
    cpu = aug.apply(A.Batch(image.clone(), labels.clone()), params)
    gpu = aug.apply(A.Batch(image.cuda(), labels.cuda()), params)
    assert torch.allclose(cpu.image, gpu.image.cpu(), atol=1e-3)
    assert (cpu.labels == gpu.labels.cpu()).float().mean() > 0.999


@pytest.mark.slow
def test_started_by_torchrun(tiny_dataset):
    command, env = _cli(
        tiny_dataset,
        "3d_fullres",
        "3",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
        "--val-iters",
        "1",
        "--no-validate",
    )
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "toolkit",
    ]
    done = subprocess.run(
        launcher + command[3:], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_checkpoint(tiny_dataset.fold_dir("3d_fullres", 3) / CHECKPOINT_FINAL)
    assert final["epoch"] == 1
