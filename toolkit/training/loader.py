"""Batches made ahead of time in background threads, handed to the loop in order.

:class:`BatchMaker` turns a :class:`BatchKey` (epoch, phase, iteration) into a ready
network input and target: crops sampled from the memory-mapped cases, moved to the
training device, augmented there, finished (mask, labels, cascade channels). All its
randomness comes from a seed derived from the run's seed (``--seed`` mixed with the
configuration and the fold: :func:`toolkit.training.job.run_seed`), the key and the process
rank, so a batch does not depend on which thread made it or on when the run was resumed.

:class:`Prefetcher` keeps ``depth`` batches in flight in ``threads`` background threads
(torch and numpy release the interpreter lock in their heavy work) and records how long the
loop had to wait for each one. On CUDA each thread works on its own stream; the consumer's
stream waits on an event recorded after the batch was made.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch

from toolkit.training.augmentation.augmenter import Augmenter
from toolkit.training.augmentation.cascade_labels import CascadeAugmentation, finish
from toolkit.training.augmentation.framework import Batch
from toolkit.training.sampling import PatchSampler

TRAIN = 0
VALIDATION = 1


@dataclass(frozen=True)
class BatchKey:
    epoch: int
    phase: int  # TRAIN or VALIDATION
    iteration: int


@dataclass
class ReadyBatch:
    key: BatchKey
    input: torch.Tensor
    target: torch.Tensor
    cases: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    event: torch.cuda.Event | None = None

    def wait(self) -> None:
        """Make the current CUDA stream wait for the producing stream (no-op on CPU)."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.input.device)
            stream.wait_event(self.event)
            self.input.record_stream(stream)
            self.target.record_stream(stream)


class BatchMaker:
    def __init__(
        self,
        sampler: PatchSampler,
        augmenter: Augmenter | None,
        device: torch.device,
        seed: int,
        rank: int,
        foreground_labels: list[int],
        masked_channels: list[int],
        cascade: CascadeAugmentation | None = None,
        synchronize_timings: bool = False,
    ):
        self.sampler = sampler
        self.augmenter = augmenter
        self.device = device
        self.seed = seed
        self.rank = rank
        self.foreground_labels = foreground_labels
        self.masked_channels = masked_channels
        self.cascade = cascade
        self.synchronize_timings = synchronize_timings
        self._local = threading.local()

    def seeds(self, key: BatchKey) -> list[np.random.SeedSequence]:
        return np.random.SeedSequence(
            [self.seed, key.epoch, key.phase, key.iteration, self.rank]
        ).spawn(3)

    def _stream(self):
        if self.device.type != "cuda":
            return None
        if getattr(self._local, "stream", None) is None:
            self._local.stream = torch.cuda.Stream(self.device)
        return self._local.stream

    def __call__(self, key: BatchKey) -> ReadyBatch:
        sample_seed, augment_seed, cascade_seed = self.seeds(key)
        t0 = time.perf_counter()
        sampled = self.sampler.sample(np.random.default_rng(sample_seed))
        t1 = time.perf_counter()
        stream = self._stream()
        with torch.no_grad(), torch.cuda.stream(stream) if stream is not None else _nothing():
            image = torch.from_numpy(sampled.image)
            labels = torch.from_numpy(sampled.labels)
            if self.device.type == "cuda":
                image = image.pin_memory().to(self.device, non_blocking=True)
                labels = labels.pin_memory().to(self.device, non_blocking=True)
            batch = Batch(image, labels)
            if self.augmenter is not None:
                batch = self.augmenter(batch, augment_seed)
            cascade_params = None
            if self.cascade is not None:
                cascade_params = self.cascade.sample(
                    np.random.default_rng(cascade_seed),
                    batch.batch_size,
                    len(self.foreground_labels),
                )
            net_input, target = finish(
                batch,
                self.foreground_labels,
                self.masked_channels,
                self.cascade,
                cascade_params,
            )
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
                if self.synchronize_timings:
                    event.synchronize()
        t2 = time.perf_counter()
        return ReadyBatch(
            key,
            net_input,
            target,
            sampled.cases,
            {"sample_s": t1 - t0, "augment_s": t2 - t1},
            event,
        )


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


T = TypeVar("T")
K = TypeVar("K")


class Prefetcher(Generic[K, T]):
    """``produce(key)`` for every key in order, up to ``depth`` ahead, in background threads."""

    def __init__(
        self, produce: Callable[[K], T], keys: Iterable[K], depth: int = 3, threads: int = 1
    ):
        self.produce = produce
        self.keys: Iterator[K] = iter(keys)
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="batches")
        self.pending: deque[Future[T]] = deque()
        self.wait_s = 0.0
        self.waits: list[float] = []
        self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.depth:
            try:
                key = next(self.keys)
            except StopIteration:
                return
            self.pending.append(self.pool.submit(self.produce, key))

    def __iter__(self) -> Prefetcher[K, T]:
        return self

    def __next__(self) -> T:
        if not self.pending:
            raise StopIteration
        future = self.pending.popleft()
        start = time.perf_counter()
        item = future.result()  # an exception in the producer is raised here
        waited = time.perf_counter() - start
        self.wait_s += waited
        self.waits.append(waited)
        self._fill()
        return item

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def __enter__(self) -> Prefetcher[K, T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
