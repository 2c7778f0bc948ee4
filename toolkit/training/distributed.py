"""Several processes training one model with ``torch.distributed``.

``toolkit train ... --devices N`` starts N processes on this machine (one per GPU on CUDA,
NCCL; processes sharing the CPU otherwise, gloo); a run started by ``torchrun`` is
detected from its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The global batch of
the plan is split across processes (the first ``batch % N`` get one sample more); each
process draws its share with the foreground-forcing flags of its slice of the global
batch, gradients are averaged by DistributedDataParallel, and losses and pseudo-Dice
counts are reduced over all processes. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from toolkit.errors import ToolkitError

# the final validation may keep ranks apart for long; the default 10 minutes is too short
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy; the input is left alone)."""
        if not self.enabled:
            return tensor.clone()
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def mean_of(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size


def batch_share(global_batch: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of this rank's samples in the global batch."""
    if global_batch < world_size:
        raise ToolkitError(
            f"the plan's batch size {global_batch} is smaller than --devices {world_size}: use fewer devices"
        )
    base, extra = divmod(global_batch, world_size)
    sizes = [base + (1 if r < extra else 0) for r in range(world_size)]
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: its own GPU on CUDA, else ``device``."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_process(rank: int, world_size: int, local_rank: int, device: torch.device) -> DistContext:
    """Join the process group (the address comes from ``MASTER_ADDR``/``MASTER_PORT``)."""
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {
            "backend": backend_for(device),
            "rank": rank,
            "world_size": world_size,
            "timeout": TIMEOUT,
        }
        if device.type == "cuda":
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(**kwargs)
    return DistContext(rank, world_size, local_rank)


def torchrun_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def context_from_torchrun(device: torch.device) -> DistContext:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return init_process(rank, world_size, torchrun_local_rank(), device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    local_rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    fn(local_rank, world_size, *args)


def spawn(world_size: int, fn: Callable[..., Any], args: tuple) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes and wait.

    A failure in any process stops all of them; a :class:`ToolkitError` raised in a worker
    comes back as one (its one-line message), anything else keeps its traceback.
    """
    port = free_port()
    try:
        mp.start_processes(
            _worker,
            args=(world_size, port, fn, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
    except mp.ProcessRaisedException as exc:
        # the worker's traceback as text; its last line names a user error's class
        found = re.findall(r"^toolkit\.errors\.\w+: (.+)$", str(exc), flags=re.MULTILINE)
        if found:
            raise ToolkitError(found[-1].strip()) from None
        raise
