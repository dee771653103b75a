"""Latent diffusion parts: config, autoencoder, latent UNet, losses, encode/decode, scale and reconstruction error.

Tiny networks on 16-32 px images, so the whole file runs in seconds on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from workbench.errors import CheckpointError, WorkbenchError
from workbench.models.ddpm import DDPMConfig
from workbench.models.scheduler import SchedulerConfig
from workbench.models.ldm import (
    PRESETS,
    LDMConfig,
    PatchDiscriminator,
    autoencoder_loss,
    build_autoencoder,
    build_latent_unet,
    build_patch_discriminator,
    build_scheduler,
    decode,
    encode,
    latent_scale,
    patch_discriminator_loss,
    reconstruction_error,
)

# 2 autoencoder levels (factor 2) and a 2-level latent UNet: tiny and quick
TINY = dict(latent_channels=4, ae_block_out_channels=(8, 16), ae_layers_per_block=1, ae_norm_num_groups=4,
            ae_attention=False, unet_block_out_channels=(16, 32), unet_layers_per_block=1, unet_norm_num_groups=4,
            disc_channels=8, disc_layers=2)
CH5 = ["t1", "t1ce", "t2", "flair", "seg"]


def tiny_config(size=16, channels=("xray",), **kw) -> LDMConfig:
    # the noise schedule's options (beta_schedule, ...) go into the config's scheduler section
    schedule = {k: kw.pop(k) for k in SchedulerConfig.option_names() if k in kw}
    config = LDMConfig(image_size=size, channels=tuple(channels), **{**TINY, **kw})
    config.scheduler = dataclasses.replace(config.scheduler, **schedule)
    return config.validate()


def blobs(n, channels, size, seed=0) -> np.ndarray:
    """Smooth Gaussian blobs in [0, 1], shape (n, channels, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, channels, size, size), np.float32)
    for i in range(n):
        for c in range(channels):
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
            out[i, c] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return out


# -- shapes --------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [["xray"], CH5])
@pytest.mark.parametrize("size", [16, 32])
def test_shapes_through_autoencoder_and_latent_unet(channels, size):
    torch.manual_seed(0)
    config = tiny_config(size, channels)
    assert config.downsample_factor == 2 and config.latent_size == size // 2
    vae, unet = build_autoencoder(config), build_latent_unet(config)
    assert unet.config.sample_size == config.latent_size
    x = torch.rand(3, len(channels), size, size) * 2 - 1
    with torch.no_grad():
        z = encode(vae, x)
        assert z.shape == (3, 4, size // 2, size // 2)
        zs = encode(vae, x, sample=True, generator=torch.Generator().manual_seed(0))
        assert zs.shape == z.shape and not torch.equal(zs, z)
        assert torch.allclose(encode(vae, x, scale=2.5), 2.5 * z)
        out = unet(z, torch.tensor([0, 10, 999])).sample
        assert out.shape == z.shape
        images = decode(vae, z)
    assert images.shape == (3, len(channels), size, size)
    assert images.min() >= -1 and images.max() <= 1
    # decode(z * s, scale=s) is decode(z)
    with torch.no_grad():
        assert torch.allclose(decode(vae, z * 3.0, scale=3.0), images, atol=1e-5)


def test_three_level_autoencoder_downsamples_by_four():
    config = tiny_config(32, ae_block_out_channels=(8, 8, 16))
    assert (config.downsample_factor, config.latent_size, config.latent_shape) == (4, 8, (4, 8, 8))
    with torch.no_grad():
        z = encode(build_autoencoder(config), torch.zeros(1, 1, 32, 32))
    assert z.shape == (1, 4, 8, 8)


# -- config --------------------------------------------------------------------------------
def test_config_json_round_trip():
    config = tiny_config(32, CH5, num_classes=2, kl_weight=1e-5, recon_loss="mse", disc_weight=0.5, disc_start=7)
    again = LDMConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.ae_block_out_channels, tuple) and isinstance(again.unet_block_out_channels, tuple)
    assert isinstance(again.channels, tuple)
    d = config.to_dict()
    assert d["family"] == "ldm" and d["version"] == 2 and d["ae_block_out_channels"] == [8, 16]
    assert d["scheduler"]["beta_schedule"] == "squaredcos_cap_v2" and d["scheduler"]["clip_sample"] is False
    assert set(LDMConfig.TUPLE_FIELDS) == {"channels", "ae_block_out_channels", "unet_block_out_channels"}


