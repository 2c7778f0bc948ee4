"""Commands of the inference stage: ``predict``, ``ensemble``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    DeviceOption,
    QuietOption,
    WaitOption,
    WorkspaceOption,
    parse_fold_list,
    parse_str_list,
    writing_into,
)


def predict(
    input_path: Path = typer.Option(
        ...,
        "--input",
        "-i",
        help="An image file (one channel, or every channel in one 4D file), CASE_0000 of a case's channel files, or a folder of them. Any format SimpleITK reads; 2D PNG/BMP/TIFF as nnU-Net v2 reads them (an RGB file is three channels).",
        show_default=False,
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Output folder (one CASE file per case, in the input's format), or a file name for a single case.",
        show_default=False,
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A trained model folder: models/CONFIG/ of a dataset, or a folder trained by nnU-Net v2 (Trainer__Plans__config).",
        show_default=False,
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="A dataset of the workspace; its selection.json (else 3d_fullres, else 2d) picks the models.",
        show_default=False,
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="With --dataset: configuration(s) to use, e.g. 3d_fullres or 2d,3d_fullres (an ensemble); a cascade runs its low-resolution stage first.",
        show_default=False,
    ),
    folds: str | None = typer.Option(
        None,
        "--folds",
        "-f",
        help="Folds to average, e.g. 0,1,2,3,4, or `all` (the model trained on every case, "
        "`toolkit train ... all`). Default: every trained numbered fold (or the selection's); "
        "fold_all alone when no numbered fold is trained.",
        show_default=False,
    ),
    workspace: Path | None = WorkspaceOption,
    device: str = DeviceOption,
    no_tta: bool = typer.Option(
        False,
        "--no-tta",
        help="No test-time mirroring (2^dims times faster, slightly less accurate).",
    ),
    save_probabilities: bool = typer.Option(
        False,
        "--save-probabilities",
        help="Also write CASE.npz: float16 softmax probabilities and the image geometry (for `toolkit ensemble`).",
    ),
    continue_prediction: bool = typer.Option(
        False,
        "--continue",
        help="Skip cases whose outputs are already there (label map, and the probabilities and "
        "preview when asked): an interrupted run over a folder resumes. Files are written "
        "atomically, so a case cut off mid-write is predicted again.",
    ),
    preview: bool = typer.Option(
        False,
        "--preview",
        help="Also write CASE_preview.png beside each CASE label map: the slice with the most "
        "foreground, the image (first channel) beside it with the prediction drawn in, one colour "
        "per class, a legend naming them. To look at results without a viewer.",
    ),
    step: float = typer.Option(
        0.5,
        "--step",
        min=0.05,
        max=1.0,
        help="Sliding-window step as a fraction of the patch size.",
    ),
    postprocess: Path | None = typer.Option(
        None,
        "--postprocess",
        help="A postprocessing JSON (as written by `toolkit select`) to apply to the labels.",
        show_default=False,
    ),
    checkpoint: str = typer.Option(
        "final", "--checkpoint", help="Which checkpoint of each fold: final, best or latest."
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (fp16 autocast on CUDA; on the CPU bf16 autocast where it computes bf16 natively, AVX-512 BF16 "
        "or AMX, else fp32), fp32, bf16 (autocast, CPU or CUDA) or fp16 (CUDA). With --backend "
        "openvino: auto (OpenVINO's choice: bf16 on CPUs with AMX or AVX-512 BF16), fp32, bf16 or "
        "fp16; with onnxruntime: auto or fp32 (both float32).",
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="What runs the networks: torch, openvino or onnxruntime (the last two need a model "
        "exported with `toolkit export-model --format onnx` and imported, and no torch). "
        "Default: torch for a model of checkpoints, the first installed of openvino and "
        "onnxruntime for a model of ONNX networks.",
        show_default=False,
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the networks (weights frozen on the CPU): after a one-time compile "
        "of 5-25 s, 5-15% faster per case for a full-size 3D network on a 2-core CPU, 1.6x for a "
        "small 2D one; for folders of many cases.",
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Segment new images with a trained model; labels are written with exactly the input's spacing, origin and direction.

    Sliding window with the training patch size and a Gaussian importance map, mirroring over
    every axis combination, the folds' logits averaged; a configuration ensemble averages
    probabilities.
    """
    from toolkit.inference.stage import PredictOptions, run_predict

    options = PredictOptions(
        folds=parse_fold_list(folds, "--folds"),
        checkpoint=checkpoint,
        device=device,
        use_mirroring=not no_tta,
        step_size=step,
        precision=precision,
        save_probabilities=save_probabilities,
        preview=preview,
        continue_prediction=continue_prediction,
        quiet=quiet,
        compile=compile,
        backend=backend,
    )
    # the dataset's writer lock only when the output lands inside a dataset's folder: a
    # prediction into another folder reads the model and never waits for a writer
    with writing_into(output, wait):
        run_predict(
            input_path,
            output,
            options,
            model,
            dataset,
            workspace,
            parse_str_list(config),
            postprocess,
        )


def ensemble(
    inputs: list[Path] = typer.Option(
        ...,
        "--input",
        "-i",
        help="A folder of CASE.npz probabilities (from --save-probabilities); give two or more.",
        show_default=False,
    ),
    more_inputs: list[Path] | None = typer.Argument(
        None,
        metavar="DIR...",
        help="More folders (so that `-i DIR1 DIR2 DIR3` works).",
        show_default=False,
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder for the ensembled label maps.", show_default=False
    ),
    postprocess: Path | None = typer.Option(
        None,
        "--postprocess",
        help="A postprocessing JSON to apply to the labels.",
        show_default=False,
    ),
    save_probabilities: bool = typer.Option(
        False, "--save-probabilities", help="Also write the averaged probabilities (CASE.npz)."
    ),
    file_ending: str = typer.Option(
        ".nii.gz",
        "--file-ending",
        help="Format of the label maps written (.nii.gz, .mha, .nrrd, ...).",
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Average saved probabilities of several predictions (e.g. 2d and 3d_fullres) case by case, and write the label maps.

    The argmax of the mean; for models trained on regions (their files say so), each region
    whose mean probability exceeds 0.5, written with its `regions_class_order` value.
    """
    from toolkit.inference.stage import run_ensemble

    with writing_into(output, wait):
        run_ensemble(
            [*inputs, *(more_inputs or [])],
            output,
            postprocess,
            save_probabilities,
            file_ending,
            quiet,
        )


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(predict)
    app.command(no_args_is_help=True)(ensemble)
