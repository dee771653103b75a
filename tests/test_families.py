"""Model families in one place (workbench.models.family): every registered family round-trips its
config through JSON, builds every network it saves, is read by every dispatcher, and an unknown
family is refused with the known ones listed.  Old-layout config.json files still load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.cli import build_parser
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import CheckpointError, WorkbenchError
from workbench.models.checkpoint import load_model, read_config, save_model
from workbench.models.family import FAMILIES, family_names, get_family
from workbench.models.scheduler import SchedulerConfig
from workbench.sample import sample_model
from workbench.train import train_model

CHANNELS = ["t1", "seg"]
PRESETS = [(name, preset) for name, family in sorted(FAMILIES.items()) for preset in sorted(family.config_class.PRESETS)]


@pytest.mark.parametrize("name, preset", PRESETS, ids=[f"{n}-{p}" for n, p in PRESETS])
def test_every_config_round_trips_through_json(name, preset):
    cls = get_family(name).config_class
    config = cls.preset(preset, image_size=64, channels=CHANNELS)
    text = config.to_json()
    back = cls.from_json(text)
    assert back == config and back.to_json() == text
    d = json.loads(text)
    assert d["family"] == name == cls.family and d["version"] == cls.VERSION and d["channels"] == CHANNELS
    if get_family(name).diffusion:  # the noise schedule is a diffusers scheduler config of its own
        assert d["scheduler"]["_class_name"] == "DDPMScheduler"
        # (the 3D family's section builds MONAI's schedulers: a SchedulerConfig subclass)
        assert isinstance(config.scheduler, SchedulerConfig)
        assert type(config.scheduler).from_dict(d["scheduler"]) == config.scheduler
        assert type(config.scheduler.build("ddim")).__name__ == "DDIMScheduler"


@pytest.mark.parametrize("name", family_names())
def test_every_family_builds_its_networks_and_names_its_parts(name):
    family = get_family(name)
    config = family.config_class.preset("tiny", image_size=32, channels=CHANNELS)
    assert family.trainer_class.family == name
    assert set(family.sampling_networks) <= set(family.networks)
    assert set(family.trainer_class.EMA_OF) <= set(family.networks)
    assert set(family.trainer_class.EMA_OF.values()) <= set(family.networks)
    for network in family.networks:
        assert isinstance(family.build(config, network), torch.nn.Module)
    assert family.makes_images == (family.sampler is not None)


def test_unknown_family_is_refused_everywhere_with_the_known_ones_listed(tmp_path):
    known = ", ".join(family_names())
    with pytest.raises(WorkbenchError, match=f"unknown model family 'vae'; the workbench has {known}"):
        get_family("vae")
    store = tmp_path / "store"
    with StoreWriter(store, channels=CHANNELS, height=16, width=16) as w:
        w.append(np.zeros((2, 2, 16, 16), np.float32), [{"split": "train"}] * 2)
    with pytest.raises(WorkbenchError, match=f"unknown model family 'vae'; the workbench has {known}"):
        train_model(SliceStore.open(store), tmp_path / "run", model="vae", steps=1, progress=False)
    # a checkpoint whose config names a family the workbench does not have
    folder = tmp_path / "ckpt"
    config = get_family("ddpm").config_class.preset("tiny", image_size=16, channels=CHANNELS,
                                                    block_out_channels=(8, 16), norm_num_groups=4)
    save_model(folder, {"unet": get_family("ddpm").build(config, "unet")}, config, {})
    (folder / "config.json").write_text(json.dumps({**config.to_dict(), "family": "vae"}))
    for read in (read_config, load_model):
        with pytest.raises(CheckpointError, match=f"config.json: unknown model family 'vae'; the workbench has {known}"):
            read(folder)
    # the command line offers the families that make images, from the registry
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--store", "s", "--out", "o", "--model", "vae"])
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "model")
    assert list(train.choices) == family_names(makes_images=True) == ["ddpm", "gan", "ldm", "ldm3d"]


def test_a_detector_checkpoint_makes_no_images(tmp_path):
    family = get_family("detector")
    config = family.config_class.preset("tiny", image_size=16, channels=CHANNELS, widths=(8, 16), head_dim=8)
    folder = save_model(tmp_path / "det", {"encoder": family.build(config, "encoder")}, config, {})
    with pytest.raises(WorkbenchError, match="a detector model makes no images.*ddpm, gan, ldm"):
        sample_model(folder, tmp_path / "synthetic", n=1, progress=False)


# -- configs written in the old layout ----------------------------------------------------------
#: a DDPM config.json as the workbench wrote it before the noise schedule had its own section (version 2)
OLD_DDPM = {
    "family": "ddpm", "image_size": 16, "channels": ["t1", "seg"], "block_out_channels": [8, 16],
    "layers_per_block": 1, "attention": False, "attention_head_dim": 8, "norm_num_groups": 4,
    "num_train_timesteps": 500, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
    "prediction_type": "v_prediction", "num_classes": 0, "preset": "tiny", "version": 2,
}
#: an LDM config.json of version 1 (the same flat layout)
OLD_LDM = {
    "family": "ldm", "image_size": 16, "channels": ["xray"], "latent_channels": 4, "ae_block_out_channels": [8, 16],
    "ae_layers_per_block": 1, "ae_norm_num_groups": 4, "ae_attention": False, "kl_weight": 1e-06,
    "recon_loss": "l1", "disc_weight": 0.0, "disc_start": 0, "disc_layers": 3, "disc_channels": 32,
    "unet_block_out_channels": [16, 32], "unet_layers_per_block": 1, "unet_attention": False,
    "unet_norm_num_groups": 4, "attention_head_dim": 8, "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "v_prediction",
    "num_classes": 0, "preset": None, "version": 1,
}


def test_old_layout_configs_are_migrated_when_read(tmp_path):
    ddpm = get_family("ddpm").config_class.from_dict(OLD_DDPM)
    assert ddpm.version == 3 and ddpm.scheduler == SchedulerConfig(
        num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=True)
    ldm = get_family("ldm").config_class.from_dict(OLD_LDM)
    assert ldm.version == 2 and ldm.scheduler.clip_sample is False  # the LDM never clipped latents
    assert ldm.scheduler.prediction_type == "v_prediction"
    # a whole old checkpoint loads and samples: weights written with the new code, config.json the old one
    folder = tmp_path / "old"
    nets = {name: get_family("ddpm").build(ddpm, name) for name in ("unet", "ema")}
    save_model(folder, nets, ddpm, {"steps": 1, "run": "old"})
    (folder / "config.json").write_text(json.dumps(OLD_DDPM))
    assert read_config(folder) == ddpm
    synthetic = sample_model(folder, tmp_path / "synthetic", n=2, steps=2, progress=False, bf16=False)
    assert synthetic.shape == (2, 2, 16, 16)
    assert synthetic.label_channels == ["seg"]