def test_presets():
    assert set(PRESETS) == {"tiny", "small", "base"}
    for name in PRESETS:
        config = LDMConfig.preset(name, image_size=64, channels=CH5)
        assert config.preset == name and config.latent_size == 16
    tiny = LDMConfig.preset("tiny", image_size=64, channels=["xray"], num_classes=2)
    assert tiny.num_classes == 2 and tiny.in_channels == 1
    with pytest.raises(WorkbenchError, match="unknown LDM preset"):
        LDMConfig.preset("huge", image_size=64, channels=CH5)
    with pytest.raises(WorkbenchError, match="unknown LDM config option"):
        LDMConfig.preset("tiny", image_size=64, channels=CH5, block_out_channels=(8,))


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=18, ae_block_out_channels=(8, 8, 16)), "not divisible by the autoencoder's downsampling factor 4"),
    (dict(image_size=20, unet_block_out_channels=(16, 16, 32)), "latent size 10 .* not divisible by the latent UNet"),
    (dict(recon_loss="l2"), "recon_loss 'l2' is not one of"),
    (dict(num_classes=1), "num_classes must be 0"),
    (dict(kl_weight=-1.0), "kl_weight must be"),
    (dict(disc_weight=-0.1), "disc_weight must be"),
    (dict(ae_norm_num_groups=3), "ae_norm_num_groups 3 must divide"),
    (dict(unet_norm_num_groups=5), "unet_norm_num_groups 5 must divide"),
    (dict(prediction_type="x0"), "prediction_type 'x0'"),
    (dict(beta_schedule="cosine"), "beta_schedule 'cosine'"),
    (dict(disc_weight=0.5, disc_layers=3, image_size=16), "too small for a patch discriminator"),
    (dict(unet_attention=True, attention_head_dim=5), "attention_head_dim 5 must divide 32"),
])
def test_validation_errors(overrides, message):
    size = overrides.pop("image_size", 16)
    with pytest.raises(WorkbenchError, match=f"^LDM config: .*{message}"):
        tiny_config(size, **overrides)


def test_other_family_is_refused():
    ddpm = DDPMConfig.preset("tiny", image_size=64, channels=CH5).to_dict()
    with pytest.raises(CheckpointError, match="'ddpm' model, not a 'ldm' model"):
        LDMConfig.from_dict(ddpm)
    with pytest.raises(CheckpointError, match="'ldm' model, not a 'ddpm' model"):
        DDPMConfig.from_dict(tiny_config().to_dict())
    d = tiny_config().to_dict()
    del d["kl_weight"]
    with pytest.raises(CheckpointError, match="missing keys"):
        LDMConfig.from_dict(d)


def test_attention_switches():
    from diffusers.models.attention_processor import Attention

    def n_attention(model):
        return sum(isinstance(m, Attention) for m in model.modules())

    assert n_attention(build_autoencoder(tiny_config())) == 0
    assert n_attention(build_autoencoder(tiny_config(ae_attention=True))) == 2  # encoder and decoder mid blocks
    assert n_attention(build_latent_unet(tiny_config())) == 0
    assert n_attention(build_latent_unet(tiny_config(unet_attention=True))) > 0


def test_scheduler_for_latents():
    s = build_scheduler(tiny_config())
    assert s.config.clip_sample is False
    assert s.config.prediction_type == "v_prediction" and s.config.beta_schedule == "squaredcos_cap_v2"


def test_adversarial_switch():
    assert not tiny_config().adversarial_at(100)
    c = tiny_config(disc_weight=0.1, disc_start=5)
    assert not c.adversarial_at(4) and c.adversarial_at(5)


