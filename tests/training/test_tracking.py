"""--logger tensorboard / mlflow: the scalars named once, readable event files, one MLflow run
per fold continued by a resume, and a one-line error before training when a backend is missing."""

from __future__ import annotations

import json
import os
import sys
import types
from collections import defaultdict

import pytest

from toolkit.errors import ToolkitError
from toolkit.training import stage, trainer
from toolkit.training.history import EpochRecord
from toolkit.training.job import TrainOptions
from toolkit.training.schedule import Schedule
from toolkit.training.tracking import epoch_scalars, final_scalars, parse_loggers
from toolkit.workspace import CHECKPOINT_LATEST, MLFLOW_RUN, TENSORBOARD_DIR

TINY = Schedule(epochs=2, iterations_per_epoch=2, validation_iterations=1)
EPOCH_TAGS = {
    "train_loss",
    "val_loss",
    "pseudo_dice/core",
    "pseudo_dice/rim",
    "mean_pseudo_dice",
    "ema_pseudo_dice",
    "lr",
    "epoch_time_s",
}
FINAL_TAGS = {"validation_dice/core", "validation_dice/rim", "validation_mean_dice"}


def options(**changes) -> TrainOptions:
    base = {
        "schedule": TINY,
        "device": "cpu",
        "validate": True,
        "validation_mirroring": False,
        "quiet": True,
        "checkpoint_every_s": 0.0,
    }
    base.update(changes)
    return TrainOptions(**base)


def interrupted_then_resumed(paths, monkeypatch, loggers: tuple[str, ...]) -> None:
    """Epoch 0, killed at the start of epoch 1, then resumed to the end and validated."""
    real_step, calls = trainer.train_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == TINY.iterations_per_epoch + 1:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.train_fold(paths, "3d_fullres", 0, options(loggers=loggers))
    assert (paths.fold_dir("3d_fullres", 0) / CHECKPOINT_LATEST).is_file()
    monkeypatch.setattr(trainer, "train_step", real_step)
    stage.train_fold(paths, "3d_fullres", 0, options(loggers=loggers, resume=True))


def test_logger_names_repeated_or_comma_separated():
    assert parse_loggers([]) == ()
    assert parse_loggers(["tensorboard,mlflow", "TensorBoard"]) == ("tensorboard", "mlflow")
    with pytest.raises(ToolkitError, match="--logger must be tensorboard or mlflow"):
        parse_loggers(["wandb"])


def test_scalars_of_an_epoch_and_of_the_final_validation():
    record = EpochRecord(
        epoch=3,
        train_loss=-0.5,
        val_loss=None,
        pseudo_dice=[0.8, None],
        mean_pseudo_dice=0.8,
        ema_pseudo_dice=0.6,
        lr=0.009,
        epoch_time_s=12.5,
        data_wait_s=0.1,
        train_iterations=250,
        timestamp=0.0,
    )
    assert epoch_scalars(record, ["core", "rim"]) == {
        "train_loss": -0.5,
        "pseudo_dice/core": 0.8,
        "mean_pseudo_dice": 0.8,
        "ema_pseudo_dice": 0.6,
        "lr": 0.009,
        "epoch_time_s": 12.5,
    }
    summary = {"mean_dice": {"1": 0.9, "2": None}, "mean_foreground_dice": 0.9}
    assert final_scalars(summary, {"1": "core", "2": "rim"}) == {
        "validation_dice/core": 0.9,
        "validation_mean_dice": 0.9,
    }


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_missing_backend_is_one_line_naming_the_extra_before_training(
    tiny_dataset, monkeypatch, backend
):
    monkeypatch.setitem(sys.modules, backend, None)  # what find_spec reports as not installed
    with pytest.raises(ToolkitError) as raised:
        stage.train_fold(tiny_dataset, "3d_fullres", 0, options(loggers=(backend,)))
    assert str(raised.value) == f"--logger {backend} needs `pip install 'toolkit[{backend}]'`"
    assert not tiny_dataset.fold_dir("3d_fullres", 0).exists()


