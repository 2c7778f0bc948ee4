"""The shared rules of toolkit/core and the one JSON reader: each rule once, tested once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from toolkit.core.constants import NUM_FOLDS
from toolkit.core.device import (
    auto_precision,
    autocast,
    describe_precision,
    native_bf16,
    resolve_device,
    resolve_precision,
)
from toolkit.core.labels import foreground_labels, one_hot, one_hot_batch, storage_dtype
from toolkit.core.splits import fold_numbers
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.json_files import float_or_nan, read_contract, read_json
from toolkit.workspace import DatasetPaths


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        (["fpu", "avx2", "avx512f"], False),
        (["avx2", "avx512_bf16"], True),
        (["avx2", "amx_tile", "amx_bf16"], True),
        ([], False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert native_bf16(flags) is native


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    avx2, amx = ["fpu", "avx2"], ["avx2", "amx_tile", "amx_bf16"]
    assert resolve_precision("auto", cpu, flags=avx2) == "fp32"
    assert resolve_precision("auto", cpu, flags=amx) == "bf16"
    assert resolve_precision("auto", cpu, flags=["avx512_bf16"]) == "bf16"
    assert resolve_precision("auto", cuda, flags=amx) == "fp16"
    assert resolve_precision("fp32", cpu, flags=amx) == "fp32"  # the user overrides auto
    assert auto_precision("cpu", None) == "fp32"  # flags unknown: the safe pick
    assert resolve_precision("auto", cpu) == "fp32"  # the suite pins an AVX2 CPU (conftest)
    assert describe_precision("auto", "bf16", cpu) == "bf16 (auto: this CPU computes bf16 natively)"
    assert describe_precision("auto", "fp32", cpu).startswith("fp32 (auto: no native bf16")
    assert describe_precision("fp32", "fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ToolkitError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ToolkitError, match="--precision must be one of auto, fp32"):
        resolve_precision("fp8", cpu)


def test_device_rules():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ToolkitError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_autocast_is_off_for_fp32_and_bf16_for_bf16():
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_label_rules():
    assert foreground_labels({"background": 0, "b": 2, "a": 1}) == [1, 2]
    assert foreground_labels([0, 3, 3, 1]) == [1, 3]
    labels = np.array([[0, 1], [2, 1]])
    assert one_hot(labels, [1, 2]).tolist() == [[[0, 1], [0, 1]], [[0, 0], [1, 0]]]
    batch = torch.as_tensor(labels)[None]
    assert one_hot_batch(batch, [1, 2], torch.float32).shape == (1, 2, 2, 2)
    assert [storage_dtype(t) for t in (3, 127, 128, 40000)] == [
        np.int8,
        np.int8,
        np.int16,
        np.int32,
    ]


def test_json_reader_errors_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "plans.json"
    with pytest.raises(MissingStageError, match="run `toolkit plan X` first"):
        read_json(path, what="plans", producer="toolkit plan X")
    path.write_text("{broken")
    with pytest.raises(
        ToolkitError, match=r"plans.json: is not valid JSON .* run `toolkit plan` again"
    ):
        read_json(path, what="plans", producer="toolkit plan")
    path.write_text("[1, 2]")
    with pytest.raises(ToolkitError, match="plans must hold a JSON object"):
        read_json(path, what="plans")
    path.write_text(json.dumps({"format_version": 7}))
    with pytest.raises(ToolkitError, match="plans format version 7 is not supported"):
        read_json(path, what="plans", version_key="format_version", version=1)
    with pytest.raises(ToolkitError, match=r"malformed plans \('x'\)"):
        read_contract(path, lambda data: data["x"], what="plans")
    assert float_or_nan(None) != float_or_nan(None) and float_or_nan(2) == 2.0


def test_folds_are_those_of_splits_json(tmp_path):
    paths = DatasetPaths(tmp_path / "Toy")
    paths.root.mkdir()
    assert fold_numbers(paths) == list(range(NUM_FOLDS))
    paths.splits_json.write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 3))
    assert fold_numbers(paths) == [0, 1, 2]