# -- autoencoder loss ------------------------------------------------------------------------
def test_autoencoder_loss_parts_and_reproducibility():
    torch.manual_seed(0)
    config = tiny_config(16, CH5)
    vae = build_autoencoder(config)
    x = torch.from_numpy(blobs(2, 5, 16)) * 2 - 1
    loss, parts, recon = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(parts) == {"recon", "kl", "adv", "total"} and parts["adv"] == 0.0
    assert parts["kl"] > 0 and parts["recon"] > 0
    assert parts["total"] == pytest.approx(parts["recon"] + config.kl_weight * parts["kl"], rel=1e-6)
    assert recon.shape == x.shape and recon.requires_grad
    # kl: KL(q || N(0, 1)) summed over each latent's elements, averaged over the batch
    with torch.no_grad():
        mean, logvar = vae.encode(x).latent_dist.parameters.chunk(2, dim=1)
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum() / x.shape[0]
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-5)
    again, parts2, _ = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, loss) and parts2 == parts
    other, _, _ = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other, loss)
    # mse: the reconstruction term is the mean squared error of the decoded sample
    mse_config = tiny_config(16, CH5, recon_loss="mse")
    _, parts_mse, rec = autoencoder_loss(vae, x, config=mse_config, generator=torch.Generator().manual_seed(1))
    assert parts_mse["recon"] == pytest.approx(float((rec.detach() - x).pow(2).mean()), rel=1e-5)


def test_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    config = tiny_config(16, ["xray"])
    vae = build_autoencoder(config)
    x = torch.from_numpy(blobs(4, 1, 16, seed=3)) * 2 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(30):
        loss, parts, _ = autoencoder_loss(vae, x, config=config, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(parts["recon"])
    assert all(math.isfinite(h) for h in history)
    assert np.mean(history[-5:]) < 0.5 * history[0], history


def test_adversarial_term_reaches_the_autoencoder():
    torch.manual_seed(0)
    config = tiny_config(16, CH5, disc_weight=0.5)
    vae, disc = build_autoencoder(config), build_patch_discriminator(config)
    x = torch.from_numpy(blobs(2, 5, 16)) * 2 - 1
    loss, parts, recon = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(0),
                                          discriminator=disc, use_adversarial=True)
    assert parts["adv"] != 0.0
    with torch.no_grad():
        expected_adv = -float(disc(recon).mean())
    assert parts["adv"] == pytest.approx(expected_adv, rel=1e-5, abs=1e-7)
    assert parts["total"] == pytest.approx(parts["recon"] + config.kl_weight * parts["kl"]
                                           + config.disc_weight * parts["adv"], rel=1e-6)
    loss.backward()
    # the discriminator is frozen for the generator term, and unfrozen again afterwards
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())
    with_adv = vae.decoder.conv_out.weight.grad.clone()
    vae.zero_grad()
    plain, _, _ = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(0))
    plain.backward()
    assert not torch.allclose(with_adv, vae.decoder.conv_out.weight.grad)  # the adversarial term adds gradient
    with pytest.raises(WorkbenchError, match="needs a discriminator"):
        autoencoder_loss(vae, x, config=config, use_adversarial=True)


def test_patch_discriminator_learns_and_ignores_batch_composition():
    torch.manual_seed(0)
    config = tiny_config(32, CH5, disc_weight=0.1, disc_layers=3, disc_channels=8)
    disc = build_patch_discriminator(config)
    assert isinstance(disc, PatchDiscriminator)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    real = torch.from_numpy(blobs(4, 5, 32)) * 2 - 1
    fake = torch.rand(4, 5, 32, 32) * 2 - 1
    logits = disc(real)
    assert logits.shape == (4, 1, 2, 2)
    assert torch.allclose(disc(real[:1]), logits[:1], atol=1e-6)  # no batch statistics
    opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(8):
        loss = patch_discriminator_loss(disc, real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(2.0, abs=0.2)  # untrained logits are near 0
    assert losses[-1] < losses[0] - 0.1, losses
    d = PatchDiscriminator(1, channels=8, layers=3)
    assert d(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 6, 6)


# -- scale and reconstruction error ------------------------------------------------------------
def test_latent_scale_gives_unit_variance():
    torch.manual_seed(0)
    config = tiny_config(16, CH5)
    vae = build_autoencoder(config)
    images = blobs(5, 5, 16)
    scale = latent_scale(vae, images, batch_size=2, progress=False)
    assert isinstance(scale, float) and math.isfinite(scale) and scale > 0
    assert vae.training  # eval mode only inside
    with torch.no_grad():
        z = encode(vae, torch.from_numpy(images) * 2 - 1, scale=scale)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)
    assert latent_scale(vae, torch.from_numpy(images), batch_size=32, progress=False) == pytest.approx(scale, rel=1e-5)
    with pytest.raises(WorkbenchError, match=r"must be in \[0, 1\]"):
        latent_scale(vae, images * 2 - 1, progress=False)
    with pytest.raises(WorkbenchError, match=r"shape \(N, C, H, W\)"):
        latent_scale(vae, images[0], progress=False)