def test_tensorboard_event_files_are_readable_and_a_resume_appends(tiny_dataset, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    interrupted_then_resumed(tiny_dataset, monkeypatch, ("tensorboard",))
    fold = tiny_dataset.fold_dir("3d_fullres", 0)
    events = EventAccumulator(str(fold / TENSORBOARD_DIR))
    events.Reload()
    assert set(events.Tags()["scalars"]) == EPOCH_TAGS | FINAL_TAGS
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    train_loss = events.Scalars("train_loss")
    assert [e.step for e in train_loss] == [0, 1]
    assert [e.value for e in train_loss] == pytest.approx([r["train_loss"] for r in log])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([r["lr"] for r in log])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    final = events.Scalars("validation_mean_dice")
    assert [e.step for e in final] == [TINY.epochs]
    assert final[0].value == pytest.approx(summary["mean_foreground_dice"])
    assert (fold / "progress.png").is_file()  # the log and the plot stay as they are


class FakeMlflowClient:
    """What ``mlflow.MlflowClient`` is asked, recorded per tracking URI (a store)."""

    stores: dict[str, dict] = {}

    def __init__(self, tracking_uri):
        self.store = self.stores.setdefault(
            tracking_uri, {"experiments": {}, "runs": {}, "metrics": defaultdict(list)}
        )

    def get_experiment_by_name(self, name):
        found = self.store["experiments"].get(name)
        return None if found is None else types.SimpleNamespace(experiment_id=found)

    def create_experiment(self, name):
        self.store["experiments"][name] = str(len(self.store["experiments"]))
        return self.store["experiments"][name]

    def create_run(self, experiment_id, tags, run_name):
        run_id = f"run{len(self.store['runs'])}"
        self.store["runs"][run_id] = {"experiment": experiment_id, "tags": tags, "name": run_name}
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

    def log_metric(self, run_id, key, value, step):
        self.store["metrics"][run_id, key].append((step, value))

    def set_terminated(self, run_id):
        self.store["runs"][run_id]["terminated"] = True


def test_mlflow_logs_one_run_per_fold_in_a_local_store(tiny_dataset, monkeypatch):
    fake = types.ModuleType("mlflow")
    fake.MlflowClient = FakeMlflowClient
    FakeMlflowClient.stores = {}
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    interrupted_then_resumed(tiny_dataset, monkeypatch, ("mlflow",))
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # MLflow >= 3.7 asks for it
    fold = tiny_dataset.fold_dir("3d_fullres", 0)
    [(uri, store)] = FakeMlflowClient.stores.items()
    assert uri == (fold / "mlruns").resolve().as_uri()  # nothing sent anywhere
    [(run_id, run)] = store["runs"].items()  # the resume continued the same run
    assert run["tags"] == {"dataset": "Tiny", "configuration": "3d_fullres", "fold": "0"}
    assert run["terminated"] and store["experiments"] == {"Tiny/3d_fullres": run["experiment"]}
    assert json.loads((fold / MLFLOW_RUN).read_text())["run_id"] == run_id
    metrics = {key: values for (rid, key), values in store["metrics"].items() if rid == run_id}
    assert set(metrics) == EPOCH_TAGS | FINAL_TAGS
    assert [step for step, _ in metrics["train_loss"]] == [0, 1]
    assert [step for step, _ in metrics["validation_mean_dice"]] == [TINY.epochs]


def test_mlflow_follows_the_tracking_uri_when_set(tiny_dataset, monkeypatch, tmp_path):
    fake = types.ModuleType("mlflow")
    fake.MlflowClient = FakeMlflowClient
    FakeMlflowClient.stores = {}
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    stage.train_fold(
        tiny_dataset,
        "3d_fullres",
        0,
        options(
            schedule=Schedule(epochs=1, iterations_per_epoch=2, validation_iterations=1),
            validate=False,
            loggers=("mlflow",),
        ),
    )
    assert list(FakeMlflowClient.stores) == ["http://tracking.example:5000"]
    assert not (tiny_dataset.fold_dir("3d_fullres", 0) / "mlruns").exists()


def test_the_real_mlflow_writes_a_readable_run_that_a_resume_continues(tiny_dataset, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    interrupted_then_resumed(tiny_dataset, monkeypatch, ("mlflow",))
    fold = tiny_dataset.fold_dir("3d_fullres", 0)
    client = mlflow.MlflowClient(tracking_uri=(fold / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "Tiny/3d_fullres"]
    [run] = client.search_runs([experiment.experiment_id])  # one run, continued by the resume
    assert run.info.run_id == json.loads((fold / MLFLOW_RUN).read_text())["run_id"]
    assert set(run.data.metrics) == EPOCH_TAGS | FINAL_TAGS
    assert run.info.status == "FINISHED" and run.data.tags["fold"] == "0"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1]
