"""`toolkit predict --continue`: an interrupted run over a folder resumes where it stopped."""

import os

from inference_helpers import make_case, make_plans, save_model_dir
from test_predict_cli import run

from toolkit.io.images import write_image


def test_continue_predicts_only_the_cases_whose_outputs_are_missing(tmp_path, capsys):
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    model = save_model_dir(tmp_path / "m" / "3d_fullres", plans, "3d_fullres")
    for i in range(4):
        image, _, geometry = make_case(i, shape=(8, 24, 20))
        write_image(tmp_path / "in" / f"c{i}_0000.nii.gz", image, geometry)
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--model", str(model)]
    argv += ["--device", "cpu", "--no-tta", "--save-probabilities"]
    code, _, err = run([*argv, "-q"], capsys)
    assert code == 0, err
    reference = (out / "c1.nii.gz").read_bytes()

    # as an interrupted run leaves it: c0 complete (marked old), c1 without its label map, c2
    # with its label map but without the probabilities this run asks for, c3 cut off mid-file
    # (not by the toolkit, which writes atomically: a full disk, a copy)
    os.utime(out / "c0.nii.gz", (1, 1))
    (out / "c1.nii.gz").unlink()
    (out / "c2.npz").unlink()
    whole = (out / "c3.nii.gz").read_bytes()
    (out / "c3.nii.gz").write_bytes(whole[: len(whole) // 2])
    code, _, err = run([*argv, "--continue"], capsys)
    assert code == 0, err
    assert "predicted 3 case(s)" in err and "1 already complete, skipped (--continue)" in err
    assert (out / "c0.nii.gz").stat().st_mtime == 1  # left as it was
    assert (out / "c1.nii.gz").read_bytes() == reference
    assert (out / "c2.npz").is_file()
    assert (out / "c3.nii.gz").read_bytes() == whole

    # a preview asked for now is missing for every case: all are predicted again
    code, _, err = run([*argv, "--continue", "--preview"], capsys)
    assert code == 0, err
    assert "predicted 4 case(s)" in err and "skipped" not in err
    assert sorted(p.name for p in out.glob("*_preview.png")) == [
        f"c{i}_preview.png" for i in range(4)
    ]
