"""Drive nnU-Net v2 (the reference) through its Python API: plan, preprocess, train briefly, predict.

Runs with the Python of the venv that holds ``nnunetv2`` (``bench/.venv-nnunet``), never with
the project's: the two tools need different torch builds. ``tests/inference`` and
``bench/predict.py`` call it as a subprocess::

    bench/.venv-nnunet/bin/python bench/nnunet_v2_reference.py prepare --root DIR --raw RAW --dataset-id 990 \
        --name Synth --configurations 3d_fullres --width-divisor 4
    ... train --root DIR --dataset-id 990 --configuration 3d_fullres --fold 0 --epochs 1 --iterations 40
    ... predict --model MODEL_DIR --input IMAGES --output OUT --folds 0 [--no-tta] [--save-probabilities]

``prepare --planner nnUNetPlannerResEncM`` plans with a residual-encoder preset (its plans
identifier, e.g. ``nnUNetResEncUNetMPlans``, is in the result); ``train --plans`` names the
plans identifier to train.

``RAW`` is a folder in nnU-Net v2's raw layout (which is also our converted layout):
``dataset.json``, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``. ``--width-divisor``
narrows the planned network (features per stage divided, at least 4) so that a CPU trains it
in minutes; the topology, patch size and everything else stay as nnU-Net planned them.
Each command prints one JSON line with what it produced and how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _set_paths(root: Path, augmentation_processes: int = 1) -> None:
    # nnU-Net reads its folders from the environment when it is imported
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    # 0 = augmentation in the main process (training); planning needs a positive thread count
    os.environ["nnUNet_n_proc_DA"] = str(augmentation_processes)
    os.environ.setdefault("nnUNet_compile", "false")


def _dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _find_dataset(root: Path, dataset_id: int) -> str:
    matches = sorted((root / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"))
    if not matches:
        raise SystemExit(f"no dataset {dataset_id} under {root / 'nnUNet_raw'}: run prepare first")
    return matches[0].name


def prepare(args: argparse.Namespace) -> dict:
    root = Path(args.root).resolve()
    _set_paths(root)
    target = root / "nnUNet_raw" / _dataset_name(args.dataset_id, args.name)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(Path(args.raw), target)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    start = time.perf_counter()
    extract_fingerprints(
        [args.dataset_id],
        num_processes=args.processes,
        check_dataset_integrity=True,
        clean=True,
        verbose=False,
    )
    # a smaller budget plans smaller patches (and topologies to match)
    plans_name = plan_experiments(
        [args.dataset_id],
        experiment_planner_class_name=args.planner,
        gpu_memory_target_in_gb=args.gpu_memory or None,
    )
    plans_file = root / "nnUNet_preprocessed" / target.name / f"{plans_name}.json"
    plans = json.loads(plans_file.read_text())
    if args.network:  # a plan made elsewhere (e.g. the toolkit's cpu preset) for 3d_fullres
        network = json.loads(Path(args.network).read_text())
        config = plans["configurations"]["3d_fullres"]
        config["patch_size"] = network["patch_size"]
        config["batch_size"] = network["batch_size"]
        kwargs = config["architecture"]["arch_kwargs"]
        kwargs["n_stages"] = len(network["features_per_stage"])
        for key in (
            "features_per_stage",
            "kernel_sizes",
            "strides",
            "n_conv_per_stage",
            "n_conv_per_stage_decoder",
        ):
            kwargs[key] = network[key]
        plans_file.write_text(json.dumps(plans, indent=2))
    if args.width_divisor > 1:
        for config in plans["configurations"].values():
            arch = config.get("architecture")
            if arch is None:
                continue
            kwargs = arch["arch_kwargs"]
            kwargs["features_per_stage"] = [
                max(4, f // args.width_divisor) for f in kwargs["features_per_stage"]
            ]
        plans_file.write_text(json.dumps(plans, indent=2))
    configurations = [c for c in args.configurations.split(",") if c]
    preprocess(
        [args.dataset_id],
        plans_identifier=plans_name,
        configurations=configurations,
        num_processes=[args.processes] * len(configurations),
        verbose=False,
    )
    return {
        "dataset": target.name,
        "plans": str(plans_file),
        "plans_name": plans_name,
        "configurations": {c: plans["configurations"][c].get("patch_size") for c in configurations},
        "seconds": time.perf_counter() - start,
    }


def train(args: argparse.Namespace) -> dict:
    root = Path(args.root).resolve()
    _set_paths(root, augmentation_processes=0)
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.manual_seed(args.seed)
    dataset = _find_dataset(root, args.dataset_id)
    plans_file = root / "nnUNet_preprocessed" / dataset / f"{args.plans}.json"
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((root / "nnUNet_preprocessed" / dataset / "dataset.json").read_text())
    plans["continue_training"] = False  # what its own command line adds
    trainer = nnUNetTrainer(
        plans=plans,
        configuration=args.configuration,
        fold=args.fold,
        dataset_json=dataset_json,
        device=torch.device(args.device),
    )
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = max(1, args.iterations // 5)
    start = time.perf_counter()
    trainer.run_training()
    model_dir = Path(trainer.output_folder).parent
    curve = trainer.logger.get_value("dice_per_class_or_region", None)
    losses = trainer.logger.get_value("train_losses", None)
    return {
        "model": str(model_dir),
        "seconds": time.perf_counter() - start,
        # per epoch: pseudo-Dice per class on its validation batches, mean training loss
        "pseudo_dice": [[float(v) for v in epoch] for epoch in curve],
        "train_loss": [float(v) for v in losses],
    }


def predict(args: argparse.Namespace) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    predictor = nnUNetPredictor(
        tile_step_size=args.step,
        use_gaussian=True,
        use_mirroring=not args.no_tta,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    folds = tuple(int(f) for f in args.folds.split(","))
    predictor.initialize_from_trained_model_folder(
        args.model, use_folds=folds, checkpoint_name=args.checkpoint
    )
    start = time.perf_counter()
    predictor.predict_from_files(
        args.input,
        args.output,
        save_probabilities=args.save_probabilities,
        overwrite=True,
        num_processes_preprocessing=args.processes,
        num_processes_segmentation_export=args.processes,
    )
    seconds = time.perf_counter() - start
    cases = sorted(p.name for p in Path(args.output).iterdir() if p.name.endswith(".nii.gz"))
    return {
        "cases": len(cases),
        "seconds": seconds,
        "mirror_axes": list(predictor.allowed_mirroring_axes or ()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="copy a raw dataset in, fingerprint, plan and preprocess it")
    p.add_argument(
        "--root", required=True, help="folder for nnUNet_raw, nnUNet_preprocessed, nnUNet_results"
    )
    p.add_argument("--raw", required=True, help="dataset folder in nnU-Net v2's raw layout")
    p.add_argument("--dataset-id", type=int, required=True)
    p.add_argument("--name", default="Synth")
    p.add_argument("--configurations", default="3d_fullres")
    p.add_argument("--width-divisor", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=0.0, help="memory target in GB (0: default)")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument(
        "--planner",
        default="ExperimentPlanner",
        help="the reference's planner class, e.g. nnUNetPlannerResEncM",
    )
    p.add_argument(
        "--network",
        default="",
        help="JSON with patch_size, batch_size and the architecture lists to plan 3d_fullres with",
    )
    p.set_defaults(func=prepare)

    t = sub.add_parser("train", help="train one fold briefly with nnUNetTrainer")
    t.add_argument("--root", required=True)
    t.add_argument("--dataset-id", type=int, required=True)
    t.add_argument("--configuration", default="3d_fullres")
    t.add_argument(
        "--plans", default="nnUNetPlans", help="plans identifier, e.g. nnUNetResEncUNetMPlans"
    )
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--iterations", type=int, default=50)
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--validate", action="store_true", help="run the final validation of the fold")
    t.set_defaults(func=train)

    r = sub.add_parser("predict", help="predict a folder of CASE_0000 images with nnUNetPredictor")
    r.add_argument(
        "--model", required=True, help="trained model folder (Trainer__Plans__configuration)"
    )
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--folds", default="0")
    r.add_argument("--checkpoint", default="checkpoint_final.pth")
    r.add_argument("--no-tta", action="store_true")
    r.add_argument("--save-probabilities", action="store_true")
    r.add_argument("--step", type=float, default=0.5)
    r.add_argument("--device", default="cpu")
    r.add_argument("--processes", type=int, default=1)
    r.add_argument("--threads", type=int, default=0)
    r.set_defaults(func=predict)

    args = parser.parse_args(argv)
    result = args.func(args)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
