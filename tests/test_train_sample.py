"""DDPM training, checkpoints and DDIM sampling on a tiny SliceStore (seconds on a 2-core CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import CheckpointError, StoreError, WorkbenchError
from workbench.models import DDPMConfig, build_unet, load_checkpoint, read_config, save_checkpoint
from workbench.sample import image_seeds, sample_ddpm
from workbench.train import train_ddpm, training_view

SIZE = 32
# a small network so that tests stay fast; 2 levels -> image size must be even
SMALL = dict(block_out_channels=(8, 16), norm_num_groups=4)


def _blobs(rng, n, size=SIZE):
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 2, size, size), np.float32)
    for i in range(n):
        for c in range(2):
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
            out[i, c] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "store"
    rng = np.random.default_rng(0)
    images = _blobs(rng, 12)
    rows = []
    for i in range(12):
        subject = "sub-01" if i < 6 else "sub-02"
        rows.append({"subject": subject, "source": f"{subject}.nii.gz", "z": i % 6,
                     "split": "train" if i < 8 else "test"})
    with StoreWriter(path, channels=["t1", "flair"], height=SIZE, width=SIZE) as w:
        w.append(images, rows)
    return SliceStore.open(path)


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run-a"
    train = store.where(split="train")
    return train_ddpm(train, out, steps=6, batch_size=4, max_images=5, seed=3, progress=False,
                      warmup_steps=2, **SMALL)


def test_train_writes_checkpoint(checkpoint, store):
    for name in ("model.safetensors", "config.json", "training.json"):
        assert (checkpoint / name).is_file()
    info = json.loads((checkpoint / "training.json").read_text())
    train_rows = set(store.where(split="train").rows.tolist())
    assert len(info["train_rows"]) == 5 and set(info["train_rows"]) <= train_rows
    assert info["steps"] == 6 and info["seed"] == 3 and info["run"] == "run-a"
    assert len(info["loss"]) == 6 and all(np.isfinite(loss) for _, loss in info["loss"])
    assert info["store"] == str(store.path.resolve())
    assert info["train_seconds"] > 0
    view = training_view(checkpoint)
    assert view.rows.tolist() == info["train_rows"]
    # no temporary folder left behind
    assert [p.name for p in checkpoint.parent.iterdir()] == ["run-a"]


def test_train_subset_is_seeded(store, tmp_path):
    train = store.where(split="train")
    a = train_ddpm(train, tmp_path / "a", steps=1, batch_size=2, max_images=4, seed=7, progress=False, **SMALL)
    b = train_ddpm(train, tmp_path / "b", steps=1, batch_size=2, max_images=4, seed=7, progress=False, **SMALL)
    ra = json.loads((a / "training.json").read_text())["train_rows"]
    rb = json.loads((b / "training.json").read_text())["train_rows"]
    assert ra == rb
    wa, wb = load_checkpoint(a)[0].state_dict(), load_checkpoint(b)[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_load_round_trips(checkpoint):
    from safetensors.torch import load_file

    model, config, info = load_checkpoint(checkpoint)
    assert config == DDPMConfig.from_dict(json.loads((checkpoint / "config.json").read_text()))
    assert config.channels == ("t1", "flair") and config.image_size == SIZE
    assert config.block_out_channels == (8, 16)
    saved = load_file(str(checkpoint / "model.safetensors"))
    state = model.state_dict()  # the EMA copy: sampling uses it
    assert set(saved) == {f"unet.{k}" for k in state} | {f"ema.{k}" for k in state}
    assert all(torch.equal(saved[f"ema.{k}"], state[k]) for k in state)
    raw, _, _ = load_checkpoint(checkpoint, ema=False)
    assert all(torch.equal(saved[f"unet.{k}"], v) for k, v in raw.state_dict().items())
    # after 6 steps the average differs from the raw weights
    assert any(not torch.equal(saved[f"unet.{k}"], saved[f"ema.{k}"]) for k in state)
    assert info["run"] == "run-a"


def test_config_json_errors():
    # the JSON round trip of every family and preset is in test_families.py
    d = DDPMConfig.preset("tiny", image_size=64, channels=["a"]).to_dict()
    with pytest.raises(CheckpointError, match="unknown keys"):
        DDPMConfig.from_dict({**d, "dropout": 0.1})
    d["scheduler"] = {k: v for k, v in d["scheduler"].items() if k != "beta_schedule"}
    with pytest.raises(CheckpointError, match="scheduler.*missing keys.*beta_schedule"):
        DDPMConfig.from_dict(d)
    with pytest.raises(WorkbenchError, match="unknown DDPM preset"):
        DDPMConfig.preset("huge", image_size=64, channels=["a"])
    d = DDPMConfig.preset("tiny", image_size=64, channels=["a"]).to_dict()
    with pytest.raises(CheckpointError, match="'gan' model, not a 'ddpm'"):
        DDPMConfig.from_dict({**d, "family": "gan"})
    # a version-1 config (before families and class conditioning) still reads, unconditional
    old = {k: v for k, v in d.items() if k not in ("family", "num_classes")}
    assert DDPMConfig.from_dict({**old, "version": 1}).num_classes == 0


def test_sample_writes_synthetic_store(checkpoint, tmp_path):
    synth = sample_ddpm(checkpoint, tmp_path / "synth", n=5, seed=1, steps=3, batch_size=2, progress=False)
    assert isinstance(synth, SliceStore)
    assert synth.shape == (5, 2, SIZE, SIZE)
    assert synth.channels == ["t1", "flair"] and synth.kind == "synthetic"
    x = synth.to_array()
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    m = synth.manifest
    assert (m["split"] == "synthetic").all() and (m["model"] == "ddpm").all() and (m["run"] == "run-a").all()
    assert m["seed"].tolist() == image_seeds(1, 5).tolist()
    assert m["sample_index"].tolist() == list(range(5))
    assert synth.meta["checkpoint"] == str(checkpoint.resolve()) and synth.meta["steps"] == 3

    # same seed -> same images, whatever the batch size; another seed -> other images
    again = sample_ddpm(checkpoint, tmp_path / "again", n=5, seed=1, steps=3, batch_size=5, progress=False)
    np.testing.assert_allclose(again.to_array(), x, atol=2e-2)
    same = sample_ddpm(checkpoint, tmp_path / "same", n=5, seed=1, steps=3, batch_size=2, progress=False)
    np.testing.assert_array_equal(same.to_array(), x)
    other = sample_ddpm(checkpoint, tmp_path / "other", n=5, seed=2, steps=3, batch_size=2, progress=False)
    assert not np.allclose(other.to_array(), x)
    with pytest.raises(FileExistsError):
        sample_ddpm(checkpoint, tmp_path / "synth", n=2, steps=2, progress=False)


def test_sample_eta_is_seeded(checkpoint, tmp_path):
    a = sample_ddpm(checkpoint, tmp_path / "a", n=2, seed=4, steps=3, eta=1.0, bf16=False, progress=False)
    b = sample_ddpm(checkpoint, tmp_path / "b", n=2, seed=4, steps=3, eta=1.0, bf16=False, progress=False)
    np.testing.assert_array_equal(a.to_array(), b.to_array())


def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_raise(checkpoint, tmp_path):
    bad = _copy_checkpoint(checkpoint, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_config_mismatch_raises(checkpoint, tmp_path):
    bad = _copy_checkpoint(checkpoint, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["block_out_channels"] = [16, 16]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)
    config["layers_per_block"] = "two"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(bad)


def test_save_checkpoint_refuses_to_overwrite(checkpoint):
    model, config, info = load_checkpoint(checkpoint)
    with pytest.raises(FileExistsError):
        save_checkpoint(checkpoint, model, config, info)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(max_images=0), "max_images"),
    (dict(block_out_channels=(8, 16, 16, 16, 16, 16, 16)), "not divisible by 2\\*\\*\\(levels-1\\) = 64"),
    (dict(norm_num_groups=3), "norm_num_groups"),
    (dict(preset="huge"), "unknown DDPM preset"),
    (dict(dropout=0.1), "unknown DDPM config option"),
    (dict(image_size=64), "cannot be overridden"),
])
def test_bad_hyperparameters_fail_before_training(store, tmp_path, monkeypatch, kwargs, match):
    import workbench.models.ddpm as ddpm_module

    def no_model(*a, **k):  # training must not start
        raise AssertionError("build_unet was called")

    monkeypatch.setattr(ddpm_module, "build_unet", no_model)
    with pytest.raises(WorkbenchError, match=match):
        train_ddpm(store, tmp_path / "ckpt", progress=False, **{**SMALL, **kwargs})
    assert not (tmp_path / "ckpt").exists()


def test_empty_view_fails(store, tmp_path):
    with pytest.raises(StoreError, match="empty"):
        train_ddpm(store.where(split="validation"), tmp_path / "ckpt", progress=False)


def test_killed_run_leaves_no_checkpoint(store, tmp_path):
    def die(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ddpm(store, tmp_path / "ckpt", steps=10, batch_size=2, progress=False, callback=die, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_v_prediction_cosine_round_trip(store, tmp_path):
    ckpt = train_ddpm(store, tmp_path / "v", steps=2, batch_size=2, progress=False, lr=1e-3,
                      prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2", **SMALL)
    _, config, info = load_checkpoint(ckpt)
    assert config.scheduler.prediction_type == "v_prediction" and config.scheduler.beta_schedule == "squaredcos_cap_v2"
    assert np.isfinite(info["final_loss"])
    synth = sample_ddpm(ckpt, tmp_path / "s", n=2, steps=2, progress=False)
    assert synth.shape == (2, 2, SIZE, SIZE)


def test_ancestral_ddpm_sampler_is_per_image_and_seeded(checkpoint, tmp_path):
    a = sample_ddpm(checkpoint, tmp_path / "a", n=3, seed=2, steps=4, sampler="ddpm", batch_size=3, bf16=False,
                    progress=False)
    b = sample_ddpm(checkpoint, tmp_path / "b", n=3, seed=2, steps=4, sampler="ddpm", batch_size=1, bf16=False,
                    progress=False)
    np.testing.assert_allclose(a.to_array(), b.to_array(), atol=1e-5)  # an image does not depend on its batch
    ddim = sample_ddpm(checkpoint, tmp_path / "c", n=3, seed=2, steps=4, sampler="ddim", bf16=False, progress=False)
    assert not np.allclose(a.to_array(), ddim.to_array())
    assert a.meta["sampler"] == "ddpm"
    with pytest.raises(WorkbenchError, match="sampler must be one of"):
        sample_ddpm(checkpoint, tmp_path / "d", n=1, sampler="euler", progress=False)
    with pytest.raises(WorkbenchError, match="not class-conditional"):
        sample_ddpm(checkpoint, tmp_path / "e", n=1, labels=1, progress=False)


def test_augmentation_is_seeded_keeps_labels_and_range():
    from workbench.train.augment import Augment

    x = torch.zeros(4, 2, 16, 16)
    x[:, 0, 4:12, 3:9] = 0.8
    x[:, 1, 6:10, 5:8] = 0.5  # a label channel: values {0, 0.5}
    aug = Augment.parse("flip,affine", label_channels=[1])
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert set(torch.unique(a[:, 1]).tolist()) <= {0.0, 0.5}  # nearest neighbour: still labels
    assert not torch.equal(a, x)
    assert Augment.parse("none").enabled is False and Augment.parse(None).describe() == "none"
    with pytest.raises(WorkbenchError, match="unknown transform"):
        Augment.parse("flip,elastic")
