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


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None."""
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) on PATH, which torch.compile needs on the CPU"
    return None


class CompiledNetwork(nn.Module):
    """Calls the compiled network; on its first failure warns once and runs eagerly from then on."""

    def __init__(self, network: nn.Module, device: torch.device):
        super().__init__()
        self.network = network
        # what the sliding window reads to feed a 2D network single slices
        self.spatial_dims = getattr(network, "spatial_dims", 3)
        options = {"freezing": True} if device.type == "cpu" else None
        self._compiled = torch.compile(network, options=options, dynamic=False)
        self.failed: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._compiled(x)
            except Exception as exc:  # inductor/dynamo raise many kinds; eager decides below
                self.failed = (
                    str(exc).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__
                )
                info(f"warning: torch.compile failed ({self.failed}); predicting without it")
        return self.network(x)


def compile_networks(
    networks: list[nn.Module], device: torch.device, warn: bool = True
) -> list[nn.Module]:
    """Each network wrapped in :class:`CompiledNetwork`, or unchanged where compiling cannot
    work (with a warning when ``warn``)."""
    reason = compile_unavailable_reason(device)
    if reason is not None:
        if warn:
            info(f"warning: --compile ignored: {reason}")
        return networks
    return [n if isinstance(n, CompiledNetwork) else CompiledNetwork(n, device) for n in networks]
