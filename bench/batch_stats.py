"""What a training batch holds, the toolkit's against nnU-Net v2's, on the same data and plan.

Both tools draw training batches from the same preprocessed task (``bench/anatomy.py``'s,
prepared as ``bench/quality.py`` does: nnU-Net's plan, also the toolkit's, the same split):
nnU-Net v2 through its own trainer's loader and augmentation
(``bench/batch_stats_reference.py``), the toolkit through its training loop's batch maker
(:func:`toolkit.training.trainer.batch_makers`: sampler, augmenter, finish). Compared, per
sample: the foreground share (per position in the batch: the oversampling rule forces the
last third), the share of outside-label voxels (crops reaching beyond the image, before they
become background), the image's intensity statistics after augmentation, and how often each
transform fires (spatial: rotation, scaling and the scale drawn; mirroring per axis).

    python -m bench.batch_stats --work bench/work/crossover [--batches 300]

writes ``bench/results/batch_stats.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench import harness
from bench.batch_stats_reference import sample_stats
from toolkit.core.checkpoint import KEY_NETWORK, load_checkpoint
from toolkit.nets.unet import build_network
from toolkit.training.augmentation.cascade_labels import finish
from toolkit.training.augmentation.framework import Batch
from toolkit.training.distributed import DistContext
from toolkit.training.job import TrainOptions, prepare
from toolkit.training.loader import TRAIN, BatchKey
from toolkit.training.loss import DeepSupervisionLoss, hard_counts, loss_scales, pseudo_dice
from toolkit.training.schedule import Schedule
from toolkit.training.trainer import batch_makers
from toolkit.workspace import DatasetPaths

NAME = "batch_stats"
REFERENCE = harness.BENCH / "batch_stats_reference.py"
# nnU-Net's transform classes -> the toolkit's transform names
TRANSFORMS = {
    "GaussianNoiseTransform": "noise",
    "GaussianBlurTransform": "blur",
    "MultiplicativeBrightnessTransform": "brightness",
    "ContrastTransform": "contrast",
    "SimulateLowResolutionTransform": "low_resolution",
    "GammaTransform(inverted)": "gamma_inverted",
    "GammaTransform": "gamma",
}
CHANNEL_PICKING = ("blur", "low_resolution")  # drawn, then each channel with p 0.5


class FixedModel:
    """One trained network scoring batches: the training loss and the hard Dice counts of its
    highest-resolution output. The same model on both tools' batches tells whether one
    pipeline's batches are harder than the other's, which the marginal statistics may miss."""

    def __init__(self, checkpoint: Path, job):
        cfg = job.configuration
        self.network = build_network(job.plans, cfg, deep_supervision=True)
        self.network.load_state_dict(load_checkpoint(checkpoint)[KEY_NETWORK])
        self.network.eval()
        self.labels = job.plans.label_model()
        self.loss = DeepSupervisionLoss(loss_scales(cfg), cfg.batch_dice, labels=self.labels)
        self.losses: list[float] = []
        self.counts = None

    @torch.no_grad()
    def score(self, image: torch.Tensor, target: torch.Tensor) -> None:
        outputs = self.network(image)
        self.losses.append(float(self.loss(outputs, target)))
        c = hard_counts(outputs[0], target, self.labels)
        self.counts = c if self.counts is None else self.counts + c

    def summary(self) -> dict:
        v = np.asarray(self.losses)
        return {
            "batches": int(v.size),
            "loss": float(v.mean()),
            "loss_standard_error": float(v.std(ddof=1) / np.sqrt(v.size)),
            "dice": pseudo_dice(self.counts),
        }


def toolkit_batches(
    paths: DatasetPaths,
    batches: int,
    seed: int,
    checkpoint: Path | None = None,
    dumped: Path | None = None,
) -> dict:
    """The toolkit's training batches of fold 0, drawn as its training loop draws them; with
    ``checkpoint``, scored by that model, and so are nnU-Net's batches dumped at ``dumped``."""
    options = TrainOptions(
        schedule=Schedule(epochs=1, iterations_per_epoch=batches), device="cpu", seed=seed
    )
    job = prepare(paths, "3d_fullres", 0, options)
    maker, _ = batch_makers(job, DistContext(), torch.device("cpu"))
    model = FixedModel(checkpoint, job) if checkpoint is not None else None
    classes = list(job.plans.label_model().foreground_values)
    samples, spatial, mirrored = [], [], []
    fired = {name: 0 for name in TRANSFORMS.values()}
    total = 0
    for i in range(batches):
        sample_seed, augment_seed, _ = maker.seeds(BatchKey(0, TRAIN, i))
        sampled = maker.sampler.sample(np.random.default_rng(sample_seed))
        batch = Batch(torch.from_numpy(sampled.image), torch.from_numpy(sampled.labels))
        params = maker.augmenter.sample(augment_seed, batch.batch_size, batch.num_channels)
        batch = maker.augmenter.apply(batch, params)
        outside = (batch.labels[:, 0] == -1).flatten(1).float().mean(1)
        image, target = finish(batch, maker.foreground_labels, maker.masked_channels)
        if model is not None:
            model.score(image, target)
        n = image.shape[0]
        total += n
        for j in range(n):
            samples.append(
                sample_stats(image[j].numpy(), target[j, 0].numpy(), float(outside[j]), j, classes)
            )
        for name in fired:
            p = params.by_transform.get(name)
            if p is not None:
                fired[name] += len(p.samples)
        sp = params.by_transform["spatial"]
        chosen = {int(s): k for k, s in enumerate(sp.samples)}
        for j in range(n):
            if j in chosen:
                k = chosen[j]
                m = sp.matrices[k]
                scales = np.linalg.norm(m, axis=0)
                spatial.append(
                    {
                        "rotated": bool(sp.rotated[k]),
                        "scaled": bool(sp.scaled[k]),
                        "scale": float(scales.mean()),
                    }
                )
            else:
                spatial.append({"rotated": False, "scaled": False, "scale": 1.0})
        mirror = params.by_transform.get("mirror")
        flips = mirror.flips if mirror is not None else np.zeros((n, 3), bool)
        mirrored += [[int(v) for v in row] for row in flips]
    scored = None
    if model is not None:
        scored = model.summary()
        reference = FixedModel(checkpoint, job)
        data = np.load(f"{dumped}_data.npy", mmap_mode="r") if dumped else None
        if data is not None:
            target = np.load(f"{dumped}_target.npy", mmap_mode="r")
            for i in range(len(data)):
                reference.score(
                    torch.from_numpy(np.array(data[i])),
                    torch.from_numpy(np.array(target[i], dtype=np.int64)),
                )
            scored = {"toolkit": scored, "nnunet": reference.summary()}
    return {
        "tool": "toolkit",
        "scored_by_fixed_model": scored,
        "patch_size": list(job.configuration.patch_size),
        "batch_size": job.configuration.batch_size,
        "samples": samples,
        "fired_with_a_channel": {k: v / total for k, v in fired.items()},
        "spatial": spatial,
        "mirrored": mirrored,
    }


