"""How much faster (or slower) bf16 is than float32 on this machine: the probe ``bf16="auto"`` uses.

    .venv/bin/python benchmarks/precision.py

Runs :func:`workbench.device.bf16_speedups` without its cache (a fresh probe) and prints the
measured ratios (float32 time / bf16 time: above 1 means bf16 is faster), how long the probe took,
what ``bf16="auto"`` therefore chooses for training / sampling (convolutions) and for the search
(matrix products), and the CPU it ran on.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time

import torch


def cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    wanted = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return f"{model}; {os.cpu_count()} cores; {' '.join(wanted) or 'no AVX flags'}"


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache  # a fresh probe, not the cached one
        t0 = time.perf_counter()
        from workbench import device

        speed = device.bf16_speedups("cpu")
        seconds = time.perf_counter() - t0
        choice = {kind: device.use_bf16("auto", "cpu", kind=kind) for kind in ("conv", "matmul")}
    print(json.dumps({"cpu": cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "bf16_speedup": {k: speed[k] for k in ("conv", "matmul")},
                      "probe_seconds_including_import": round(seconds, 2),
                      "auto_uses_bf16": choice}, indent=2))


if __name__ == "__main__":
    main()
