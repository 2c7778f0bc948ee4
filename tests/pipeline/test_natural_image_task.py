"""A natural-image task end to end through the CLI: demo-data's RGB PNG dataset (nnU-Net v2
raw layout) -> convert -> run-all --preset smoke (2d) -> predict, which writes PNG label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from pipeline_helpers import SMOKE_RUN_ALL_ARGS

from toolkit.cli import main

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    assert code == 0, f"{argv[0]} failed: {out.err[-2000:]}"
    return out.out


def test_rgb_png_task_converts_trains_and_predicts_png(tmp_path, capsys):
    source, workspace = tmp_path / "source", tmp_path / "ws"
    out = _run(
        ["demo-data", str(source), "--task", "rgb", "--cases", "6", "--test-cases", "2"], capsys
    )
    task = source / "Dataset920_SynthRGB"
    assert out.strip() == str(task)
    _run(["convert", str(task), "--workspace", str(workspace), "--quiet"], capsys)
    _run(
        ["run-all", "Dataset920_SynthRGB", "--workspace", str(workspace), *SMOKE_RUN_ALL_ARGS],
        capsys,
    )

    dataset = workspace / "Dataset920_SynthRGB"
    plans = json.loads((dataset / "plans.json").read_text())
    assert set(plans["configurations"]) == {"2d"}  # one slice: no 3D configuration
    config = plans["configurations"]["2d"]
    assert [n["scheme"] for n in config["normalization"]] == ["rgb_to_0_1"] * 3
    assert config["target_spacing"] == [999.0, 1.0, 1.0]
    assert (dataset / "selection.json").is_file()

    predictions = tmp_path / "pred"
    _run(
        [
            "predict",
            "-d",
            "Dataset920_SynthRGB",
            "-i",
            str(task / "imagesTs"),
            "-o",
            str(predictions),
            "--workspace",
            str(workspace),
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
    )
    written = sorted(p.name for p in predictions.iterdir())
    assert written == ["synthrgb_007.png", "synthrgb_008.png"]
    for name in written:
        path = predictions / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkUInt8 and image.GetSize() == (64, 64)
        assert image.GetNumberOfComponentsPerPixel() == 1
        assert set(np.unique(sitk.GetArrayFromImage(image))) <= {0, 1, 2}
