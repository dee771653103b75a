"""The screen's precision: bf16 or float32 (``"auto"``: what measured fastest for the search, BENCHMARKS.md)."""
from __future__ import annotations

import torch

from ..errors import WorkbenchError

PRECISIONS = ("auto", "bf16", "float32")


def pick_precision(precision: str, dev: torch.device) -> torch.dtype:
    """The screen's dtype for ``precision`` on device ``dev`` (a CorrelationIndex or a streamed search)."""
    if precision not in PRECISIONS:
        raise WorkbenchError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        # Measured (BENCHMARKS.md, issue 16): a prepared CorrelationIndex serves the pruned search
        # first (method="auto"), whose tiles multiply float32 rows.  On a CPU with AMX its float32
        # copy searched 0.16 s where a bf16 copy took 0.21 s (tiles widen bf16 rows and their wider
        # bound sends more pairs to the rescore) and the bf16 brute screen 0.27 s; CPUs without AMX
        # run bf16 slower still.  So an index on the CPU keeps float32.  Unprepared, the CPU pays
        # for a bf16 copy and its split norms in every call: float32 too.  GPUs: bf16 (tensor
        # cores), not yet measured against float32 there.
        precision = "bf16" if dev.type == "cuda" else "float32"
    return torch.bfloat16 if precision == "bf16" else torch.float32
