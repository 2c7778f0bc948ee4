import numpy as np
import pytest
import SimpleITK as sitk
from inference_helpers import make_case, make_plans, save_model_dir

from toolkit.cli import main
from toolkit.inference.ensemble import load_probabilities, save_probabilities
from toolkit.io.images import Geometry, read_image, write_image


def run(argv, capsys):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def dataset(workspace):
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0), channels=2)
    save_model_dir(workspace / "Synth" / "models" / "3d_fullres", plans, "3d_fullres", folds=(0, 1))
    (workspace / "Synth" / "raw").mkdir(parents=True)
    return workspace / "Synth"


def test_predict_keeps_the_exact_geometry_of_a_rotated_anisotropic_case(tmp_path, capsys):
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    model = save_model_dir(tmp_path / "m" / "3d_fullres", plans, "3d_fullres")
    image, _, geometry = make_case(1, shape=(11, 33, 27), spacing_zyx=(3.7, 0.75, 0.6))
    source = tmp_path / "in" / "pat.nrrd"
    write_image(source, image, geometry)
    code, _, err = run(
        [
            "predict",
            "-i",
            str(source),
            "-o",
            str(tmp_path / "out.nii.gz"),
            "--model",
            str(model),
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    original = sitk.ReadImage(str(source))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
    assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-6)
    assert np.allclose(written.GetDirection(), original.GetDirection(), atol=1e-9)
    assert original.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_predict_a_folder_with_a_dataset_and_channel_files(tmp_path, dataset, capsys):
    for i in range(2):
        image, _, geometry = make_case(i)
        write_image(tmp_path / "in" / f"c{i}_0000.nii.gz", image, geometry)
        write_image(tmp_path / "in" / f"c{i}_0001.nii.gz", image * 0.5, geometry)
    (tmp_path / "in" / "._c0_0000.nii.gz").write_bytes(
        b"\x00\x05\x16\x07 junk"
    )  # macOS junk is skipped
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "-d",
            "Synth",
            "--folds",
            "1",
            "--no-tta",
            "--save-probabilities",
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "c0.nii.gz",
        "c0.npz",
        "c1.nii.gz",
        "c1.npz",
    ]


def test_wrong_channel_count_is_one_line(tmp_path, dataset, capsys):
    image, _, geometry = make_case(0)
    write_image(tmp_path / "in" / "c0_0000.nii.gz", image, geometry)
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "-d",
            "Synth",
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("error: ") and "needs 2 channel(s)" in err


