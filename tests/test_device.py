"""bf16 is chosen by measuring it on the machine at hand (a short probe, cached), never from CPU flags.

Found on an AVX2-only CPU: bf16 autocast ran a 3x3 convolution some 30x slower than float32, so
the defaults (bf16 on) made training, sampling and the copy detector crawl.
"""
from __future__ import annotations

import json

import pytest
import torch

import workbench.device as precision
from workbench.errors import WorkbenchError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_memo", {})
    return tmp_path / "workbench" / "precision.json"


def test_explicit_choices_are_kept_and_bad_ones_refused(cache):
    assert precision.use_bf16(True, "cpu") is True and precision.use_bf16(False, "cpu") is False
    assert precision.use_bf16("false", "cpu") is False  # as a notebook parameter or the CLI may give it
    for bad in ("yes", 1, 0.5):
        with pytest.raises(WorkbenchError, match="bf16 must be True, False or 'auto'"):
            precision.use_bf16(bad, "cpu")
    assert not cache.exists()  # nothing measured for an explicit choice


def test_auto_follows_the_measured_speed_and_is_cached_per_machine(cache, monkeypatch):
    calls = []

    def probe(device):
        calls.append(device)
        return {"conv": 0.03, "matmul": 2.5}

    monkeypatch.setattr(precision, "_probe", probe)
    assert precision.use_bf16("auto", "cpu") is False  # convolutions: slower in bf16 here
    assert precision.use_bf16("auto", "cpu", kind="matmul") is True
    assert len(calls) == 1
    key = precision.machine_key(torch.device("cpu"))
    saved = json.loads(cache.read_text())
    assert saved[key]["conv"] == 0.03 and "measured" in saved[key]
    monkeypatch.setattr(precision, "_memo", {})  # a new process reads the cache instead of probing again
    assert precision.use_bf16("auto", "cpu") is False and len(calls) == 1
    assert "0.03x float32 for convolutions" in precision.describe("auto", False, "cpu")


def test_the_probe_measures_both_kinds_quickly(cache):
    import time

    t0 = time.perf_counter()
    measured = precision.bf16_speedups("cpu")
    assert time.perf_counter() - t0 < 30
    assert measured["conv"] > 0 and measured["matmul"] > 0


def test_training_records_how_its_precision_was_chosen(cache, monkeypatch, tmp_path):
    import numpy as np

    from workbench.data.store import SliceStore, StoreWriter
    from workbench.train import train_model

    monkeypatch.setattr(precision, "_probe", lambda device: {"conv": 0.05, "matmul": 0.5})
    path = tmp_path / "store"
    with StoreWriter(path, channels=["t1"], height=16, width=16) as w:
        w.append(np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32), [{"split": "train"}] * 4)
    out = train_model(SliceStore.open(path), tmp_path / "m", steps=2, batch_size=2, block_out_channels=(8, 16),
                      norm_num_groups=4, progress=False)
    info = json.loads((out / "training.json").read_text())
    assert info["bf16"] is False and info["precision"].startswith("float32 (auto: bf16 measured 0.05x")
