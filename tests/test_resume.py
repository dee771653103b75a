"""A training run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run.

Also: resuming with other settings is refused, a finished run is left alone, training longer
continues from the final checkpoint, and an unfinished run folder is not mistaken for a model.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import CheckpointError
from workbench.models.checkpoint import load_model
from workbench.models.family import family_names, get_family
from workbench.train import latest_checkpoint, train_model

SIZE = 16
#: per family (every 2D family of the registry needs an entry): small networks and options so a step
#: takes milliseconds
FAMILIES = {
    "ddpm": dict(block_out_channels=(8, 16), norm_num_groups=4),
    "gan": dict(preset="tiny", r1_interval=2, diffaugment="color,translation,cutout", conditional=True),
    "ldm": dict(preset="tiny", ae_steps=4, conditional=True, disc_weight=0.5, disc_start=2, disc_layers=2),
    # the copy detector: NT-Xent on two views per image, label channel "seg" kept a label, EMA on
    "detector": dict(widths=(8, 16), groups=4, head_dim=16, embedding_dim=8, weight_decay=1e-4, warmup_steps=2),
}
COMMON = dict(steps=9, batch_size=2, max_images=4, seed=5, checkpoint_every=3, log_every=1, progress=False,
              augment="flip,affine", lr=1e-3)

CHILD = """
import json, sys, time
from workbench.data.store import SliceStore
from workbench.train import train_model
store, out, model, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
# sleep at every step so the parent can kill the run between two checkpoints
train_model(SliceStore.open(store).where(split="train"), out, model=model,
            callback=lambda step, loss: time.sleep(0.4), **kwargs)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "store"
    rng = np.random.default_rng(1)
    images = rng.random((8, 2, SIZE, SIZE)).astype(np.float32)
    rows = [{"subject": f"s{i // 4}", "z": i % 4, "split": "train" if i < 6 else "test", "label": i % 2}
            for i in range(8)]
    with StoreWriter(path, channels=["t1", "seg"], height=SIZE, width=SIZE) as w:
        w.append(images, rows)
    return SliceStore.open(path)


def _weights(folder: Path) -> dict:
    loaded = load_model(folder)
    return {f"{m}.{k}": v for m, net in loaded.modules.items() for k, v in net.state_dict().items()}


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# the families of 2D slices (this store's); the 3D family's resume is tested on volumes in test_ldm3d_model.py
@pytest.mark.parametrize("model", [n for n in family_names() if get_family(n).spatial_dims == 2])
def test_sigkill_and_resume_gives_the_uninterrupted_weights(store, tmp_path, model):
    import json

    kwargs = {**COMMON, **FAMILIES[model]}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store.path), str(killed), model, json.dumps(kwargs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = killed / "checkpoints" / "step-0000003" / "training.json"
    deadline = time.time() + 120
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the run is unfinished: no final model, and loading says where the checkpoint is
    assert not (killed / "training.json").exists()
    with pytest.raises(CheckpointError, match="training has not finished.*step-"):
        load_model(killed)
    resumed_from = latest_checkpoint(killed)
    assert resumed_from is not None and resumed_from.parent.name == "checkpoints"

    train = store.where(split="train")
    train_model(train, killed, model=model, resume=True, **kwargs)
    whole = train_model(train, tmp_path / "whole", model=model, **kwargs)
    _assert_same(_weights(killed), _weights(whole))
    info = json.loads((killed / "training.json").read_text())
    assert info["resumed_at"] and info["resumed_at"][0] % 3 == 0
    assert info["label_channels"] == ["seg"]  # read from the store: "seg" is augmented as a label map
    assert info["steps_done"] == info["total_steps"] == 9 + kwargs.get("ae_steps", 0)
    # the loss history is continuous: one value per step, as in the uninterrupted run
    logged = sorted({s for pairs in info["losses"].values() for s, _ in pairs})
    assert logged == list(range(1, info["total_steps"] + 1))
    assert info["losses"] == json.loads((tmp_path / "whole" / "training.json").read_text())["losses"]


def test_resume_rules(store, tmp_path):
    train = store.where(split="train")
    kwargs = {**COMMON, **FAMILIES["ddpm"]}
    out = train_model(train, tmp_path / "run", model="ddpm", **kwargs)
    before = _weights(out)
    # a finished run: resume does nothing
    train_model(train, out, model="ddpm", resume=True, **kwargs)
    _assert_same(before, _weights(out))
    # other settings: refused, naming what differs
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.001 vs now 0.002"):
        train_model(train, out, model="ddpm", resume=True, **{**kwargs, "lr": 2e-3})
    # without resume or overwrite the folder is protected
    with pytest.raises(FileExistsError, match="already exists"):
        train_model(train, out, model="ddpm", **kwargs)
    # training longer continues from the final checkpoint and equals a longer run from scratch
    train_model(train, out, model="ddpm", resume=True, **{**kwargs, "steps": 12})
    longer = train_model(train, tmp_path / "longer", model="ddpm", **{**kwargs, "steps": 12})
    _assert_same(_weights(out), _weights(longer))
    # only the last keep_checkpoints intermediate checkpoints stay (3: steps 3, 6, 9 of the first run, 9 kept)
    assert len(list((out / "checkpoints").glob("step-*"))) <= 3
    # an intermediate checkpoint is a complete model too (to sample at several training lengths)
    step6 = out / "checkpoints" / "step-0000006"
    assert load_model(step6).info["steps_done"] == 6


def test_checkpoint_of_another_family_or_channel_count_is_refused(store, tmp_path):
    train = store.where(split="train")
    kwargs = {**COMMON, **FAMILIES["ddpm"]}
    out = train_model(train, tmp_path / "run", model="ddpm", **kwargs)
    with pytest.raises(CheckpointError, match="'ddpm' checkpoint, not a 'gan'"):
        load_model(out, family="gan")
    # resuming a DDPM run as a GAN is refused before any weights are touched
    with pytest.raises(CheckpointError, match="model: checkpoint 'ddpm' vs now 'gan'"):
        train_model(train, out, model="gan", resume=True, **COMMON)
    one_channel = tmp_path / "one"
    with StoreWriter(one_channel, channels=["t1"], height=SIZE, width=SIZE) as w:
        w.append(np.zeros((4, 1, SIZE, SIZE), np.float32), [{"split": "train"}] * 4)
    with pytest.raises(CheckpointError, match="channels"):
        train_model(SliceStore.open(one_channel), out, model="ddpm", resume=True, **kwargs)
    # a truncated trainer state is named
    (out / "trainer.safetensors").write_bytes((out / "trainer.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trainer.safetensors"):
        train_model(train, out, model="ddpm", resume=True, **{**kwargs, "steps": 12})
