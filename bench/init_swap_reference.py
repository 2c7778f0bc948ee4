"""nnU-Net v2's half of ``bench/init_swap.py``: one epoch of its own trainer.

Runs with the Python that holds ``nnunetv2``. Seeds torch as ``bench/nnunet_v2_reference.py
train`` does, builds ``nnUNetTrainer`` on the prepared dataset (its results in ``--scratch``)
and initialises it; ``--save-initial`` writes its initial weights as an nnU-Net checkpoint
(which ``toolkit train --pretrained`` reads), ``--initial-weights`` replaces them with a
toolkit state dict (renamed by :func:`toolkit.nets.nnunet_v2_weights.convert_state_dict`,
imported from this repository: it needs only torch and numpy). Then it trains one epoch and
prints ``RESULT {json}`` with the epoch's mean training loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True, help="nnU-Net folders of the task")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--dataset", default="Dataset905_DeepGrey")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--save-initial", type=Path, default=None)
    parser.add_argument("--initial-weights", type=Path, default=None)
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_raw"] = str(args.root.resolve() / "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = str(args.root.resolve() / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(args.scratch.resolve() / "nnUNet_results")
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_compile"] = "false"
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / args.dataset
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    torch.manual_seed(args.seed)
    trainer = nnUNetTrainer(
        plans=plans,
        configuration="3d_fullres",
        fold=0,
        dataset_json=dataset,
        device=torch.device("cpu"),
    )
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = max(1, args.iterations // 5)
    trainer.initialize()
    if args.save_initial is not None:
        torch.save(
            {
                "network_weights": trainer.network.state_dict(),
                "init_args": {"configuration": "3d_fullres"},
                "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2),
            },
            args.save_initial,
        )
    if args.initial_weights is not None:
        sys.path.insert(0, str(REPO))
        from toolkit.nets.nnunet_v2_weights import convert_state_dict

        ours = torch.load(args.initial_weights, map_location="cpu", weights_only=True)
        # our name -> nnU-Net's name, from nnU-Net's own keys renamed
        names = convert_state_dict({k: k for k in trainer.network.state_dict()})
        trainer.network.load_state_dict(
            {theirs: ours[k] for k, theirs in names.items()}, strict=False
        )
        loaded = convert_state_dict(trainer.network.state_dict())
        if not all(torch.equal(loaded[k], ours[k]) for k in ours):
            raise SystemExit("the toolkit's initial weights did not load")
    trainer.run_training()
    return {
        "seed": args.seed,
        "train_loss": [float(v) for v in trainer.logger.get_value("train_losses", None)],
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1:])), flush=True)
    os._exit(0)
