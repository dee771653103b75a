"""3D latent diffusion (ldm3d, MONAI's networks): config, networks, training on a store of volumes,
resume, sampling into a store of volumes, and the errors that keep 2D and 3D apart (issue 17).

Volumes of 16^3 voxels and networks a few channels wide, so the whole file runs in well under a
minute on a 2-core CPU.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import CheckpointError, WorkbenchError
from workbench.models.checkpoint import load_model
from workbench.models.family import get_family
from workbench.models.ldm3d import (
    PRESETS,
    LDM3DConfig,
    MonaiSchedulerConfig,
    autoencoder_loss,
    build_autoencoder,
    build_latent_unet,
    build_patch_discriminator,
    decode,
    encode,
    latent_scale,
    patch_logits,
    reconstruction_error,
)
from workbench.models.scheduler import SchedulerConfig
from workbench.sample import sample_model
from workbench.train import train_model
from workbench.train.augment import Augment

SIZE = 16
CHANNELS = ["t1", "seg"]
#: networks a few channels wide: 16^3 volumes -> 4^3 latents, a 2-level latent UNet
SMALL = dict(ae_block_out_channels=(4, 8, 8), ae_norm_num_groups=4, latent_channels=2,
             unet_block_out_channels=(8, 16), unet_norm_num_groups=4, attention_head_dim=8)
COMMON = dict(preset="tiny", steps=6, ae_steps=4, batch_size=2, seed=3, lr=1e-3, progress=False, log_every=1,
              **SMALL)


def small_config(size=SIZE, channels=CHANNELS, **kw) -> LDM3DConfig:
    return LDM3DConfig.preset("tiny", image_size=size, channels=channels, **{**SMALL, **kw})


def smooth_volumes(n, channels, size, seed=0) -> np.ndarray:
    """Gaussian blobs in [0, 1] (n, channels, size, size, size); the last channel a 0 / 1 label map."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.mgrid[0:size, 0:size, 0:size]) / size
    out = np.zeros((n, channels, size, size, size), np.float32)
    for i in range(n):
        centre, r = rng.uniform(0.35, 0.65, 3)[:, None, None, None], rng.uniform(0.2, 0.3)
        blob = np.exp(-((grid - centre) ** 2).sum(0) / (2 * r * r))
        for c in range(channels - 1):
            out[i, c] = blob * rng.uniform(0.6, 1.0)
        out[i, -1] = (blob > 0.7).astype(np.float32)
    return out


def write_volumes(path, n=4, size=SIZE, depth=None, channels=CHANNELS, seed=0) -> SliceStore:
    depth = size if depth is None else depth
    images = smooth_volumes(n, len(channels), size, seed)[:, :, :depth]
    rows = [{"subject": f"s{i}", "split": "train" if i < n - 1 else "test", "label": i % 2} for i in range(n)]
    with StoreWriter(path, channels=channels, height=size, width=size, depth=depth) as w:
        w.append(images, rows)
    return SliceStore.open(path)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> SliceStore:
    return write_volumes(tmp_path_factory.mktemp("ldm3d") / "vol16", n=5)


@pytest.fixture(scope="module")
def trained(volumes, tmp_path_factory):
    """A small ldm3d trained for 4 autoencoder + 6 UNet steps (a few seconds)."""
    out = tmp_path_factory.mktemp("ldm3d_run") / "model"
    return train_model(volumes.where(split="train"), out, model="ldm3d", augment="flip,affine", **COMMON)


def _weights(folder) -> dict:
    loaded = load_model(folder)
    return {f"{m}.{k}": v for m, net in loaded.modules.items() for k, v in net.state_dict().items()}


