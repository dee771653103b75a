"""Every model family trains and samples through the notebooks, on both built-in datasets.

The brain store comes from the session's phantom (5 channels); the chest X-ray store is made by
01_prepare_data from the X-ray phantom (1 channel, labels normal / pneumonia).  Networks are the
``tiny`` presets at 32 px, trained for a handful of steps: this checks the wiring (parameters,
checkpoints, sampling, labels, figures), not image quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scrapbook as sb

from workbench.data.store import SliceStore
from workbench.models.checkpoint import read_config
from workbench.runs import run_notebook

pytestmark = pytest.mark.slow

TRAIN = dict(preset="tiny", steps=2, batch_size=4, max_images=8, checkpoint_every=1, run_name=None, overwrite=True)
FAMILY_OPTIONS = {"ddpm": {}, "ldm": {"ae_steps": 2}, "gan": {"diffaugment": "color,translation,cutout"}}


@pytest.fixture(scope="module")
def xray_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("xray")
    run_notebook("01_prepare_data", out, dict(dataset="xray", source=str(out / "phantom"), phantom_images=16,
                                              store=str(out / "store"), size=32, xray_split="given"),
                 html=False, progress=False)
    record = sb.read_notebook(str(out / "01_prepare_data.ipynb")).scraps.data_dict
    assert record["n_train"] > 0 and record["n_test"] > 0
    return SliceStore.open(out / "store")


def _train_and_sample(store: SliceStore, out, model: str, *, conditional: bool):
    run_notebook("02_train", out, dict(store=str(store.path), out=str(out / "model"), model=model,
                                       conditional=conditional, options=FAMILY_OPTIONS[model], **TRAIN),
                 html=False, progress=False)
    run_notebook("03_sample", out, dict(checkpoint=str(out / "model"), out=str(out / "synthetic"), n=3, steps=2,
                                        batch_size=2, overwrite=True), html=False, progress=False)
    return SliceStore.open(out / "synthetic"), read_config(out / "model")


@pytest.mark.parametrize("model", ["ldm", "gan"])
def test_brain_families_through_the_notebooks(phantom_store, tmp_path, model):
    synth, config = _train_and_sample(phantom_store, tmp_path, model, conditional=False)
    assert config.family == model and config.channels == tuple(phantom_store.channels)
    assert synth.image_shape == phantom_store.image_shape and len(synth) == 3
    images = synth.to_array()
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert set(synth.manifest["model"]) == {model}
    info = json.loads((tmp_path / "model" / "training.json").read_text())
    assert info["steps_done"] == info["total_steps"] == 2 + FAMILY_OPTIONS[model].get("ae_steps", 0)
    if model == "ldm":
        assert info["reconstruction_train"]["psnr"] > 0 and info["latent_scale"] > 0
        cells = json.loads((tmp_path / "02_train.ipynb").read_text())["cells"]
        assert any("psnr_db" in json.dumps(c.get("outputs", [])) and "r_median" in json.dumps(c.get("outputs", []))
                   for c in cells)  # the report table was shown, with the copy search's ceiling
    scraps = sb.read_notebook(str(tmp_path / "03_sample.ipynb")).scraps.data_dict
    assert scraps["model"] == model and scraps["n_synthetic"] == 3


@pytest.mark.parametrize("model", ["ddpm", "ldm", "gan"])
def test_xray_families_conditional_through_the_notebooks(xray_store, tmp_path, model):
    synth, config = _train_and_sample(xray_store, tmp_path, model, conditional=True)
    assert config.channels == ("xray",) and config.num_classes == 2
    assert synth.image_shape == (1, 32, 32)
    # a conditional model makes the classes in turn by default, and says which is which
    assert synth.manifest["label"].tolist() == [0, 1, 0]
    assert np.isfinite(synth.to_array()).all()
