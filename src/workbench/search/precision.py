"""The screen's precision: bf16 or float32, chosen from what was measured on the machine at hand."""
from __future__ import annotations

import torch

from ..device import use_bf16
from ..errors import WorkbenchError

PRECISIONS = ("auto", "bf16", "float32")


def pick_precision(precision: str, dev: torch.device, prepared: bool = False) -> torch.dtype:
    """The screen's dtype for ``precision`` on device ``dev``; ``prepared``: for a CorrelationIndex."""
    if precision not in PRECISIONS:
        raise WorkbenchError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        # Measured (BENCHMARKS.md): on a prepared CorrelationIndex the bf16 screen with its
        # per-pair bound is the faster exact search where the hardware multiplies bf16 much faster
        # than float32 (AMX), which the precision probe measures on the machine at hand; CPUs with
        # only AVX-512 BF16 or none run it slower.  Unprepared, the CPU pays for the bf16 copy and
        # its split norms in every call and float32 is faster.  GPUs: bf16 (tensor cores).
        if dev.type == "cuda":
            precision = "bf16"
        else:
            precision = "bf16" if prepared and use_bf16("auto", dev, kind="matmul") else "float32"
    return torch.bfloat16 if precision == "bf16" else torch.float32