def reference_batches(
    root: Path, dataset_id: int, batches: int, seed: int, out: Path, dump: Path | None = None
) -> dict:
    command = [str(harness.ensure_nnunet()), str(REFERENCE), "--root", str(root)]
    command += ["--dataset-id", str(dataset_id), "--batches", str(batches), "--seed", str(seed)]
    command += ["--out", str(out)]
    if dump is not None:
        command += ["--dump", str(dump), "--dump-count", str(batches)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net's batches failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def rate(values) -> tuple[float, float]:
    """Mean of 0/1 values and its standard error."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean()) if v.size else float("nan")
    return m, float(np.sqrt(max(m * (1 - m), 0) / max(v.size, 1)))


def summarize(run: dict) -> dict:
    samples = run["samples"]
    out: dict = {"samples": len(samples)}
    positions = sorted({s["position"] for s in samples})
    out["by_position"] = {
        str(p): {
            "any_foreground": rate([s["any_foreground"] for s in samples if s["position"] == p]),
            "foreground_fraction": float(
                np.mean([s["foreground_fraction"] for s in samples if s["position"] == p])
            ),
            "class_fraction": np.mean(
                [s["class_fraction"] for s in samples if s["position"] == p], axis=0
            ).tolist(),
        }
        for p in positions
    }
    out["outside_fraction"] = float(np.mean([s["outside_fraction"] for s in samples]))
    out["any_outside"] = rate([s["outside_fraction"] > 0 for s in samples])
    for key in ("mean", "std", "min", "max", "zero_fraction"):
        values = np.array([s[key] for s in samples])
        out[key] = {
            "mean": float(values.mean()),
            "p5": float(np.percentile(values, 5)),
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
        }
    out["rotated"] = rate([s["rotated"] for s in run["spatial"]])
    out["scaled"] = rate([s["scaled"] for s in run["spatial"]])
    scales = [s["scale"] for s in run["spatial"] if s["scaled"]]
    out["scale"] = {
        "mean": float(np.mean(scales)) if scales else None,
        "p5": float(np.percentile(scales, 5)) if scales else None,
        "p95": float(np.percentile(scales, 95)) if scales else None,
    }
    mirrored = np.array(run["mirrored"], dtype=np.float64)
    out["mirrored_per_axis"] = mirrored.mean(0).tolist() if mirrored.size else []
    return out


def fired_rates(run: dict) -> dict[str, float]:
    """Per toolkit transform name: the share of samples it changed (blur and low resolution:
    drawn and at least one channel picked)."""
    if run["tool"] == "toolkit":
        return dict(run["fired_with_a_channel"])
    rates = {TRANSFORMS[k]: v for k, v in run["fired"].items() if k in TRANSFORMS}
    for k, v in run.get("fired_with_a_channel", {}).items():
        rates[TRANSFORMS[k]] = v
    return rates


def render(data: dict) -> str:
    ours, theirs = data["summary"]["toolkit"], data["summary"]["nnunet"]
    fo, ft = data["fired"]["toolkit"], data["fired"]["nnunet"]
    m = data["machine"]
    lines = [
        "# What a training batch holds: toolkit vs nnU-Net v2",
        "",
        f"Machine: {m['cpus']} CPUs ({', '.join(m.get('cpu_flags', []))}), load "
        f"{m['load_average']}, {m['date']}. Task `Task905_DeepGrey` (`bench/anatomy.py`), "
        f"nnU-Net v2's plan (the toolkit's `cpu` preset network) for both, patch "
        f"{data['patch_size']}, batch {data['batch_size']}, fold 0's training cases; "
        f"{data['batches']} training batches per tool (nnU-Net: its trainer's own loader and "
        "augmentation, instrumented; toolkit: its training loop's batch maker). ± is one "
        "standard error.",
        "",
        "## Foreground per position in the batch (oversampling: the last third is forced)",
        "",
    ]
    rows = []
    for p in sorted(ours["by_position"], key=int):
        o, t = ours["by_position"][p], theirs["by_position"][p]
        rows.append(
            [
                p,
                f"{o['any_foreground'][0]:.3f} ± {o['any_foreground'][1]:.3f}",
                f"{t['any_foreground'][0]:.3f} ± {t['any_foreground'][1]:.3f}",
                f"{o['foreground_fraction']:.4f}",
                f"{t['foreground_fraction']:.4f}",
                ", ".join(f"{v:.4f}" for v in o["class_fraction"]),
                ", ".join(f"{v:.4f}" for v in t["class_fraction"]),
            ]
        )
    lines.append(
        harness.markdown_table(
            [
                "position",
                "samples with foreground, toolkit",
                "nnU-Net",
                "foreground share, toolkit",
                "nnU-Net",
                "per class, toolkit",
                "nnU-Net",
            ],
            rows,
        )
    )
    lines += ["", "## Borders, intensities, spatial transforms", ""]
    rows = [
        [
            "outside-label share of voxels",
            f"{ours['outside_fraction']:.4f}",
            f"{theirs['outside_fraction']:.4f}",
        ],
        [
            "samples reaching outside",
            f"{ours['any_outside'][0]:.3f} ± {ours['any_outside'][1]:.3f}",
            f"{theirs['any_outside'][0]:.3f} ± {theirs['any_outside'][1]:.3f}",
        ],
        [
            "rotated",
            f"{ours['rotated'][0]:.3f} ± {ours['rotated'][1]:.3f}",
            f"{theirs['rotated'][0]:.3f} ± {theirs['rotated'][1]:.3f}",
        ],
        [
            "scaled",
            f"{ours['scaled'][0]:.3f} ± {ours['scaled'][1]:.3f}",
            f"{theirs['scaled'][0]:.3f} ± {theirs['scaled'][1]:.3f}",
        ],
        [
            "scale (mean, p5-p95, scaled samples)",
            _scale(ours["scale"]),
            _scale(theirs["scale"]),
        ],
        [
            "mirrored per axis",
            ", ".join(f"{v:.3f}" for v in ours["mirrored_per_axis"]),
            ", ".join(f"{v:.3f}" for v in theirs["mirrored_per_axis"]),
        ],
    ]
    for key in ("mean", "std", "min", "max", "zero_fraction"):
        rows.append(
            [
                f"image {key} per sample (mean; p5, p50, p95)",
                _quantiles(ours[key]),
                _quantiles(theirs[key]),
            ]
        )
    lines.append(harness.markdown_table(["", "toolkit", "nnU-Net v2"], rows))
    lines += ["", "## How often each transform changes a sample", ""]
    rows = [
        [name, f"{fo.get(name, float('nan')):.3f}", f"{ft.get(name, float('nan')):.3f}"]
        for name in TRANSFORMS.values()
    ]
    lines.append(harness.markdown_table(["transform", "toolkit", "nnU-Net v2"], rows))
    scored = data.get("scored_by_fixed_model")
    if scored:
        lines += [
            "",
            "## One trained model on both tools' batches",
            "",
            f"The same network ({data['checkpoint']}) scores each tool's batches: the training "
            "loss (deep supervision, as in training; ± one standard error) and the pseudo-Dice "
            "per class of its highest-resolution output. Harder batches from one pipeline "
            "would show here even where the marginal statistics above agree.",
            "",
        ]
        rows = [
            [
                tool,
                scored[tool]["batches"],
                f"{scored[tool]['loss']:.4f} ± {scored[tool]['loss_standard_error']:.4f}",
                ", ".join(f"{d:.3f}" for d in scored[tool]["dice"]),
            ]
            for tool in ("toolkit", "nnunet")
        ]
        lines.append(harness.markdown_table(["batches of", "batches", "loss", "pseudo-Dice"], rows))
    lines += [
        "",
        "Blur and low resolution count a sample when the transform was drawn and picked at "
        "least one channel (p 0.2 x 0.5 and 0.25 x 0.5 with one channel).",
        "",
        f"Reproduce: `python -m bench.batch_stats --work {data['work']} --batches {data['batches']}"
        + (" --checkpoint CHECKPOINT`." if data.get("checkpoint") else "`."),
    ]
    return "\n".join(lines)


def _scale(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f} ({s['p5']:.3f}-{s['p95']:.3f})"


def _quantiles(q: dict) -> str:
    return f"{q['mean']:.3f}; {q['p5']:.3f}, {q['p50']:.3f}, {q['p95']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, required=True, help="a folder prepared by bench.quality's prepare"
    )
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a toolkit checkpoint of this task: score both tools' batches with it",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    paths = DatasetPaths(args.work / "ws" / "Task905_DeepGrey")
    dump = args.work / "batch_stats_nnunet" if args.checkpoint is not None else None
    theirs = reference_batches(
        args.work / "nnunet",
        905,
        args.batches,
        args.seed,
        args.work / "nnunet_batch_stats.json",
        dump,
    )
    ours = toolkit_batches(paths, args.batches, args.seed, args.checkpoint, dump)
    if dump is not None:
        for suffix in ("data", "target"):
            Path(f"{dump}_{suffix}.npy").unlink(missing_ok=True)
    data = {
        "machine": harness.machine(),
        "work": str(args.work),
        "batches": args.batches,
        "patch_size": ours["patch_size"],
        "batch_size": ours["batch_size"],
        "summary": {"toolkit": summarize(ours), "nnunet": summarize(theirs)},
        "fired": {"toolkit": fired_rates(ours), "nnunet": fired_rates(theirs)},
        "scored_by_fixed_model": ours["scored_by_fixed_model"],
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
    }
    harness.write_results(NAME, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