# -- config --------------------------------------------------------------------------------
def test_presets_round_trip_through_json_and_describe_volumes():
    assert set(PRESETS) == {"tiny", "small", "base"}
    for name in PRESETS:
        config = LDM3DConfig.preset(name, image_size=64, channels=["t1", "t1ce", "t2", "flair", "seg"])
        back = LDM3DConfig.from_json(config.to_json())
        assert back == config and back.to_json() == config.to_json()
        assert isinstance(back.scheduler, MonaiSchedulerConfig)
        assert config.image_shape == (5, 64, 64, 64) and config.latent_shape == (4, 16, 16, 16)
    d = json.loads(small_config(num_classes=2, disc_weight=0.5, disc_layers=2).to_json())
    assert d["family"] == "ldm3d" and d["version"] == 1 and d["ae_block_out_channels"] == [4, 8, 8]
    assert d["scheduler"]["_library"] == "monai" and d["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert get_family("ldm3d").spatial_dims == 3 and get_family("ldm").spatial_dims == 2


def test_schedulers_are_monai_with_the_diffusers_schedule():
    from diffusers import DDPMScheduler as DiffusersDDPM
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    for schedule in ("squaredcos_cap_v2", "linear", "scaled_linear"):
        s = MonaiSchedulerConfig(beta_schedule=schedule, prediction_type="v_prediction", clip_sample=False)
        train, ddim = s.build(), s.build("ddim", steps=10)
        assert isinstance(train, DDPMScheduler) and isinstance(ddim, DDIMScheduler) and len(ddim.timesteps) == 10
        # the same noise levels as the 2D families' diffusers schedule of the same settings
        ref = DiffusersDDPM.from_config(SchedulerConfig(**s.__dict__).to_dict()).alphas_cumprod
        assert torch.allclose(train.alphas_cumprod, ref, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=18), "volume size 18 is not divisible by the autoencoder's downsampling factor 4"),
    (dict(image_size=20, unet_block_out_channels=(8, 16, 16)), "latent size 5 .* not divisible by the latent UNet"),
    (dict(attention_head_dim=5), "attention_head_dim 5 must divide 16"),
    (dict(ae_norm_num_groups=3), "ae_norm_num_groups 3 must divide"),
    (dict(disc_weight=0.5, disc_layers=3), "too small for a patch discriminator"),
    (dict(num_classes=1), "num_classes must be 0"),
    (dict(beta_schedule="cosine"), "beta_schedule 'cosine'"),
])
def test_validation_errors(overrides, message):
    size = overrides.pop("image_size", SIZE)
    with pytest.raises(WorkbenchError, match=f"^LDM3D config: .*{message}"):
        small_config(size, **overrides)


def test_unknown_preset_and_option_are_refused(volumes, tmp_path):
    with pytest.raises(WorkbenchError, match=r"unknown LDM3D preset 'huge'; choose one of \['base', 'small', 'tiny'\]"):
        LDM3DConfig.preset("huge", image_size=32, channels=CHANNELS)
    with pytest.raises(WorkbenchError, match="unknown LDM3D preset 'huge'"):
        train_model(volumes, tmp_path / "run", model="ldm3d", preset="huge", steps=1, progress=False)
    with pytest.raises(WorkbenchError, match="unknown LDM3D config option"):
        train_model(volumes, tmp_path / "run", model="ldm3d", steps=1, progress=False, block_out_channels=(8,))
    assert not (tmp_path / "run").exists()


# -- networks ------------------------------------------------------------------------------
def test_shapes_through_autoencoder_unet_and_discriminator():
    torch.manual_seed(0)
    config = small_config(num_classes=2, disc_layers=2)
    assert (config.downsample_factor, config.latent_shape) == (4, (2, 4, 4, 4))
    vae, unet, disc = build_autoencoder(config), build_latent_unet(config), build_patch_discriminator(config)
    x = torch.rand(3, 2, SIZE, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        z = encode(vae, x)
        assert z.shape == (3, 2, 4, 4, 4)
        zs = encode(vae, x, sample=True, generator=torch.Generator().manual_seed(0))
        assert zs.shape == z.shape and not torch.equal(zs, z)
        assert torch.allclose(encode(vae, x, scale=2.5), 2.5 * z)
        assert unet(z, timesteps=torch.tensor([0, 10, 999]), class_labels=torch.tensor([0, 1, 1])).shape == z.shape
        out = decode(vae, z)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
        assert torch.allclose(decode(vae, z * 3.0, scale=3.0), out, atol=1e-5)
        assert patch_logits(disc, x).shape[:2] == (3, 1)


def test_autoencoder_loss_is_seeded_and_measures_in_unit_range():
    torch.manual_seed(0)
    config = small_config(disc_weight=0.5, disc_layers=2)
    vae, disc = build_autoencoder(config), build_patch_discriminator(config)
    x = torch.from_numpy(smooth_volumes(2, 2, SIZE)) * 2 - 1

    def loss(seed, adversarial=False):
        return autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(seed),
                                discriminator=disc, use_adversarial=adversarial)

    total, parts, recon = loss(1)
    assert recon.shape == x.shape and set(parts) == {"recon", "kl", "adv", "total"} and parts["adv"] == 0.0
    assert loss(1)[1] == parts and loss(2)[1] != parts
    assert loss(1, adversarial=True)[1]["adv"] != 0.0
    volumes = smooth_volumes(3, 2, SIZE)
    assert latent_scale(vae, volumes) > 0
    err = reconstruction_error(vae, volumes, batch_size=2)
    assert err["n_images"] == 3 and set(err["per_channel"]) == {0, 1} and 0 < err["mse"] < 1
    with torch.no_grad():
        vae.eval()
        x = torch.from_numpy(volumes) * 2 - 1
        recon = decode(vae, encode(vae, x)).double().numpy()
        vae.train()
    r = [np.corrcoef(recon[i].ravel(), volumes[i].ravel())[0, 1] for i in range(3)]
    assert err["r_median"] == pytest.approx(np.median(r), abs=1e-5) and err["r_min"] == pytest.approx(min(r), abs=1e-5)
    with pytest.raises(WorkbenchError, match=r"volumes must be in \[0, 1\]"):
        latent_scale(vae, volumes * 2 - 1)
    with pytest.raises(WorkbenchError, match=r"expected volumes of shape \(N, C, D, H, W\)"):
        latent_scale(vae, volumes[:, :, 0])


