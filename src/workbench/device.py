"""Where and in which precision the workbench computes: the one place that resolves both.

:func:`resolve_device` turns ``"auto"`` / ``"cpu"`` / ``"cuda"`` into a ``torch.device`` (CUDA when
torch sees a GPU); :func:`use_bf16` decides whether bfloat16 pays on the machine at hand, measured by
a short probe, never read from CPU flags.

bf16 autocast is 1.5-5x faster than float32 where the hardware multiplies bf16 natively (AMX,
tensor cores), about 0.6x on CPUs with only AVX-512 BF16, and some 30x *slower* on CPUs without
either (measured: a 3x3 convolution on an AVX2-only AMD EPYC, torch 2.13).  So the workbench's
default, ``bf16="auto"``, times a small convolution and a matrix product in float32 and in bf16
on this device (well under a second) and uses bf16 only where it is clearly faster.  The result
is cached per machine (CPU model and flags, torch version, threads) in
``$XDG_CACHE_HOME/workbench/precision.json`` (``~/.cache`` by default), so a machine is probed
once, and is recorded beside every result that used it.

>>> use_bf16("auto", torch.device("cpu"))          # doctest: +SKIP
False
>>> bf16_speedups(torch.device("cpu"))             # doctest: +SKIP
{'conv': 0.03, 'matmul': 0.9}
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from .errors import WorkbenchError

#: bf16 must be at least this much faster than float32 to be chosen
MIN_SPEEDUP = 1.2
#: what ``bf16=`` accepts
CHOICES = (True, False, "auto")

_memo: dict[str, dict] = {}


def resolve_device(device=None) -> torch.device:
    """``"auto"`` or None: CUDA when torch sees a GPU, else the CPU; otherwise the device asked for.

    Asking for CUDA where torch sees none is a clear error, not a fall-back.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise WorkbenchError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device={device!r} asked for, but torch sees no CUDA GPU (use device='auto' or 'cpu')")
    if dev.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


def _cache_file(name: str = "precision.json") -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workbench" / name


def cached_figures(name: str, key: str, measure, required) -> tuple[dict, bool]:
    """Figures measured once per machine: ``(figures, measured_now)``, from the cache file ``name``
    (``$XDG_CACHE_HOME/workbench/``) under ``key`` where it holds every one of ``required``, else
    ``measure()`` (stamped with when) written there for the next process.  ``key`` should start
    with :func:`machine_key`.  A cache that cannot be read or written only means measuring again."""
    path = _cache_file(name)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), dict) and set(required) <= set(cached[key]):
        return cached[key], False
    measured = {**measure(), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**cached, key: measured}, indent=1))
        os.replace(tmp, path)  # whole or not at all: another process may read it meanwhile
    except OSError:
        pass
    return measured, True


def machine_key(device: torch.device) -> str:
    """What a per-machine measurement depends on: the CPU (model and flags) or GPU, torch's threads
    and version.  The key of the caches of :func:`cached_figures`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name, flags = platform.processor(), ""
        try:
            text = Path("/proc/cpuinfo").read_text()
            name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), name)
            flags = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
        except OSError:
            pass
        name = f"{name} flags:{hashlib.sha1(flags.encode()).hexdigest()[:10]} threads:{torch.get_num_threads()}"
    return f"{device.type}|{name}|torch {torch.__version__}"


def _best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up (kernels chosen, memory allocated)
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _probe(device: torch.device) -> dict:
    """float32 time / bf16 time of a small convolution (training, sampling) and matrix product (search)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 32, 32, 32, generator=gen).to(device)
    w = torch.randn(32, 32, 3, 3, generator=gen).to(device)
    a = torch.randn(256, 1024, generator=gen).to(device)
    b = torch.randn(1024, 256, generator=gen).to(device)
    out = {}
    for name, f32, lo in (
        ("conv", lambda: torch.nn.functional.conv2d(x, w, padding=1),
         lambda: torch.nn.functional.conv2d(x.bfloat16(), w.bfloat16(), padding=1)),
        ("matmul", lambda: a @ b, lambda: a.bfloat16() @ b.bfloat16()),
    ):
        with torch.no_grad():
            t32 = _best_time(f32)
            t16 = _best_time(lo, repeats=1)
            if t16 < 2 * t32:  # close enough to matter: time it as carefully as float32
                t16 = min(t16, _best_time(lo))
            out[name] = round(t32 / max(t16, 1e-9), 3)
    return out


def bf16_speedups(device) -> dict:
    """Measured speed of bf16 relative to float32 on ``device``: ``{"conv": .., "matmul": ..}`` (cached)."""
    device = torch.device(device)
    key = machine_key(device)
    if key not in _memo:
        _memo[key] = cached_figures("precision.json", key, lambda: _probe(device), ("conv", "matmul"))[0]
    return _memo[key]


def use_bf16(bf16, device, *, kind: str = "conv") -> bool:
    """Resolve ``bf16`` (True, False or ``"auto"``) for work of ``kind`` ("conv" or "matmul") on ``device``.

    ``"auto"``: bf16 where the probe measured it at least :data:`MIN_SPEEDUP` times faster.
    """
    if bf16 is None:
        bf16 = "auto"
    if isinstance(bf16, str) and bf16.lower() in ("true", "false", "auto"):
        bf16 = {"true": True, "false": False, "auto": "auto"}[bf16.lower()]
    if bf16 not in CHOICES or isinstance(bf16, (int, float)) and not isinstance(bf16, bool):
        raise WorkbenchError(f"bf16 must be True, False or 'auto', got {bf16!r}")
    if bf16 != "auto":
        return bool(bf16)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False
    return bf16_speedups(device)[kind] >= MIN_SPEEDUP


def describe(bf16_requested, used: bool, device) -> str:
    """How the precision was chosen, for the record beside a result."""
    if bf16_requested in (True, False):
        return f"{'bf16' if used else 'float32'} (asked for)"
    s = bf16_speedups(torch.device(device))
    return (f"{'bf16' if used else 'float32'} (auto: bf16 measured {s['conv']:.2f}x float32 for convolutions, "
            f"{s['matmul']:.2f}x for matrix products on this {torch.device(device).type})")
