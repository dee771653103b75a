"""The StyleGAN2-type GAN (workbench.models.gan): config, networks, losses, DiffAugment, a short training run.

Small nets at 16-32 px so that the whole file runs in well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import json

import pytest
import torch

from workbench.errors import CheckpointError, WorkbenchError
from workbench.models.config import ModelConfig
from workbench.models.ddpm import DDPMConfig
from workbench.models.gan import (
    PRESETS,
    Discriminator,
    GANConfig,
    Generator,
    ModulatedConv2d,
    NoiseInjection,
    build_discriminator,
    build_generator,
    diff_augment,
    discriminator_loss,
    generator_loss,
    minibatch_std,
    modulated_conv2d,
    r1_penalty,
)

# small networks: 4..16 px have 16-32 feature channels
SMALL = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32)
BRATS = ("t1", "t1ce", "t2", "flair", "seg")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: one thread is faster, and much faster when other work shares the two cores
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(size=16, channels=("xray",), **kw):
    return GANConfig(image_size=size, channels=channels, **{**SMALL, **kw}).validate()


def _nets(config, seed=0):
    torch.manual_seed(seed)
    G, D = build_generator(config), build_discriminator(config)
    assert isinstance(G, Generator) and isinstance(D, Discriminator)
    return G, D


def _set_noise_strength(G, value):
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, NoiseInjection):
                m.strength.fill_(value)


# -- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [("xray",), BRATS])
@pytest.mark.parametrize("size", [16, 32])
def test_shapes_and_finite_output(channels, size):
    config = _config(size, channels)
    G, D = _nets(config)
    z = torch.randn(4, config.z_dim)
    images = G(z)
    assert images.shape == (4, len(channels), size, size) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert 0.05 < images.std().item() < 5  # linear output of a sensible scale, not all zeros or exploding
    logits = D(images)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    assert G.mapping(z).shape == (4, G.num_ws, config.w_dim)


def test_smallest_image_size():
    config = _config(8, BRATS, discriminator_architecture="skip")
    G, D = _nets(config)
    assert G.num_ws == 4  # 4x4: conv + image; 8x8: two convs + image (sharing the next style)
    with torch.no_grad():
        assert D(G(torch.randn(3, 16))).shape == (3,)


def test_tiny_preset_builds_at_64():
    config = GANConfig.preset("tiny", image_size=64, channels=BRATS)
    assert config.preset == "tiny" and config.z_dim == PRESETS["tiny"]["z_dim"]
    G, D = _nets(config)
    with torch.no_grad():
        images = G(torch.randn(2, config.z_dim))
        assert images.shape == (2, 5, 64, 64)
        assert D(images).shape == (2,)
    # channels per resolution follow min(channel_base // r, channel_max)
    assert [config.feature_channels(r) for r in config.resolutions] == \
        [min(config.channel_base // r, config.channel_max) for r in (4, 8, 16, 32, 64)]


# -- config --------------------------------------------------------------------------------------
def test_config_json_round_trip_and_presets():
    c = GANConfig.preset("small", image_size=32, channels=BRATS, num_classes=2, diffaugment="color,cutout",
                         generator_architecture="resnet", discriminator_architecture="skip")
    d = json.loads(c.to_json())
    assert d["family"] == "gan" and d["version"] == 1 and d["channels"] == list(BRATS)
    back = GANConfig.from_json(c.to_json())
    assert back == c and isinstance(back.channels, tuple)
    assert set(PRESETS) == {"tiny", "small", "base"}
    for name in PRESETS:
        assert GANConfig.preset(name, image_size=128, channels=["xray"]).preset == name
    with pytest.raises(WorkbenchError, match="unknown GAN preset"):
        GANConfig.preset("huge", image_size=64, channels=["xray"])
    with pytest.raises(WorkbenchError, match="unknown GAN config option"):
        GANConfig.preset("tiny", image_size=64, channels=["xray"], block_out_channels=(8,))


@pytest.mark.parametrize("kw, message", [
    (dict(image_size=48), "power of two"),
    (dict(image_size=4), "power of two"),
    (dict(num_classes=1), "num_classes must be 0"),
    (dict(generator_architecture="unet"), "generator_architecture 'unet'"),
    (dict(discriminator_architecture="wide"), "discriminator_architecture 'wide'"),
    (dict(r1_gamma=-1.0), "r1_gamma"),
    (dict(diffaugment="color,flip"), "flip"),
    (dict(z_dim=0), "z_dim must be a positive integer"),
    (dict(channel_base=8, image_size=16), "channel_base 8 is too small"),
    (dict(channels=()), "channels is empty"),
])
def test_validation_errors(kw, message):
    args = dict(image_size=16, channels=("xray",))
    args.update(kw)
    with pytest.raises(WorkbenchError, match=message):
        GANConfig(**args).validate()


def test_from_dict_rejects_other_families_and_bad_keys():
    ddpm = DDPMConfig.preset("tiny", image_size=32, channels=["t1"]).to_dict()
    with pytest.raises(CheckpointError, match="not a 'gan' model"):
        GANConfig.from_dict(ddpm)
    d = _config().to_dict()
    d["mystery"] = 1
    with pytest.raises(CheckpointError, match="unknown keys"):
        GANConfig.from_dict(d)
    assert issubclass(GANConfig, ModelConfig)


# -- building blocks -----------------------------------------------------------------------------
def test_demodulation_normalises_output_whatever_the_style_magnitude():
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 32, 3, w_dim=16, demodulate=True)
    with torch.no_grad():
        conv.affine.bias.zero_()  # styles = affine(w) is then linear in w: 10 w -> 10x styles
        x = torch.randn(4, 64, 32, 32)
        w = torch.randn(4, 16)
        y1, y10 = conv(x, w), conv(x, 10 * w)
        std1 = y1.flatten(1).std(dim=1)
        std10 = y10.flatten(1).std(dim=1)
        assert ((std1 > 0.85) & (std1 < 1.15)).all(), std1  # unit variance in, ~unit variance out
        torch.testing.assert_close(std10, std1, rtol=1e-3, atol=1e-4)
        conv.demodulate = False
        s1 = conv(x, w).flatten(1).std(dim=1)
        s10 = conv(x, 10 * w).flatten(1).std(dim=1)
        torch.testing.assert_close(s10 / s1, torch.full_like(s1, 10.0), rtol=1e-3, atol=1e-3)
        # the non-fused computation equals the grouped convolution with per-sample weights
        styles = torch.randn(4, 64)
        weight = conv.weight
        wt = weight[None] * styles[:, None, :, None, None] / (64 * 9) ** 0.5
        wt = wt * (wt.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        ref = torch.nn.functional.conv2d(x.reshape(1, 4 * 64, 32, 32), wt.reshape(4 * 32, 64, 3, 3),
                                         padding=1, groups=4).reshape(4, 32, 32, 32)
        torch.testing.assert_close(modulated_conv2d(x, weight, styles, padding=1), ref, rtol=1e-4, atol=1e-4)


def test_minibatch_std_layer():
    x = torch.randn(6, 8, 4, 4)
    out = minibatch_std(x, 4)  # 6 is not a multiple of 4: groups of 3
    assert out.shape == (6, 9, 4, 4)
    torch.testing.assert_close(out[:, :8], x)
    same = minibatch_std(x[:1].repeat(4, 1, 1, 1), 4)
    assert same[:, 8].abs().max() < 1e-3  # identical samples: no spread
    assert out[:, 8].min() > 0.3


# -- generator behaviour -------------------------------------------------------------------------
def test_truncation():
    G, _ = _nets(_config())
    z = torch.randn(4, 16)
    with torch.no_grad():
        same = G(z, truncation_psi=0.0, noise_mode="const")
        torch.testing.assert_close(same, same[:1].expand_as(same))
        free = G(z, truncation_psi=1.0, noise_mode="const")
        assert (free[0] - free[1]).abs().max() > 1e-2
        half = G(z, truncation_psi=0.5, noise_mode="const")
        assert (half[0] - half[1]).abs().mean() < (free[0] - free[1]).abs().mean()
        # update_w_avg tracks the mean of w with beta 0.995
        assert G.w_avg.abs().max() == 0
        w = G.mapping(z, update_w_avg=True)[:, 0]
        torch.testing.assert_close(G.w_avg, 0.005 * w.mean(0))


def test_noise_modes_and_seeded_randomness():
    G, _ = _nets(_config())
    _set_noise_strength(G, 0.5)  # strengths start at 0 (no effect); make the noise visible
    z = torch.randn(2, 16)
    with torch.no_grad():
        a = G(z, generator=torch.Generator().manual_seed(1))
        b = G(z, generator=torch.Generator().manual_seed(1))
        c = G(z, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a - c).abs().max() > 1e-2
        torch.testing.assert_close(G(z, noise_mode="const"), G(z, noise_mode="const"), rtol=0, atol=0)
        none = G(z, noise_mode="none")
        _set_noise_strength(G, 0.0)
        torch.testing.assert_close(none, G(z, noise_mode="random"), rtol=0, atol=0)
        with pytest.raises(WorkbenchError, match="noise_mode"):
            G(z, noise_mode="loud")


def test_style_mixing_uses_a_second_latent():
    G, _ = _nets(_config())
    z = torch.randn(3, 16)
    with torch.no_grad():
        plain = G(z, noise_mode="const")
        mixed = G(z, noise_mode="const", style_mixing_prob=1.0, generator=torch.Generator().manual_seed(0))
        again = G(z, noise_mode="const", style_mixing_prob=1.0, generator=torch.Generator().manual_seed(0))
    assert (plain - mixed).abs().max() > 1e-3
    torch.testing.assert_close(mixed, again, rtol=0, atol=0)


def test_class_conditioning():
    config = _config(num_classes=2)
    G, D = _nets(config)
    z = torch.randn(1, 16).repeat(4, 1)
    labels = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        images = G(z, labels, noise_mode="const")
        torch.testing.assert_close(images[0], images[2])
        assert (images[0] - images[1]).abs().max() > 1e-2
        logits = D(images[:1].repeat(2, 1, 1, 1), torch.tensor([0, 1]))
        assert abs(logits[0] - logits[1]) > 1e-3
        assert G(z[:2], 1, noise_mode="const").shape == (2, 1, 16, 16)  # one int label for the whole batch
        # per-class averages for truncation
        G.mapping(torch.randn(64, 16), torch.arange(64) % 2, update_w_avg=True)
        assert (G.w_avg_class[0] - G.w_avg_class[1]).abs().max() > 0
        t = G(torch.randn(4, 16), labels, truncation_psi=0.0, noise_mode="const")
        torch.testing.assert_close(t[0], t[2])
        assert (t[0] - t[1]).abs().max() > 1e-3
    with pytest.raises(WorkbenchError, match="class-conditional"):
        G(z)
    with pytest.raises(WorkbenchError, match="class-conditional"):
        D(images)
    with pytest.raises(WorkbenchError, match="labels must lie in 0..1"):
        G(z, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(WorkbenchError, match="expected 4 labels"):
        G(z, torch.tensor([0, 1]))
    G0, D0 = _nets(_config())
    with pytest.raises(WorkbenchError, match="unconditional"):
        G0(z, labels)


@pytest.mark.parametrize("g_arch", ["skip", "resnet"])
@pytest.mark.parametrize("d_arch", ["resnet", "skip", "orig"])
def test_architectures_run_and_backprop(g_arch, d_arch):
    config = _config(16, ("a", "b"), generator_architecture=g_arch, discriminator_architecture=d_arch)
    G, D = _nets(config)
    loss = generator_loss(D, G(torch.randn(4, 16), generator=torch.Generator().manual_seed(0)))
    loss.backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the architectures really differ
    n_img_layers = sum(1 for n, _ in G.named_parameters() if n.endswith("to_image.bias"))
    assert n_img_layers == (3 if g_arch == "skip" else 1)
    assert any("skip" in n for n, _ in D.named_parameters()) == (d_arch == "resnet")


def test_bf16_autocast_forward():
    config = _config(16, BRATS, num_classes=2)
    G, D = _nets(config)
    z, labels = torch.randn(4, 16), torch.tensor([0, 1, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = G(z, labels)
        logits = D(diff_augment(images, "color,translation,cutout", generator=torch.Generator().manual_seed(0)),
                   labels)
        loss = generator_loss(D, images, labels) + discriminator_loss(D, images, images, labels)
        r1 = r1_penalty(D, images, labels)
    assert torch.isfinite(images).all() and torch.isfinite(logits).all()
    assert torch.isfinite(loss) and torch.isfinite(r1) and r1.dtype == torch.float32
    loss.backward()


# -- losses --------------------------------------------------------------------------------------
def test_losses():
    config = _config()
    G, D = _nets(config)
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    fake = G(torch.randn(8, 16))
    # values match their definitions
    lg = generator_loss(D, fake)
    torch.testing.assert_close(lg, torch.nn.functional.softplus(-D(fake)).mean())
    assert lg.ndim == 0 and torch.isfinite(lg) and lg > 0
    # the D loss does not reach G
    ld = discriminator_loss(D, real, fake)
    ld.backward()
    assert all(p.grad is None for p in G.parameters())
    # a few D steps on fixed data lower the D loss
    fake = fake.detach()
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    first = None
    for _ in range(10):
        loss = discriminator_loss(D, real, fake)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert discriminator_loss(D, real, fake).item() < first - 0.1
    # R1: positive and differentiable w.r.t. D's parameters
    D.zero_grad(set_to_none=True)
    r1 = r1_penalty(D, real)
    assert r1.ndim == 0 and r1 > 0
    r1.backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert real.grad is None  # the caller's tensor is untouched
    # through an augmentation (gradient w.r.t. the un-augmented images), reproducible with a seed
    aug = [r1_penalty(D, real, augment="translation,cutout", generator=torch.Generator().manual_seed(3))
           for _ in range(2)]
    assert aug[0] > 0 and aug[0].item() == aug[1].item() and abs(aug[0].item() - r1.item()) > 1e-6


# -- DiffAugment ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 5])
def test_diff_augment(channels):
    policy = "color,translation,cutout"
    x = torch.rand(4, channels, 16, 16) * 2 - 1

    def aug(seed, inp=x):
        return diff_augment(inp, policy, generator=torch.Generator().manual_seed(seed))

    a, b, c = aug(0), aug(0), aug(1)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-2
    xg = x.clone().requires_grad_(True)
    aug(0, xg).square().sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert diff_augment(x, "") is x
    with pytest.raises(WorkbenchError, match="unknown DiffAugment"):
        diff_augment(x, "colour")


def test_diff_augment_operations():
    ones = torch.ones(8, 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    cut = diff_augment(ones, "cutout", generator=g)
    zero_frac = (cut == 0).float().mean(dim=(1, 2, 3))
    assert ((zero_frac > 0) & (zero_frac <= 0.25 + 1e-6)).all()  # a square of half the size, maybe clipped
    assert set(cut.unique().tolist()) <= {0.0, 1.0}
    # translation moves content by at most 2 px (1/8 of 16) and pads with zeros
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, 8, 8] = 1
    moved = diff_augment(x, "translation", generator=g)
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), torch.ones(8))
    pos = moved[:, 0].flatten(1).argmax(1)
    assert ((pos // 16 - 8).abs() <= 2).all() and ((pos % 16 - 8).abs() <= 2).all()
    assert (pos != 8 * 16 + 8).any()
    # colour of a 1-channel image: brightness and contrast only, an affine map of each image
    gray = torch.rand(4, 1, 16, 16)
    col = diff_augment(gray, "color", generator=g)
    for i in range(4):
        xs, ys = gray[i].flatten(), col[i].flatten()
        slope = ((xs - xs.mean()) * (ys - ys.mean())).sum() / (xs - xs.mean()).square().sum()
        torch.testing.assert_close(ys, ys.mean() + slope * (xs - xs.mean()), rtol=1e-4, atol=1e-4)
        assert 0.5 - 1e-4 <= slope <= 1.5 + 1e-4


# -- a short training run ------------------------------------------------------------------------
def _discs(n, size, generator):
    """Soft-edged bright discs (radius 3 px) at random positions on a dark background, in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = torch.rand(n, 2, generator=generator) * (size - 8) + 4
    dist = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2).sqrt()
    return (torch.sigmoid((3.0 - dist) * 1.5) * 2 - 1)[:, None]