def test_augmentation_of_volumes_flips_left_right_and_keeps_labels():
    x = torch.from_numpy(smooth_volumes(6, 2, SIZE, seed=1))
    gen = torch.Generator().manual_seed(0)
    flipped = Augment.parse("flip", label_channels=[1])(x, gen)
    for a, b in zip(flipped, x):  # each volume is itself or its mirror along the last (left-right) axis
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    aug = Augment.parse("flip,affine", label_channels=[1])
    aug.brightness = aug.contrast = 0.1
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(0)))  # seeded
    assert set(out[:, 1].unique().tolist()) <= {0.0, 1.0}  # the label channel stays a label map
    assert out.min() >= 0 and out.max() <= 1


# -- training ------------------------------------------------------------------------------
def test_tiny_train_writes_a_3d_checkpoint(trained, volumes):
    info = json.loads((trained / "training.json").read_text())
    assert info["family"] == "ldm3d" and info["steps_done"] == info["total_steps"] == 10
    assert info["image_shape"] == [2, SIZE, SIZE, SIZE] and info["label_channels"] == ["seg"]
    assert info["latent_scale"] > 0 and info["reconstruction_train"]["n_images"] == 4
    assert {"ae_recon", "ae_kl", "loss"} <= set(info["losses"])
    assert [s for s, _ in info["loss"]] == list(range(5, 11))  # the UNet loss is logged from step ae_steps + 1
    loaded = load_model(trained)
    assert set(loaded.modules) == {"autoencoder", "unet", "ema"} and loaded.config.image_shape == (2, 16, 16, 16)
    assert type(loaded.modules["unet"]).__module__.startswith("monai.")


def test_autoencoder_loss_decreases(volumes, tmp_path):
    out = train_model(volumes.where(split="train"), tmp_path / "run", model="ldm3d", preset="tiny", steps=1,
                      ae_steps=40, batch_size=2, seed=0, progress=False, log_every=10, **SMALL)
    recon = [v for _, v in json.loads((out / "training.json").read_text())["losses"]["ae_recon"]]
    assert recon[-1] < 0.7 * recon[0]


