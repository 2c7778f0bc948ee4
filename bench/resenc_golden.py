"""Goldens of nnU-Net v2 2.8.1's residual-encoder presets, produced by running the reference.

Two halves in one file, run by two Pythons:

* ``python -m bench.resenc_golden`` (the project's venv) writes the golden fingerprints of
  ``tests/planning/planning_golden.py`` in nnU-Net's layout, runs the other half with the
  reference's Python, and writes ``tests/planning/resenc_golden.json``: the plans of
  ``ExperimentPlanner`` and ``nnUNetPlannerResEnc{M,L,XL}`` for each fingerprint (their own
  memory targets, and a few other ``gpu_memory_target_in_gb``), and for two planned
  networks the ``ResidualEncoderUNet`` parameter names and shapes, its state dict's size,
  parameter count and ``compute_conv_feature_map_size``.
* ``bench/.venv-nnunet/bin/python bench/resenc_golden.py reference --input DIR`` (the
  reference's venv, nnunetv2 and dynamic-network-architectures installed) does the planning
  and network building; ``... forward --arch JSON --out FILE.pt`` builds one
  ``ResidualEncoderUNet`` with seeded random weights and saves its state dict, an input and
  its output (``tests/nets/test_residual_unet.py`` compares ours on them).

The reference's Python is ``$TOOLKIT_NNUNET_PYTHON``, else ``bench/.venv-nnunet/bin/python``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_FILE = REPO / "tests" / "planning" / "resenc_golden.json"

# our planner name -> the reference's class
REFERENCE_PLANNERS = {
    "default": "ExperimentPlanner",
    "resenc-m": "nnUNetPlannerResEncM",
    "resenc-l": "nnUNetPlannerResEncL",
    "resenc-xl": "nnUNetPlannerResEncXL",
}
# (fingerprint, planner, gpu memory GB) beyond each planner's own target
EXTRA_BUDGETS = [
    ("hippocampus", "resenc-l", 8.0),
    ("large_ct", "resenc-m", 24.0),
    ("large_ct", "resenc-xl", 16.0),
    ("thick_slices", "resenc-l", 12.0),
]
# (fingerprint, planner, configuration) whose network is built for the state-dict golden
NETWORKS = [
    ("hippocampus", "resenc-m", "3d_fullres"),
    ("two_dimensional", "resenc-l", "2d"),
]
CONFIG_FIELDS = (
    "data_identifier",
    "batch_size",
    "patch_size",
    "median_image_size_in_voxels",
    "spacing",
    "normalization_schemes",
    "use_mask_for_norm",
    "batch_dice",
    "resampling_fn_data_kwargs",
    "resampling_fn_seg_kwargs",
    "resampling_fn_probabilities_kwargs",
    "next_stage",
    "previous_stage",
    "inherits_from",
)
ARCH_FIELDS = (
    "n_stages",
    "features_per_stage",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
)


def reference_python() -> Path:
    default = REPO / "bench" / ".venv-nnunet" / "bin" / "python"
    return Path(os.environ.get("TOOLKIT_NNUNET_PYTHON", default))


# --------------------------------------------------------------------------- our side


def _write_fingerprints(folder: Path) -> list[str]:
    sys.path.insert(0, str(REPO / "tests" / "planning"))
    import planning_golden as golden

    names = sorted(
        {name for name, (build, *_rest) in golden.GOLDEN.items() if build.__name__ == name}
    )
    for name in names:
        fp = getattr(golden, name)()
        target = folder / name
        target.mkdir(parents=True)
        stats = {
            str(c): {
                "mean": s.mean,
                "std": s.std,
                "median": s.median,
                "min": s.min,
                "max": s.max,
                "percentile_00_5": s.percentile_00_5,
                "percentile_99_5": s.percentile_99_5,
            }
            for c, s in enumerate(fp.intensity)
        }
        (target / "dataset_fingerprint.json").write_text(
            json.dumps(
                {
                    "spacings": fp.spacings,
                    "shapes_after_crop": fp.shapes_after_crop,
                    "median_relative_size_after_cropping": fp.median_relative_size_after_cropping,
                    "foreground_intensity_properties_per_channel": stats,
                }
            )
        )
        (target / "dataset.json").write_text(
            json.dumps(
                {
                    "channel_names": fp.channel_names,
                    "labels": fp.labels,
                    "numTraining": fp.num_training,
                    "file_ending": ".nii.gz",
                    "dataset": {},  # no files: the planner reads the fingerprint only
                }
            )
        )
    return names


def make_golden() -> None:
    python = reference_python()
    if not python.is_file():
        raise SystemExit(f"no reference Python at {python}: set TOOLKIT_NNUNET_PYTHON")
    with tempfile.TemporaryDirectory() as tmp:
        _write_fingerprints(Path(tmp))
        out = Path(tmp) / "golden.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [str(python), __file__, "reference", "--input", tmp, "--output", str(out)],
            check=True,
            env=env,
        )
        golden = json.loads(out.read_text())
        GOLDEN_FILE.write_text(json.dumps(golden, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}")


# --------------------------------------------------------------------------- the reference's side


def _set_paths(root: Path) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    os.environ["nnUNet_n_proc_DA"] = "1"


def _plan(root: Path, fingerprint: Path, planner_name: str, gpu_gb: float | None) -> dict:
    import shutil

    import nnunetv2
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    name = "Dataset990_Golden"
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        target = root / sub / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
    shutil.copy(fingerprint / "dataset.json", root / "nnUNet_raw" / name / "dataset.json")
    shutil.copy(
        fingerprint / "dataset_fingerprint.json",
        root / "nnUNet_preprocessed" / name / "dataset_fingerprint.json",
    )
    cls = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "experiment_planning"),
        REFERENCE_PLANNERS[planner_name],
        current_module="nnunetv2.experiment_planning",
    )
    default_experiment_planner.get_filenames_of_train_images_and_targets = lambda *a, **k: {}
    kwargs = {} if gpu_gb is None else {"gpu_memory_target_in_gb": gpu_gb}
    planner = cls(name, **kwargs)
    planner.determine_reader_writer = lambda: SimpleITKIO
    plans = planner.plan_experiment()
    configurations = {}
    for cname, config in plans["configurations"].items():
        entry = {k: config[k] for k in CONFIG_FIELDS if k in config}
        if "architecture" in config:
            arch = config["architecture"]
            entry["network_class_name"] = arch["network_class_name"]
            entry["arch_kwargs"] = {
                k: arch["arch_kwargs"][k] for k in ARCH_FIELDS if k in arch["arch_kwargs"]
            }
        configurations[cname] = entry
    return {
        "planner_class": plans["experiment_planner_used"],
        "plans_name": plans["plans_name"],
        "gpu_memory_target_in_gb": planner.UNet_vram_target_GB,
        "transpose_forward": plans["transpose_forward"],
        "original_median_spacing_after_transp": plans["original_median_spacing_after_transp"],
        "original_median_shape_after_transp": plans["original_median_shape_after_transp"],
        "configurations": configurations,
    }


def _network(plan: dict, configuration: str, fingerprint: Path) -> dict:
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    dataset = json.loads((fingerprint / "dataset.json").read_text())
    kw = plan["configurations"][configuration]["arch_kwargs"]
    dims = len(kw["kernel_sizes"][0])
    in_channels, classes = len(dataset["channel_names"]), len(dataset["labels"])
    net = _build_reference(kw, dims, in_channels, classes)
    patch = plan["configurations"][configuration]["patch_size"]
    return {
        "fingerprint": fingerprint.name,
        "configuration": configuration,
        "input_channels": in_channels,
        "num_classes": classes,
        "arch_kwargs": kw,
        "patch_size": patch,
        "feature_map_size": int(net.compute_conv_feature_map_size(patch)),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        # its parameters under their first names (torch drops the repeats: the alias names
        # `all_modules.N` and `decoder.encoder.*` of the same tensors); the state dict holds both
        "parameter_shapes": [[k, list(v.shape)] for k, v in net.named_parameters()],
        "state_dict_entries": len(net.state_dict()),
        "class": f"{ResidualEncoderUNet.__module__}.{ResidualEncoderUNet.__name__}",
        "torch": torch.__version__,
    }


def _build_reference(
    kw: dict, dims: int, in_channels: int, classes: int, deep_supervision: bool = False
):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from torch import nn

    return ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=len(kw["features_per_stage"]),
        features_per_stage=kw["features_per_stage"],
        conv_op=nn.Conv3d if dims == 3 else nn.Conv2d,
        kernel_sizes=kw["kernel_sizes"],
        strides=kw["strides"],
        n_blocks_per_stage=kw["n_blocks_per_stage"],
        num_classes=classes,
        n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
        conv_bias=True,
        norm_op=nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )


def reference(args: argparse.Namespace) -> None:
    import warnings

    warnings.simplefilter("ignore")
    source = Path(args.input)
    fingerprints = sorted(p for p in source.iterdir() if (p / "dataset_fingerprint.json").is_file())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _set_paths(root)
        plans: dict = {}
        for fp in fingerprints:
            for planner in REFERENCE_PLANNERS:
                plans.setdefault(fp.name, {})[f"{planner}@default"] = _plan(root, fp, planner, None)
        for name, planner, gpu in EXTRA_BUDGETS:
            plans[name][f"{planner}@{gpu:g}"] = _plan(root, source / name, planner, gpu)
        networks = [
            _network(plans[name][f"{planner}@default"], configuration, source / name)
            for name, planner, configuration in NETWORKS
        ]
    from importlib.metadata import version

    Path(args.output).write_text(
        json.dumps(
            {
                "reference": f"nnunetv2 {version('nnunetv2')}, dynamic-network-architectures {version('dynamic_network_architectures')}",
                "source": "bench/resenc_golden.py",
                "plans": plans,
                "networks": networks,
            }
        )
    )


def forward(args: argparse.Namespace) -> None:
    """Seeded random weights (norm affines too, so no block is a plain skip), one input, its output."""
    import torch

    spec = json.loads(Path(args.arch).read_text())
    kw = spec["arch_kwargs"]
    dims = len(kw["kernel_sizes"][0])
    torch.manual_seed(args.seed)
    net = _build_reference(
        kw, dims, spec["input_channels"], spec["num_classes"], deep_supervision=True
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    net.eval()
    x = torch.randn(2, spec["input_channels"], *spec["patch_size"])
    with torch.no_grad():
        outputs = net(x)
    torch.save(
        {"state_dict": net.state_dict(), "input": x, "outputs": list(outputs)},
        args.out,
    )
    print("RESULT " + json.dumps({"outputs": [list(o.shape) for o in outputs]}), flush=True)


def main() -> None:
    if len(sys.argv) == 1:
        make_golden()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "reference", help="plan the fingerprints and build the networks (reference venv)"
    )
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.set_defaults(func=reference)
    f = sub.add_parser(
        "forward", help="a ResidualEncoderUNet's weights, input and output (reference venv)"
    )
    f.add_argument(
        "--arch", required=True, help="JSON: arch_kwargs, input_channels, num_classes, patch_size"
    )
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=forward)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
