"""The initial weights as each tool draws them, over many seeds: are the two draws alike?

``bench/twin.py`` shows the toolkit's training step to be nnU-Net v2's, bit for bit, from
the same weights on the same batches; what is left between a toolkit run and an nnU-Net run
is the draw of the initial weights and of the batches. This compares the draws themselves,
``--draws`` seeds per tool, without training:

- nnU-Net's: ``torch.manual_seed(S)`` then its trainer's ``build_network_architecture``
  (as ``bench/lockstep_reference.py`` and ``bench/nnunet_v2_reference.py`` seed it);
- the toolkit's: ``torch.manual_seed(run_seed(S, "3d_fullres", 0))`` then
  :func:`toolkit.nets.build_network` of the toolkit's plan, as ``toolkit train --seed S``
  draws them, loaded into nnU-Net's network by :func:`convert_state_dict` (the twins show
  the two networks compute the same function of the same weights).

Per draw: every weight tensor's spread over the He initialisation's
(``sqrt(2 / (1 + 0.01^2) / fan_in)``), and on the first ``--batches`` training batches of
nnU-Net's loader (``twin/seed_B``, as ``bench/twin.py`` dumped them): nnU-Net's own loss
(Dice + cross-entropy with deep supervision), the mean foreground probability, the spread
of the logits, and the gradient norm of the first batch. Each quantity's two samples are
compared by Welch's t and the Mann-Whitney U test.

Runs with the Python that holds ``nnunetv2`` (it imports the toolkit's network code from
this repository)::

    bench/.venv-nnunet/bin/python -m bench.init_draw_stats --work bench/work/quality [--draws 20]

writes ``bench/results/init_draw_stats.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.init_swap import build_network, dataset_plans
from toolkit.nets.nnunet_v2_weights import convert_state_dict
from toolkit.training.job import run_seed
from toolkit.workspace import DatasetPaths

NAME = "init_draw_stats"
DATASET = "Dataset905_DeepGrey"
TASK = "Task905_DeepGrey"
CONFIGURATION = "3d_fullres"
SLOPE = 0.01  # the leaky ReLU's, which the He initialisation's gain takes
RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = ("nnunet", "toolkit")


def he_ratio(weight: torch.Tensor) -> float:
    """The tensor's standard deviation over the He initialisation's for its fan-in (torch's
    fan-in: dimension 1 times the kernel, for transposed convolutions too)."""
    fan_in = weight.shape[1] * weight[0, 0].numel()
    return float(weight.std()) / (math.sqrt(2.0 / (1.0 + SLOPE**2)) / math.sqrt(fan_in))


def nnunet_trainer(work: Path):
    os.environ.setdefault("nnUNet_raw", str(work / "nnunet" / "nnUNet_raw"))
    os.environ.setdefault("nnUNet_preprocessed", str(work / "nnunet" / "nnUNet_preprocessed"))
    os.environ.setdefault("nnUNet_results", str(work / NAME / "nnUNet_results"))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / DATASET
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans.setdefault("continue_training", False)
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, CONFIGURATION, 0, dataset, device=torch.device("cpu"))
    trainer.loss = trainer._build_loss()
    return trainer


def nnunet_network(trainer) -> torch.nn.Module:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    channels = determine_num_input_channels(
        trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json
    )
    return trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    )


def draw(trainer, tool: str, seed: int, plans) -> torch.nn.Module:
    """nnU-Net's network holding ``tool``'s initial weights of ``seed`` (``plans``: the
    toolkit's, for its draw)."""
    if tool == "nnunet":
        torch.manual_seed(seed)
        return nnunet_network(trainer)
    torch.manual_seed(run_seed(seed, CONFIGURATION, 0))
    ours = build_network(plans, plans.configuration(CONFIGURATION)).state_dict()
    network = nnunet_network(trainer)
    names = convert_state_dict({k: k for k in network.state_dict()})  # ours -> nnU-Net's
    network.load_state_dict({theirs: ours[k] for k, theirs in names.items()}, strict=False)
    loaded = convert_state_dict(network.state_dict())
    if not all(torch.equal(loaded[k], ours[k]) for k in ours):
        raise SystemExit("the toolkit's initial weights did not load into nnU-Net's network")
    return network


def batches(trainer, prefix: Path, count: int) -> list[tuple[torch.Tensor, list]]:
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )

    images = np.load(f"{prefix}_data.npy", mmap_mode="r")
    labels = np.load(f"{prefix}_target.npy", mmap_mode="r")
    downsample = DownsampleSegForDSTransform(ds_scales=trainer._get_deep_supervision_scales())
    out = []
    for k in range(count):
        seg = torch.from_numpy(np.array(labels[k]))
        per_sample = [downsample(segmentation=s)["segmentation"] for s in seg]
        targets = [torch.stack([p[i] for p in per_sample]) for i in range(len(per_sample[0]))]
        out.append((torch.from_numpy(np.array(images[k])), targets))
    return out


def measure(network: torch.nn.Module, trainer, data) -> dict:
    ratios = {
        name: he_ratio(p.detach())
        for name, p in network.named_parameters()
        if p.dim() >= 3 and "all_modules" not in name
    }
    losses, foreground, spread = [], [], []
    network.train()  # instance norm keeps no running statistics: train and eval agree
    for k, (image, targets) in enumerate(data):
        outputs = network(image)
        loss = trainer.loss(outputs, targets)
        if k == 0:
            loss.backward()
            grads = [p.grad.norm() for p in network.parameters() if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack(grads)))
        with torch.no_grad():
            probabilities = torch.softmax(outputs[0], 1)
            losses.append(float(loss))
            foreground.append(float(1.0 - probabilities[:, 0].mean()))
            spread.append(float(outputs[0].std()))
    return {
        "he_ratio": ratios,
        "loss": float(np.mean(losses)),
        "foreground_probability": float(np.mean(foreground)),
        "logit_sd": float(np.mean(spread)),
        "first_grad_norm": grad_norm,
    }