def test_short_training_moves_samples_towards_the_data():
    torch.manual_seed(0)
    config = GANConfig(image_size=16, channels=("xray",), z_dim=32, w_dim=32, mapping_layers=2, channel_base=256,
                       channel_max=32, r1_gamma=1.0, diffaugment="translation").validate()
    G, D = build_generator(config), build_discriminator(config)
    g = torch.Generator().manual_seed(0)
    data = _discs(256, 16, g)
    target = data.mean(0)
    z_eval = torch.randn(256, config.z_dim, generator=g)

    def distance():
        with torch.no_grad():
            return (G(z_eval, noise_mode="const").mean(0) - target).square().mean().item()

    before = distance()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    r1_interval, batch = 4, 16
    for step in range(150):
        real = data[torch.randint(0, len(data), (batch,), generator=g)]
        with torch.no_grad():
            fake = G(torch.randn(batch, config.z_dim, generator=g), generator=g)
        loss_d = discriminator_loss(D, diff_augment(real, config.diffaugment, generator=g),
                                    diff_augment(fake, config.diffaugment, generator=g))
        if step % r1_interval == 0:
            loss_d = loss_d + r1_penalty(D, real) * (config.r1_gamma / 2 * r1_interval)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        fake = G(torch.randn(batch, config.z_dim, generator=g), generator=g, update_w_avg=True)
        loss_g = generator_loss(D, diff_augment(fake, config.diffaugment, generator=g))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    after = distance()
    assert after < 0.25 * before, (before, after)
    assert G.w_avg.abs().max() > 0