def test_reconstruction_error_matches_hand_computation():
    torch.manual_seed(0)
    config = tiny_config(16, CH5)
    vae = build_autoencoder(config)
    images = blobs(5, 5, 16, seed=4)
    report = reconstruction_error(vae, images, batch_size=2, progress=False)
    assert vae.training
    with torch.no_grad():
        vae.eval()
        recon = decode(vae, encode(vae, torch.from_numpy(images) * 2 - 1)).numpy()
        vae.train()
    recon01 = (recon.astype(np.float64) + 1) / 2
    diff = recon01 - images
    mse = np.mean(diff ** 2)
    assert report["n_images"] == 5
    assert report["mse"] == pytest.approx(mse, rel=1e-4)
    assert report["mae"] == pytest.approx(np.mean(np.abs(diff)), rel=1e-4)
    assert report["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert sorted(report["per_channel"]) == [0, 1, 2, 3, 4]
    for c in range(5):
        mse_c = np.mean(diff[:, c] ** 2)
        assert report["per_channel"][c]["mse"] == pytest.approx(mse_c, rel=1e-4)
        assert report["per_channel"][c]["mae"] == pytest.approx(np.mean(np.abs(diff[:, c])), rel=1e-4)
        assert report["per_channel"][c]["psnr"] == pytest.approx(10 * np.log10(1 / mse_c), abs=1e-3)
    # the copy search's ceiling: each image's Pearson r with its reconstruction, as scipy defines it
    from scipy.stats import pearsonr
    r = [pearsonr(recon01[i].ravel(), images[i].ravel().astype(np.float64))[0] for i in range(5)]
    assert report["r_median"] == pytest.approx(np.median(r), abs=1e-5)
    assert report["r_min"] == pytest.approx(np.min(r), abs=1e-5)
    # tensors and another batch size give the same numbers
    again = reconstruction_error(vae, torch.from_numpy(images), batch_size=5, progress=False)
    assert again["mse"] == pytest.approx(report["mse"], rel=1e-5)


# -- conditioning and mixed precision --------------------------------------------------------
def test_class_conditional_latent_unet_depends_on_label():
    torch.manual_seed(0)
    config = tiny_config(16, ["xray"], num_classes=2)
    unet = build_latent_unet(config)
    assert unet.config.num_class_embeds == 2
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        a = unet(z, t, class_labels=torch.tensor([0, 0])).sample
        b = unet(z, t, class_labels=torch.tensor([1, 1])).sample
    assert not torch.allclose(a, b, atol=1e-4)
    assert build_latent_unet(tiny_config(16)).config.num_class_embeds is None


def test_bf16_autocast_forward_passes_are_finite():
    torch.manual_seed(0)
    config = tiny_config(32, CH5, disc_weight=0.1, unet_attention=True, ae_attention=True)
    vae, unet, disc = build_autoencoder(config), build_latent_unet(config), build_patch_discriminator(config)
    x = torch.from_numpy(blobs(2, 5, 32)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts, recon = autoencoder_loss(vae, x, config=config, generator=torch.Generator().manual_seed(0),
                                              discriminator=disc, use_adversarial=True)
        d_loss = patch_discriminator_loss(disc, x, recon.detach())
        with torch.no_grad():
            z = encode(vae, x)
            out = unet(z, torch.tensor([1, 900])).sample
            images = decode(vae, z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(d_loss)
    assert all(math.isfinite(v) for v in parts.values())
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert torch.isfinite(out).all() and torch.isfinite(images).all()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