def test_unreadable_file_is_one_line(tmp_path, dataset, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    code, _, err = run(
        [
            "predict",
            "-i",
            str(bad),
            "-o",
            str(tmp_path / "out"),
            "-d",
            "Synth",
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert (
        code == 2
        and err.strip().count("\n") == 0
        and "unreadable image" in err
        and "broken.nii.gz" in err
    )


def test_four_d_file_with_wrong_channels_is_one_line(tmp_path, dataset, capsys):
    image, _, _ = make_case(0)
    four = sitk.JoinSeries([sitk.GetImageFromArray(image)] * 3)
    sitk.WriteImage(four, str(tmp_path / "x.nii.gz"))
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path / "x.nii.gz"),
            "-o",
            str(tmp_path / "o"),
            "-d",
            "Synth",
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "holds 3 channel(s) but the model needs 2" in err


def test_four_d_file_is_split_into_channels(tmp_path, dataset, capsys):
    image, _, geometry = make_case(0)
    four = sitk.JoinSeries([sitk.GetImageFromArray(image), sitk.GetImageFromArray(image * 0.5)])
    four.SetSpacing((*geometry.spacing, 1.0))
    sitk.WriteImage(four, str(tmp_path / "x.nii.gz"))
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path / "x.nii.gz"),
            "-o",
            str(tmp_path / "o"),
            "-d",
            "Synth",
            "--no-tta",
            "--device",
            "cpu",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    out = sitk.ReadImage(str(tmp_path / "o" / "x.nii.gz"))
    assert out.GetSize() == geometry.size and np.allclose(out.GetSpacing(), geometry.spacing)


def test_model_and_dataset_are_exclusive(tmp_path, dataset, capsys):
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "-d",
            "Synth",
            "--model",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2 and "either --model DIR or --dataset NAME" in err
    code, _, err = run(
        [
            "predict",
            "-i",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "-d",
            "Synth",
            "--config",
            "3d_lowres",
        ],
        capsys,
    )
    assert code == 2 and "toolkit train Synth 3d_lowres" in err


def test_ensemble_averages_saved_probabilities(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _, _, geometry = make_case(1, shape=(4, 6, 5))
    mean = np.zeros((3, 4, 6, 5), np.float32)
    for name in ("a", "b", "c"):
        p = rng.dirichlet([1, 1, 1], size=(4, 6, 5)).transpose(3, 0, 1, 2).astype(np.float32)
        save_probabilities(tmp_path / name / "case1.npz", p, geometry)
        mean += p.astype(np.float16).astype(np.float32) / 3
    code, _, err = run(
        [
            "ensemble",
            "-i",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "-i",
            str(tmp_path / "c"),
            "-o",
            str(tmp_path / "out"),
            "--save-probabilities",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    labels, read_geometry = read_image(tmp_path / "out" / "case1.nii.gz")
    assert np.array_equal(labels, mean.argmax(0))
    assert read_geometry.matches(geometry) is None
    assert np.allclose(
        load_probabilities(tmp_path / "out" / "case1.npz").probabilities, mean, atol=2e-3
    )


def test_ensemble_geometry_from_a_label_beside_foreign_probabilities(tmp_path, capsys):
    _, label, geometry = make_case(3, shape=(4, 6, 5))
    for name in ("a", "b"):
        probabilities = np.stack([label == v for v in range(3)]).astype(np.float32)
        (tmp_path / name).mkdir()
        np.savez_compressed(
            tmp_path / name / "x.npz", probabilities=probabilities
        )  # no geometry inside
        write_image(tmp_path / name / "x.nii.gz", label, geometry)
    code, _, err = run(
        [
            "ensemble",
            "-i",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "-o",
            str(tmp_path / "out"),
            "--file-ending",
            ".mha",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    labels, read_geometry = read_image(tmp_path / "out" / "x.mha")
    assert np.array_equal(labels, label) and read_geometry.matches(geometry) is None


def test_ensemble_reports_a_missing_case(tmp_path, capsys):
    _, _, geometry = make_case(1, shape=(4, 6, 5))
    p = np.full((3, 4, 6, 5), 1 / 3, np.float32)
    save_probabilities(tmp_path / "a" / "one.npz", p, geometry)
    save_probabilities(tmp_path / "a" / "two.npz", p, geometry)
    save_probabilities(tmp_path / "b" / "one.npz", p, geometry)
    code, _, err = run(
        ["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "has no probabilities for 1 case(s): two" in err
    assert Geometry.from_dict(geometry.to_dict()) == geometry


@pytest.mark.parametrize("flag, compiled", [(None, False), ("--compile", True)])
def test_compile_only_when_asked(tmp_path, capsys, monkeypatch, flag, compiled):
    import toolkit.inference.compiled as compiled_module

    wrapped = []

    class Spy(compiled_module.CompiledNetwork):  # compiles nothing: runs the network eagerly
        def __init__(self, network, device):
            compiled_module.nn.Module.__init__(self)
            self.network, self.failed, self.spatial_dims = network, None, 3
            wrapped.append(network)

        def forward(self, x):
            return self.network(x)

    monkeypatch.setattr(compiled_module, "CompiledNetwork", Spy)
    monkeypatch.setattr(compiled_module, "compile_unavailable_reason", lambda device: None)
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    model = save_model_dir(tmp_path / "m" / "3d_fullres", plans, "3d_fullres", folds=(0, 1))
    for i in range(3):
        image, _, geometry = make_case(i, shape=(6, 20, 20))
        write_image(tmp_path / "in" / f"case{i}.nii.gz", image, geometry)
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    argv += ["--model", str(model), "--device", "cpu", "--no-tta"] + ([flag] if flag else [])
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert len(wrapped) == (2 if compiled else 0)  # one per fold
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 3
