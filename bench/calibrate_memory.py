"""Calibrate the memory model: measured training memory of built networks vs the estimate.

    .venv/bin/python -m bench.calibrate_memory [--device auto|cpu|cuda] [--no-write]

Builds our networks for a grid of plans (2D and 3D, several patch sizes, widths and depths;
the plain U-Net and the residual-encoder U-Net of the ResEnc presets), runs one training step (forward + backward + SGD with momentum) and measures its memory:

* on CUDA: ``torch.cuda.max_memory_allocated`` of the step, weights included;
* on CPU: the bytes of every tensor autograd keeps for the backward pass (counted once per
  storage) plus weights, gradients and momentum (4 x parameters x 4 bytes). This is the part
  of the peak that scales with the plan; the allocator's slack is not in it.

Then fits ``bytes = a * feature_voxels * batch + b * parameters + c`` by least squares, where
``feature_voxels`` is the reference's feature-map count (``toolkit.planning.memory``), and
reports how well both the fit and the reference's proxy (a pure multiple of the count) track
the measurements. Writes ``bench/results/calibrate_memory.json`` and ``.md`` and, unless
``--no-write``, the fit to ``toolkit/planning/memory_calibration.json``, which
``toolkit plan --memory-model calibrated`` uses. The default memory model is not changed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from bench.harness import log, machine, markdown_table, write_results
from toolkit.core.plans import Architecture
from toolkit.io.atomic import write_json
from toolkit.nets.residual_unet import ResidualEncoderUNet
from toolkit.nets.unet import UNet
from toolkit.planning.memory import CALIBRATION_FILE
from toolkit.planning.planner import network_cost
from toolkit.planning.planners import get_planner
from toolkit.planning.topology import features_per_stage, pool_and_conv_props

IS_BENCHMARK = True
NAME = "calibrate_memory"
NUM_CLASSES = 3
IN_CHANNELS = 1

# (spacing, patch, features_base, max_features, batch[, planner]): small enough for a CPU,
# varied in shape; the planner's network family (default: the plain U-Net)
GRID = [
    ([1.0, 1.0, 1.0], [32, 32, 32], 8, 64, 2),
    ([1.0, 1.0, 1.0], [48, 48, 48], 8, 64, 2),
    ([1.0, 1.0, 1.0], [32, 48, 40], 16, 128, 2),
    ([1.0, 1.0, 1.0], [48, 64, 48], 16, 128, 1),
    ([3.0, 0.8, 0.8], [16, 64, 64], 16, 128, 2),
    ([1.0, 1.0, 1.0], [64, 64, 64], 8, 128, 1),
    ([1.0, 1.0, 1.0], [32, 32, 32], 32, 320, 2),
    ([1.0, 1.0], [128, 128], 16, 256, 4),
    ([1.0, 1.0], [192, 160], 16, 256, 2),
    ([1.0, 1.0], [256, 256], 8, 128, 4),
    ([1.0, 1.0], [96, 96], 32, 512, 8),
    ([1.0, 1.0, 1.0], [32, 32, 32], 8, 64, 2, "resenc-m"),
    ([1.0, 1.0, 1.0], [48, 48, 48], 8, 64, 1, "resenc-m"),
    ([3.0, 0.8, 0.8], [16, 64, 64], 16, 128, 2, "resenc-m"),
    ([1.0, 1.0], [128, 128], 16, 256, 4, "resenc-m"),
    ([1.0, 1.0], [192, 160], 8, 128, 2, "resenc-m"),
]
GRID_CUDA_EXTRA = [
    ([1.0, 1.0, 1.0], [128, 128, 128], 32, 320, 2),
    ([1.0, 1.0, 1.0], [96, 160, 160], 32, 320, 2),
    ([2.5, 0.8, 0.8], [40, 224, 224], 32, 320, 2),
    ([1.0, 1.0], [512, 512], 32, 512, 12),
    ([1.0, 1.0], [256, 256], 32, 512, 49),
    ([1.0, 1.0, 1.0], [128, 128, 128], 32, 320, 2, "resenc-m"),
    ([1.0, 1.0], [512, 512], 32, 512, 12, "resenc-m"),
]


def _architecture(spacing, patch, base, cap, planner="default") -> tuple[Architecture, list[int]]:
    topology = pool_and_conv_props(spacing, patch)
    n = topology.n_stages
    spec = get_planner(planner)
    residual = spec.network == "residual_encoder"
    arch = Architecture(
        features_per_stage=features_per_stage(n, base, cap),
        kernel_sizes=topology.kernel_sizes,
        strides=topology.strides,
        n_conv_per_stage=[] if residual else spec.encoder_blocks(n),
        n_conv_per_stage_decoder=spec.decoder_blocks(n),
        network=spec.network,
        n_blocks_per_stage=spec.encoder_blocks(n) if residual else [],
    )
    return arch, topology.patch_size


def _step(
    net: torch.nn.Module,
    batch: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> None:
    outputs = net(batch)
    loss = sum(
        torch.nn.functional.cross_entropy(
            o, torch.nn.functional.interpolate(target, o.shape[2:]).squeeze(1).long()
        )
        for o in outputs
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure_cpu(net: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor) -> float:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(net, batch, target, optimizer)
    params = sum(p.numel() for p in net.parameters())
    return float(sum(seen.values()) + 4 * params * 4)


def measure_cuda(net: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor) -> float:
    device = torch.device("cuda")
    net = net.to(device)
    batch, target = batch.to(device), target.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    _step(net, batch, target, optimizer)  # allocates the momentum buffers and warms cuDNN
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    _step(net, batch, target, optimizer)
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated())


def fit(rows: list[dict]) -> dict:
    a = np.array(
        [[r["feature_voxels"] * r["batch"], r["parameters"], 1.0] for r in rows], dtype=np.float64
    )
    y = np.array([r["measured_bytes"] for r in rows], dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    predicted = a @ coef
    rel = np.abs(predicted - y) / y
    # the reference's proxy: bytes proportional to the feature-map count alone
    proxy = np.array([r["feature_voxels"] * r["batch"] for r in rows], dtype=np.float64)
    scale = float((proxy @ y) / (proxy @ proxy))
    proxy_rel = np.abs(proxy * scale - y) / y
    for r, p in zip(rows, predicted, strict=True):
        r["predicted_bytes"] = float(p)
    return {
        "bytes_per_feature_voxel": float(coef[0]),
        "bytes_per_parameter": float(coef[1]),
        "constant_bytes": float(coef[2]),
        "relative_error": float(rel.max()),
        "mean_relative_error": float(rel.mean()),
        "reference_proxy_bytes_per_voxel": scale,
        "reference_proxy_max_relative_error": float(proxy_rel.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="do not update toolkit/planning/memory_calibration.json",
    )
    args = parser.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    grid = GRID + (GRID_CUDA_EXTRA if device == "cuda" else [])
    torch.manual_seed(0)
    rows = []
    for spacing, patch, base, cap, batch_size, *planner in grid:
        arch, patch = _architecture(spacing, patch, base, cap, *planner)
        dims = len(spacing)
        network_cls = ResidualEncoderUNet if arch.network == "residual_encoder" else UNet
        net = network_cls(IN_CHANNELS, NUM_CLASSES, arch, dims, deep_supervision=True)
        x = torch.randn(batch_size, IN_CHANNELS, *patch)
        target = torch.randint(0, NUM_CLASSES, (batch_size, 1, *patch)).float()
        start = time.perf_counter()
        measured = measure_cuda(net, x, target) if device == "cuda" else measure_cpu(net, x, target)
        voxels, params = network_cost(patch, arch, IN_CHANNELS, NUM_CLASSES)
        rows.append(
            {
                "network": arch.network,
                "dims": dims,
                "patch": patch,
                "features": arch.features_per_stage,
                "batch": batch_size,
                "feature_voxels": voxels,
                "parameters": params,
                "measured_bytes": measured,
                "seconds": time.perf_counter() - start,
            }
        )
        log(
            f"{patch} x{batch_size} features {arch.features_per_stage[0]}..{arch.features_per_stage[-1]}: {measured / 1e6:.0f} MB"
        )
        del net
    fitted = fit(rows)
    method = (
        "cuda max_memory_allocated of one training step"
        if device == "cuda"
        else "cpu: bytes of tensors saved for backward + 4 x parameter bytes (weights, grads, momentum, update)"
    )
    calibration = {
        "bytes_per_feature_voxel": fitted["bytes_per_feature_voxel"],
        "bytes_per_parameter": fitted["bytes_per_parameter"],
        "constant_bytes": fitted["constant_bytes"],
        "measured_on": f"{device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}); {method}",
        "num_measurements": len(rows),
        "relative_error": fitted["relative_error"],
    }
    result = {
        "machine": machine(),
        "device": device,
        "method": method,
        "fit": fitted,
        "measurements": rows,
    }
    if not args.no_write:
        write_json(CALIBRATION_FILE, {"fit": calibration, "source": "bench/calibrate_memory.py"})
        log(f"calibration written to {CALIBRATION_FILE}")
    table = markdown_table(
        [
            "network",
            "dims",
            "patch",
            "features",
            "batch",
            "feature voxels",
            "parameters",
            "measured MB",
            "fit MB",
            "fit error",
        ],
        [
            [
                r["network"],
                r["dims"],
                "x".join(map(str, r["patch"])),
                f"{r['features'][0]}..{r['features'][-1]}",
                r["batch"],
                r["feature_voxels"],
                r["parameters"],
                r["measured_bytes"] / 1e6,
                r["predicted_bytes"] / 1e6,
                f"{abs(r['predicted_bytes'] - r['measured_bytes']) / r['measured_bytes']:.1%}",
            ]
            for r in rows
        ],
    )
    markdown = "\n".join(
        [
            "# Memory model calibration",
            "",
            f"Device: {calibration['measured_on']}.",
            "",
            f"Fit: bytes = {fitted['bytes_per_feature_voxel']:.2f} x feature voxels x batch + "
            f"{fitted['bytes_per_parameter']:.2f} x parameters + {fitted['constant_bytes'] / 1e6:.1f} MB; "
            f"largest relative error {fitted['relative_error']:.1%} (mean {fitted['mean_relative_error']:.1%}). "
            f"The reference's proxy alone (bytes proportional to the feature-map count, best scale "
            f"{fitted['reference_proxy_bytes_per_voxel']:.2f} B/voxel) is off by up to "
            f"{fitted['reference_proxy_max_relative_error']:.1%}.",
            "",
            table,
        ]
    )
    write_results(NAME, result, markdown)
    print(markdown)
    if not math.isfinite(fitted["relative_error"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