@pytest.mark.parametrize("stop_at", [5, 8], ids=["killed-in-autoencoder-phase", "killed-in-unet-phase"])
def test_interrupted_and_resumed_run_ends_with_the_uninterrupted_weights(volumes, tmp_path, stop_at):
    class Killed(Exception):
        pass

    def kill(step, loss):
        if step == stop_at:
            raise Killed

    # everything the family has: the discriminator, class labels, augmentation of volumes, EMA
    kwargs = dict(COMMON, steps=6, ae_steps=4, checkpoint_every=3, augment="flip,affine", conditional=True,
                  disc_weight=0.5, disc_start=2, disc_layers=2)
    train = volumes.where(split="train")
    with pytest.raises(Killed):
        train_model(train, tmp_path / "killed", model="ldm3d", callback=kill, **kwargs)
    assert not (tmp_path / "killed" / "training.json").exists()
    train_model(train, tmp_path / "killed", model="ldm3d", resume=True, **kwargs)
    whole = train_model(train, tmp_path / "whole", model="ldm3d", **kwargs)
    a, b = _weights(tmp_path / "killed"), _weights(whole)
    assert set(a) == set(b) and "discriminator.final_conv.conv.weight" in a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    info = json.loads((tmp_path / "killed" / "training.json").read_text())
    assert info["resumed_at"] == [3 * (stop_at // 3)]
    assert info["latent_scale"] == json.loads((whole / "training.json").read_text())["latent_scale"]
    # a checkpoint of the autoencoder steps has no latent UNet to sample with
    early = tmp_path / "whole" / "checkpoints" / "step-0000003"
    with pytest.raises(WorkbenchError, match="step-0000003: has no latent_scale .* saved during the autoencoder"):
        sample_model(early, tmp_path / "early", n=1, steps=2, progress=False)
    # the class-conditional model makes the classes asked for
    synth = sample_model(whole, tmp_path / "synthetic", n=2, steps=2, labels=[1, 0], progress=False)
    assert list(synth.manifest["label"]) == [1, 0] and synth.shape == (2, 2, SIZE, SIZE, SIZE)


# -- sampling ------------------------------------------------------------------------------
def test_sample_writes_a_store_of_volumes(trained, tmp_path):
    synth = sample_model(trained, tmp_path / "synthetic", n=3, steps=4, seed=7, batch_size=2, progress=False)
    assert synth.is_volume and synth.shape == (3, 2, SIZE, SIZE, SIZE) and synth.kind == "synthetic"
    m = synth.manifest
    assert list(m["model"]) == ["ldm3d"] * 3 and list(m["run"]) == ["model"] * 3 and m["seed"].nunique() == 3
    assert list(m["sample_index"]) == [0, 1, 2] and (m["split"] == "synthetic").all()
    assert synth.label_channels == ["seg"]
    images = synth.to_array()
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    # a volume depends on its seed only, not on the batch it was made in
    alone = sample_model(trained, tmp_path / "alone", n=3, steps=4, seed=7, batch_size=1, progress=False)
    np.testing.assert_allclose(alone.to_array(), images, atol=1e-4)
    ddim_noisy = sample_model(trained, tmp_path / "eta", n=1, steps=4, seed=7, eta=1.0, progress=False)
    assert not np.allclose(ddim_noisy.to_array(), images[:1])


def test_ancestral_sampling_needs_every_timestep(trained, tmp_path):
    with pytest.raises(WorkbenchError, match="ancestral .* needs steps=1000 .* use sampler='ddim'"):
        sample_model(trained, tmp_path / "synthetic", n=1, steps=20, sampler="ddpm", progress=False)
    assert not (tmp_path / "synthetic").exists()


# -- 2D and 3D kept apart ------------------------------------------------------------------
def test_a_2d_family_refuses_a_store_of_volumes(volumes, tmp_path):
    for model in ("ddpm", "ldm", "gan"):
        with pytest.raises(WorkbenchError, match=rf"{volumes.path}: is a store of 3D volumes .* model '{model}' "
                                                 rf"trains on 2D slices: use model='ldm3d', or cut .*axial_slice_store"):
            train_model(volumes, tmp_path / "run", model=model, steps=1, progress=False)
    assert not (tmp_path / "run").exists()


def test_ldm3d_refuses_a_store_of_slices_and_volumes_that_are_not_cubes(tmp_path):
    slices = tmp_path / "slices"
    with StoreWriter(slices, channels=CHANNELS, height=SIZE, width=SIZE) as w:
        w.append(np.zeros((2, 2, SIZE, SIZE), np.float32), [{"split": "train"}] * 2)
    with pytest.raises(WorkbenchError, match=rf"{slices}: is a store of 2D slices .* model 'ldm3d' trains on 3D "
                                             rf"volumes: .*prepare_volume_store.* \(ddpm, gan, ldm\)"):
        train_model(SliceStore.open(slices), tmp_path / "run", model="ldm3d", steps=1, progress=False)
    flat = write_volumes(tmp_path / "flat", n=2, depth=8)
    with pytest.raises(WorkbenchError, match=rf"{flat.path}: volumes are 8x16x16 voxels .* needs cubes"):
        train_model(flat, tmp_path / "run", model="ldm3d", steps=1, progress=False)
    odd = write_volumes(tmp_path / "odd", n=2, size=18)
    with pytest.raises(WorkbenchError, match="volume size 18 is not divisible by the autoencoder's downsampling"):
        train_model(odd, tmp_path / "run", model="ldm3d", steps=1, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_folder_that_mixes_2d_and_3d_is_refused(trained, tmp_path):
    # a 2D LDM's config.json beside the 3D model's weights and training record
    mixed = tmp_path / "mixed"
    shutil.copytree(trained, mixed)
    config2d = get_family("ldm").config_class.preset("tiny", image_size=SIZE, channels=CHANNELS)
    (mixed / "config.json").write_text(config2d.to_json())
    for call in (lambda: load_model(mixed), lambda: sample_model(mixed, tmp_path / "s", n=1, progress=False)):
        with pytest.raises(CheckpointError, match=r"trained on 3D volumes of shape \(2, 16, 16, 16\), but .*config.json "
                                                  r"describes a ldm model of 2D slices \(2, 16, 16\); the folder mixes"):
            call()
    # without the training record's shape, the weights still tell: they are an ldm3d's
    info = json.loads((mixed / "training.json").read_text())
    del info["image_shape"]
    (mixed / "training.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="weights of a 'ldm3d' model but config.json says 'ldm'"):
        sample_model(mixed, tmp_path / "s", n=1, progress=False)
    # a 2D reconstruction report refuses the 3D checkpoint
    from workbench.train.ldm import reconstruction_report

    with pytest.raises(CheckpointError, match="'ldm3d' checkpoint, not a 'ldm' one"):
        reconstruction_report(trained, tmp_path / "unused")
    assert not (tmp_path / "s").exists()


def test_reconstruction_report_of_volumes(trained, volumes, tmp_path):
    from workbench.train.ldm3d import reconstruction_report

    table = reconstruction_report(trained, volumes)
    assert list(table.index) == ["train", "test"] and list(table["volumes"]) == [4, 1]
    assert ((table["r_median"] > -1) & (table["r_median"] <= 1)).all()
    # workbench.reconstruction_report reads the family and gives the same table for a 3D checkpoint
    import workbench

    assert workbench.reconstruction_report(trained, volumes).equals(table)
    ddpm = tmp_path / "ddpm"  # a folder whose config.json says DDPM: no autoencoder to report on
    shutil.copytree(trained, ddpm)
    (ddpm / "config.json").write_text(get_family("ddpm").config_class.preset("tiny", image_size=16, channels=list(CHANNELS)).to_json())
    with pytest.raises(WorkbenchError, match="'ddpm' checkpoint has no autoencoder"):
        workbench.reconstruction_report(ddpm, volumes)
    assert {"psnr_db", "psnr_db t1", "psnr_db seg"} <= set(table.columns) and (table["mse"] > 0).all()
    slices = tmp_path / "slices"
    with StoreWriter(slices, channels=CHANNELS, height=SIZE, width=SIZE) as w:
        w.append(np.zeros((1, 2, SIZE, SIZE), np.float32), [{"split": "train"}])
    with pytest.raises(WorkbenchError, match=r"slices: holds images of shape \(2, 16, 16\); the autoencoder"):
        reconstruction_report(trained, slices)


def test_the_brain_phantom_as_volumes_trains_and_samples_end_to_end(phantom_dir, tmp_path):
    from workbench.data.volumes import prepare_volume_store

    store = prepare_volume_store(phantom_dir, tmp_path / "vol16", size=SIZE, n_test=1, progress=False)
    out = train_model(store.where(split="train"), tmp_path / "model", model="ldm3d", augment="flip",
                      **dict(COMMON, steps=2, ae_steps=2))
    synth = sample_model(out, tmp_path / "synthetic", n=2, steps=3, progress=False)
    assert synth.shape == (2, 5, SIZE, SIZE, SIZE) and synth.channels == store.channels
    assert synth.label_channels == store.label_channels == ["seg"]
    assert json.loads((synth.path / "store.json").read_text())["train_store"] == str(store.path.resolve())
