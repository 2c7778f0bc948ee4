"""Networks compiled with ``torch.compile`` for prediction, falling back to eager execution.

On the CPU the graph is compiled with weight freezing (the weights become constants, so the
convolutions get prepacked weights and the normalisation + activation are fused). Measured
on a 2-core AVX2 machine (``bench/results/predict.md``): one forward pass of the method's
full-width 3D U-Net 1.27x faster, a whole case (mirroring, resampling, export) 5-15%
faster, a small 2D network's case 1.6x faster. Compiling costs 5-25 s once per process and
window shape (kernels are cached on disk for later runs; the other folds' networks reuse
them), so it is opt-in (``toolkit predict --compile``) and pays off on folders of many cases.
A machine without a C++ compiler, or any failure to compile, falls back to eager execution
with a one-line warning.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from toolkit.progress import info

_warned_unavailable = False  # said once per process, not once per model folder


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None."""
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) on PATH, which torch.compile needs on the CPU"
    return None


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot compile (not errors of the computation itself)."""
    # imported here: importing torch._dynamo takes seconds, paid only when compiling
    from torch._dynamo.exc import TorchDynamoException

    errors: list[type[BaseException]] = [TorchDynamoException]
    try:
        from torch._inductor.exc import CppCompileError, InductorError

        errors += [InductorError, CppCompileError]
    except ImportError:  # older torch
        pass
    return tuple(errors)


class CompiledNetwork(nn.Module):
    """Calls the compiled network; when compiling fails, warns once and runs eagerly from then on.

    Errors of the computation itself (out of memory, a wrong input) are raised as they are. A
    batch smaller than the first one (the last windows of a case) is padded to that size, so
    the graph compiled for the first batch serves every batch: windows are independent (the
    network normalises each sample on its own), so the padding does not change the others.
    """

    def __init__(self, network: nn.Module, device: torch.device):
        super().__init__()
        self.network = network
        # what the sliding window reads to feed a 2D network single slices
        self.spatial_dims = getattr(network, "spatial_dims", 3)
        options = {"freezing": True} if device.type == "cpu" else None
        self._compiled = torch.compile(network, options=options, dynamic=False)
        self._batch: int | None = None
        self.failed: str | None = None

    def forward(self, x: torch.Tensor):
        if self.failed is not None:
            return self.network(x)
        n = x.shape[0]
        if self._batch is None:
            self._batch = n
        padded = x
        if n < self._batch:
            padded = torch.cat([x, x.new_zeros((self._batch - n, *x.shape[1:]))])
        try:
            out = self._compiled(padded)
        except _compile_errors() as exc:
            text = str(exc).strip()
            self.failed = text.splitlines()[0][:200] if text else type(exc).__name__
            info(f"warning: torch.compile failed ({self.failed}); predicting without it")
            return self.network(x)
        if padded is x:
            return out
        if isinstance(out, list | tuple):
            return type(out)(o[:n] for o in out)
        return out[:n]


def compile_networks(
    networks: list[nn.Module], device: torch.device, warn: bool = True
) -> list[nn.Module]:
    """Each network wrapped in :class:`CompiledNetwork`, or unchanged where compiling cannot
    work (with a warning when ``warn``)."""
    global _warned_unavailable
    reason = compile_unavailable_reason(device)
    if reason is not None:
        if warn and not _warned_unavailable:
            info(f"warning: --compile ignored: {reason}")
            _warned_unavailable = True
        return networks
    return [n if isinstance(n, CompiledNetwork) else CompiledNetwork(n, device) for n in networks]
