"""The data commands as a user runs them: output lines, messages and exit codes."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.cli import main

SHAPE_ARGS = ["--task", "mr", "--cases", "3", "--test-cases", "1"]


def run(capsys, *args):
    """``toolkit ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from toolkit.synthetic import generate_task

    # smaller than the default, so the module stays fast
    return generate_task(
        "mr", tmp_path_factory.mktemp("src"), n_cases=3, n_test=1, shape=(10, 32, 32)
    )


def test_demo_data_prints_folders_and_needs_force_to_replace(capsys, tmp_path):
    code, out, err = run(
        capsys, "demo-data", tmp_path, "--task", "2d,ct", "--cases", "1", "--test-cases", "0"
    )
    assert code == 0, err
    assert out.splitlines() == [
        str(tmp_path / "Task903_Synth2D"),
        str(tmp_path / "Task902_SynthCT"),
    ]
    code, out, err = run(capsys, "demo-data", tmp_path, "--task", "2d", "--cases", "1")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == f"error: {tmp_path / 'Task903_Synth2D'}: exists; use --force to make it again"
    )
    assert run(capsys, "demo-data", tmp_path, "--task", "2d", "--cases", "1", "--force")[0] == 0


def test_demo_data_refuses_an_unknown_task(capsys, tmp_path):
    code, _, err = run(capsys, "demo-data", tmp_path, "--task", "pet")
    assert code == 2 and "unknown synthetic task 'pet'" in err


def test_convert_then_exists_then_verify(capsys, task, tmp_path):
    ws = tmp_path / "ws"
    code, out, err = run(capsys, "convert", task, "--workspace", ws, "-j", "1")
    assert code == 0, err
    assert f"converted 3 training and 1 test cases into {ws / task.name / 'raw'}" in " ".join(
        err.split()
    )
    assert "0 errors, 0 warnings" in err and out == ""
    dataset_json = ws / task.name / "raw" / "dataset.json"
    mtime = dataset_json.stat().st_mtime_ns
    code, out, err = run(capsys, "convert", task, "--workspace", ws)
    assert code == 0 and "dataset exists" in err and "--force" in " ".join(err.split())
    assert dataset_json.stat().st_mtime_ns == mtime
    code, out, err = run(capsys, "verify", task.name, "--workspace", ws)
    assert code == 0 and out == "" and "0 errors" in err
    assert run(capsys, "convert", task, "-w", ws, "--name", "Other", "--force", "-q")[0] == 0
    assert (ws / "Other" / "raw" / "dataset.json").is_file()


def _break_three_cases(raw):
    """The three breakages of the issue's "done when", one per case."""
    label = raw / "labelsTr" / "synthmr_001.nii.gz"  # spacing differs from its image's
    image = sitk.ReadImage(str(label))
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(label))
    label = raw / "labelsTr" / "synthmr_002.nii.gz"  # undeclared value
    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(image)
    array[array == 2] = 5
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(label))
    truncated = raw / "imagesTr" / "synthmr_003_0001.nii.gz"  # truncated image
    truncated.write_bytes(truncated.read_bytes()[:-200])


def test_verify_exits_2_with_one_line_per_broken_case(capsys, task, tmp_path):
    ws = tmp_path / "ws"
    assert run(capsys, "convert", task, "-w", ws, "-q")[0] == 0
    raw = ws / task.name / "raw"
    _break_three_cases(raw)
    code, out, err = run(capsys, "verify", task.name, "-w", ws)
    assert code == 2
    lines = out.splitlines()
    assert len(lines) == 3, out
    expected = [
        ("synthmr_001", raw / "labelsTr" / "synthmr_001.nii.gz", "spacing"),
        ("synthmr_002", raw / "labelsTr" / "synthmr_002.nii.gz", "label values 5 not declared"),
        ("synthmr_003", raw / "imagesTr" / "synthmr_003_0001.nii.gz", "truncated"),
    ]
    for line, (case, path, phrase) in zip(lines, expected, strict=True):
        assert line.startswith(f"error: case {case}: {path}: ") and phrase in line
    assert "3 errors in 3 cases" in " ".join(err.split())
    assert "Traceback" not in out + err


def test_warning_only_exits_0(capsys, task, tmp_path):
    ws = tmp_path / "ws"
    assert run(capsys, "convert", task, "-w", ws, "-q")[0] == 0
    label = ws / task.name / "raw" / "labelsTr" / "synthmr_002.nii.gz"
    image = sitk.ReadImage(str(label))
    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(label))
    code, out, err = run(capsys, "verify", task.name, "-w", ws)
    assert code == 0 and out.startswith("warning: case synthmr_002: ") and "no foreground" in out


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["convert", "/nonexistent/Task05_Prostate"], "/nonexistent/Task05_Prostate: not found"),
        (["verify", "Nothing"], "run `toolkit convert"),
        (["convert", "{task}", "--name", "../up"], "dataset name '../up'"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(capsys, task, tmp_path, args, phrase):
    args = [a.replace("{task}", str(task)) for a in args]
    code, out, err = run(capsys, *args, "-w", tmp_path / "ws")
    assert code == 2 and err.startswith("error: ") and phrase in err and "Traceback" not in err


def test_malicious_archive_via_the_command(capsys, tmp_path):
    archive = tmp_path / "Task09_Evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("Task09_Evil/../../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    code, _, err = run(capsys, "convert", archive, "-w", tmp_path / "ws")
    assert code == 2 and "refusing to unpack" in err and "'..' component" in err
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_help_texts(capsys):
    for command, option in [
        ("convert", "--force"),
        ("verify", "--no-cache"),
        ("demo-data", "--seed"),
    ]:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and option in out


def test_python_dash_m_entry_point(task, tmp_path):
    ws = tmp_path / "ws"
    env = {**os.environ, "TOOLKIT_WORKSPACE": str(ws)}
    ok = subprocess.run(
        [sys.executable, "-m", "toolkit", "convert", str(task), "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    _break_three_cases(ws / task.name / "raw")
    bad = subprocess.run(
        [sys.executable, "-m", "toolkit", "verify", task.name],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stdout.splitlines()) == 3
    assert (
        bad.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in bad.stderr
    )