def compare(a: list[float], b: list[float]) -> dict:
    from scipy import stats

    welch = stats.ttest_ind(b, a, equal_var=False)
    return {
        "nnunet": [float(np.mean(a)), float(np.std(a, ddof=1))],
        "toolkit": [float(np.mean(b)), float(np.std(b, ddof=1))],
        "welch_t": float(welch.statistic),
        "welch_p": float(welch.pvalue),
        "mann_whitney_p": float(stats.mannwhitneyu(b, a).pvalue),
    }


def render(data: dict) -> str:
    lines = [
        "# The initial weights as each tool draws them",
        "",
        f"Machine: {data['machine']}, {data['date']}. Task `{TASK}` and plan as "
        "`bench/quality.py --plan cpu` prepared them (16-128 features, patch 28x32x40, five "
        f"classes). {data['draws']} draws per tool (seeds 0-{data['draws'] - 1}): nnU-Net's "
        "trainer seeded with S, `toolkit train --seed S`'s draw; both as nnU-Net's network. "
        f"Outputs on the first {data['batches']} training batches of nnU-Net's loader "
        f"(loader seed {data['batch_seed']}), no step taken. Each row: mean and standard "
        "deviation over the draws per tool, toolkit against nnU-Net by Welch's t and "
        "Mann-Whitney U.",
        "",
        "| quantity | nnU-Net's draws | the toolkit's draws | Welch t | p (Welch) | p (Mann-Whitney) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in data["outputs"].items():
        lines.append(
            f"| {name} | {c['nnunet'][0]:.4f} ± {c['nnunet'][1]:.4f} | "
            f"{c['toolkit'][0]:.4f} ± {c['toolkit'][1]:.4f} | {c['welch_t']:+.2f} | "
            f"{c['welch_p']:.2f} | {c['mann_whitney_p']:.2f} |"
        )
    lines += [
        "",
        "Spread of each weight tensor over the He initialisation's (1 is exact), per draw:",
        "",
        "| tensor (nnU-Net's name) | shape | nnU-Net's draws | the toolkit's draws | Welch t |",
        "|---|---|---|---|---|",
    ]
    for name, c in data["he_ratio"].items():
        lines.append(
            f"| `{name}` | {c['shape']} | {c['nnunet'][0]:.4f} ± {c['nnunet'][1]:.4f} | "
            f"{c['toolkit'][0]:.4f} ± {c['toolkit'][1]:.4f} | {c['welch_t']:+.2f} |"
        )
    worst = min(c["welch_p"] for c in [*data["outputs"].values(), *data["he_ratio"].values()])
    tests = len(data["outputs"]) + len(data["he_ratio"])
    lines += [
        "",
        f"Smallest p over the {tests} comparisons: {worst:.3f} (about {tests} x 0.05 = "
        f"{tests * 0.05:.1f} of them fall below 0.05 by chance alone when the draws are alike).",
        "",
        f"Reproduce: `bench/.venv-nnunet/bin/python -m bench.{NAME} --work WORK "
        f"--draws {data['draws']} --batches {data['batches']}` (WORK prepared by "
        "`python -m bench.quality --keep-prepared`, its batches by `python -m bench.twin`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="as bench/quality.py prepared it")
    parser.add_argument("--draws", type=int, default=20, help="seeds per tool")
    parser.add_argument("--batches", type=int, default=10, help="training batches per draw")
    parser.add_argument("--batch-seed", type=int, default=0, help="the dumped loader seed")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    torch.set_num_threads(1)
    trainer = nnunet_trainer(work)
    data = batches(trainer, work / "twin" / f"seed_{args.batch_seed}" / "batches", args.batches)
    plans = dataset_plans(DatasetPaths(work / "ws" / TASK))  # the toolkit's, read once
    measured = {tool: [] for tool in TOOLS}
    for seed in range(args.draws):
        for tool in TOOLS:
            measured[tool].append(measure(draw(trainer, tool, seed, plans), trainer, data))
        print(
            f"draw {seed}: " + ", ".join(f"{t} loss {measured[t][-1]['loss']:.4f}" for t in TOOLS)
        )
    outputs = {
        key: compare(*[[m[key] for m in measured[t]] for t in TOOLS])
        for key in ("loss", "foreground_probability", "logit_sd", "first_grad_norm")
    }
    shapes = {n: list(p.shape) for n, p in nnunet_network(trainer).named_parameters()}
    he = {}
    for name in measured["nnunet"][0]["he_ratio"]:
        he[name] = compare(*[[m["he_ratio"][name] for m in measured[t]] for t in TOOLS])
        he[name]["shape"] = "x".join(str(s) for s in shapes[name])
    result = {
        "machine": f"{os.cpu_count()} CPUs, load {[round(x, 2) for x in os.getloadavg()]}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "draws": args.draws,
        "batches": args.batches,
        "batch_seed": args.batch_seed,
        "outputs": outputs,
        "he_ratio": he,
        "per_draw": measured,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{NAME}.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
