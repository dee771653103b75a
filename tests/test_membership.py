"""Membership inference against the run's own model (workbench.evaluate.membership).

Two controls: a tiny DDPM trained to memorize 8 images tells them from held-out images (loss
attack AUROC near 1), and images the model never saw are not told apart (AUROC interval holds
0.5).  Then the SecMI, GAN-discriminator and latent-diffusion paths, seeding, and the errors
raised before any work.  16x16 single-channel random textures keep every model tiny: the file
runs in about a minute on a 2-core CPU, most of it the 400 training steps of the control model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.evaluate.membership import MembershipResult, default_timesteps, membership, secmi_defaults
from workbench.runs.run import open_run
from workbench.train import train_model

SIZE = 16
NET = dict(block_out_channels=(16, 32), norm_num_groups=8)


def _textures(rng, n, size=SIZE):
    """Smoothed white noise in [0, 1]: every image is its own, so only memorizing fits it."""
    from scipy.ndimage import gaussian_filter

    x = np.stack([gaussian_filter(rng.normal(size=(1, size, size)), (0, 1.2, 1.2)) for _ in range(n)])
    x -= x.min(axis=(1, 2, 3), keepdims=True)
    x /= x.max(axis=(1, 2, 3), keepdims=True)
    return x.astype(np.float32)


def _write(path, images, rows, channels=("t1",)):
    with StoreWriter(path, channels=list(channels), height=images.shape[2], width=images.shape[3]) as w:
        w.append(images, rows)
    return SliceStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """64 textures: 8 training-split patients and 8 held-out ones, 4 slices each, labels 0 / 1."""
    rng = np.random.default_rng(0)
    rows = [{"subject": f"sub-{i // 4:02d}", "source": f"sub-{i // 4:02d}.nii.gz", "z": i % 4,
             "split": "train" if i < 32 else "test", "label": i % 2} for i in range(64)]
    return _write(tmp_path_factory.mktemp("mia") / "store", _textures(rng, 64), rows)


@pytest.fixture(scope="module")
def memorized(store, tmp_path_factory):
    """A run whose DDPM saw 8 images 400 times each (no EMA: the trained UNet is what memorizes
    first); about 20 s on 2 idle cores."""
    folder = tmp_path_factory.mktemp("mia") / "run"
    train_model(store.where(split="train"), folder / "model", model="ddpm", steps=400, batch_size=8, lr=2e-3,
                max_images=8, seed=0, ema=False, bf16=False, checkpoint_every=None, progress=False, **NET)
    return open_run(folder)


@pytest.fixture(scope="module")
def memorized_result(memorized):
    return membership(memorized, n_boot=300, seed=0, bf16=False, progress=False)


@pytest.fixture(scope="module")
def small(store, tmp_path_factory):
    """A few steps of a class-conditional v-prediction DDPM with EMA: the paths, not the figures."""
    out = tmp_path_factory.mktemp("mia") / "small"
    return train_model(store.where(split="train"), out, model="ddpm", steps=3, batch_size=4, max_images=8, seed=1,
                       conditional=True, num_classes=2, prediction_type="v_prediction",
                       beta_schedule="squaredcos_cap_v2", bf16=False, checkpoint_every=None, progress=False, **NET)


@pytest.fixture(scope="module")
def gan(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("mia") / "gan"
    return train_model(store.where(split="train"), out, model="gan", steps=2, batch_size=4, max_images=8, seed=0,
                       bf16=False, checkpoint_every=None, progress=False)


def _unseen(store, run):
    """Training-split images the run's model never saw."""
    train = store.where(split="train")
    seen = set(run.train.rows.tolist())
    return train.take([i for i, r in enumerate(train.rows) if r not in seen])


# -- the controls ------------------------------------------------------------------------------------
def test_control_memorized_training_images_are_told_apart(memorized_result):
    r = memorized_result
    assert isinstance(r, MembershipResult) and r.family == "ddpm" and r.methods == ("loss", "secmi")
    assert r.n_members == 8 and r.n_nonmembers == 32  # run.train and run.test by default
    summary = r.summary()
    json.dumps(summary)  # JSON-safe
    loss = summary["loss"]
    assert loss["auroc"]["value"] > 0.9 and loss["auroc"]["low"] > 0.75, loss["auroc"]
    assert loss["tpr_at_1pct_fpr"]["value"] > 0.5
    assert loss["n_members"] == loss["n_members_seen"] == 8 and loss["n_nonmembers"] == 32
    assert loss["compares"] == "denoising loss" and loss["family"] == "ddpm"
    assert loss["timesteps"] == [50, 100, 200, 300] and loss["repeats"] == 2
    assert "float32" in loss["precision"] and loss["network"] == "unet"  # trained without EMA
    assert "tpr_note" in loss  # fewer than 100 non-members: the TPR is at zero false positives
    assert summary["secmi"]["compares"] == "SecMI t-error" and summary["secmi"]["timesteps"][-1] == 100
    s = r.scores
    assert list(s.columns) == ["set", "subject", "z", "label", "row", "seen", "loss", "secmi"]
    assert s["seen"].tolist() == [True] * 8 + [False] * 32
    assert np.isfinite(s[["loss", "secmi"]].to_numpy()).all() and (s["loss"] < 0).all()


def test_control_images_the_model_never_saw_are_not_told_apart(memorized, store):
    unseen = _unseen(store, memorized)
    assert len(unseen) == 24
    r = membership(memorized, members=unseen, nonmembers=memorized.test, n_boot=300, seed=0, bf16=False,
                   progress=False)
    summary = r.summary()
    for method in ("loss", "secmi"):
        auc = summary[method]["auroc"]
        assert auc["low"] < 0.5 < auc["high"], (method, auc)
    assert summary["loss"]["n_members_seen"] == 0


def test_subjects_ranks_the_training_patients_most_at_risk(memorized_result):
    r = memorized_result
    table = r.subjects()
    assert list(table.columns) == ["n_images", "mean_score", "max_score", "frac_above"]
    assert table["n_images"].sum() == r.n_members
    assert set(table.index) <= {f"sub-{i:02d}" for i in range(8)}
    assert table["frac_above"].between(0, 1).all()
    assert list(table["frac_above"]) == sorted(table["frac_above"], reverse=True)
    nonmember = r.scores.loc[r.scores["set"] == "nonmember", "loss"]
    assert table.attrs["threshold"] == pytest.approx(float(np.quantile(nonmember, 0.99)))
    assert table.attrs["method"] == "loss" and table.attrs["quantile"] == 0.99
    looser = r.subjects("loss", quantile=0.95)
    assert (looser["frac_above"].sum() >= table["frac_above"].sum())
    with pytest.raises(WorkbenchError, match="no 'discriminator' scores"):
        r.subjects("discriminator")
    with pytest.raises(WorkbenchError, match="quantile"):
        r.subjects(quantile=99)


# -- the paths ---------------------------------------------------------------------------------------
def test_secmi_and_loss_on_a_conditional_v_model_use_its_ema_and_are_seeded(small, store):
    members, others = store.where(split="train").take(range(6)), store.where(split="test").take(range(6))
    kw = dict(members=members, nonmembers=others, n_boot=50, bf16=False, progress=False)
    a = membership(small, seed=3, batch_size=4, **kw)
    assert a.settings["network"] == "ema" and a.settings["ema"] is True  # what sampling uses
    assert a.settings["prediction_type"] == "v_prediction"
    assert a.settings["secmi_path"] == list(range(0, 101, 10))
    assert np.isfinite(a.scores[["loss", "secmi"]].to_numpy()).all()
    # same seed: the same scores, whatever the batch size; another seed: other loss noise, same SecMI
    again = membership(small, seed=3, batch_size=4, **kw)
    assert again.scores.equals(a.scores)
    rebatched = membership(small, seed=3, batch_size=12, **kw)
    np.testing.assert_allclose(rebatched.scores["loss"], a.scores["loss"], rtol=1e-4)
    other = membership(small, seed=4, batch_size=4, **kw)
    assert not np.allclose(other.scores["loss"], a.scores["loss"])
    np.testing.assert_allclose(other.scores["secmi"], a.scores["secmi"], rtol=1e-5)
    assert a.summary() == again.summary()
    # the raw network, and explicit timesteps
    raw = membership(small, methods="loss", timesteps=(10, 20), repeats=1, ema=False, **kw)
    assert raw.settings["network"] == "unet" and raw.summary()["loss"]["timesteps"] == [10, 20]
    assert raw.methods == ("loss",) and "secmi" not in raw.scores
    # a timestep's noise depends on the seed and the timestep, not on which other timesteps are asked for
    parts = [membership(small, methods="loss", timesteps=(t,), repeats=1, ema=False, **kw).scores["loss"]
             for t in (10, 20)]
    np.testing.assert_allclose((parts[0] + parts[1]) / 2, raw.scores["loss"], rtol=1e-5)


def test_gan_discriminator_scores_do_not_depend_on_the_batch(gan, store):
    members, others = store.where(split="train").take(range(5)), store.where(split="test").take(range(7))
    kw = dict(members=members, nonmembers=others, n_boot=50, bf16=False, progress=False)
    r = membership(gan, batch_size=3, **kw)
    assert r.methods == ("discriminator",) and r.family == "gan"
    assert np.isfinite(r.scores["discriminator"]).all()
    assert r.settings["mbstd_group_size"] == 4 and len(r.settings["companions"]) == 3
    np.testing.assert_allclose(membership(gan, batch_size=12, **kw).scores["discriminator"],
                               r.scores["discriminator"], rtol=1e-4, atol=1e-5)
    s = r.summary()["discriminator"]
    assert s["compares"] == "discriminator score" and "analogue" in s["score"]
    assert "not" in s["comparable"] and s["timesteps"] is None
    with pytest.raises(WorkbenchError, match="a gan model has no \\['loss'\\] attack.*discriminator"):
        membership(gan, methods="loss", **kw)


def test_latent_diffusion_is_attacked_in_its_latent_space(store, tmp_path):
    ckpt = train_model(store.where(split="train"), tmp_path / "ldm", model="ldm", steps=2, ae_steps=2, batch_size=4,
                       max_images=8, seed=0, bf16=False, checkpoint_every=None, progress=False,
                       ae_block_out_channels=(8, 16), ae_norm_num_groups=4, latent_channels=2,
                       unet_block_out_channels=(16, 32), unet_norm_num_groups=8, unet_attention=False)
    members, others = store.where(split="train").take(range(4)), store.where(split="test").take(range(4))
    r = membership(ckpt, members=members, nonmembers=others, n_boot=20, bf16=False, progress=False)
    assert r.family == "ldm" and r.settings["space"] == "latent" and r.settings["network"] == "ema"
    assert r.settings["latent_scale"] > 0
    assert np.isfinite(r.scores[["loss", "secmi"]].to_numpy()).all()
    # v-prediction on a cosine schedule by default for latents
    assert r.settings["prediction_type"] == "v_prediction"


def test_defaults_scale_with_the_schedule():
    assert default_timesteps(1000) == (50, 100, 200, 300)
    assert default_timesteps(100) == (5, 10, 20, 30)
    assert secmi_defaults(1000) == (100, 10)
    t, step = secmi_defaults(50)
    assert t % step == 0 and 0 < t < 50


# -- errors, before any work -------------------------------------------------------------------------
def test_errors_are_clear_and_come_first(small, gan, memorized, store, tmp_path):
    from workbench.models.checkpoint import save_model
    from workbench.models.detector import DetectorConfig, build_encoder

    train, test = store.where(split="train"), store.where(split="test")
    kw = dict(n_boot=10, bf16=False, progress=False)
    with pytest.raises(WorkbenchError, match="unknown method\\(s\\) \\['lira'\\]; the methods are"):
        membership(small, methods=("loss", "lira"), members=train, nonmembers=test, **kw)
    with pytest.raises(WorkbenchError, match="1 members \\(images the model saw\\).*at least 2"):
        membership(small, members=train.take([0]), nonmembers=test, **kw)
    with pytest.raises(WorkbenchError, match="0 non-members.*at least 2"):
        membership(small, members=train, nonmembers=test.take([]), **kw)
    # a family that makes no images
    det = tmp_path / "detector"
    config = DetectorConfig(image_size=SIZE, channels=["t1"], widths=(8, 16)).validate()
    save_model(det, {"encoder": build_encoder(config)}, config, {})
    with pytest.raises(WorkbenchError, match="detector model, which makes no images"):
        membership(det, members=train, nonmembers=test, **kw)
    # images of another size or other channels than the model's: both shapes named
    rng = np.random.default_rng(1)
    small_images = _write(tmp_path / "s8", _textures(rng, 3, size=8), [{"split": "test"}] * 3)
    with pytest.raises(WorkbenchError, match="shape \\(C, H, W\\) = \\(1, 8, 8\\).*takes \\(1, 16, 16\\)"):
        membership(small, members=train, nonmembers=small_images, **kw)
    two = _write(tmp_path / "c2", np.concatenate([_textures(rng, 3)] * 2, axis=1), [{"split": "test"}] * 3,
                 channels=("t1", "flair"))
    with pytest.raises(WorkbenchError, match="\\(2, 16, 16\\).*takes \\(1, 16, 16\\)"):
        membership(small, members=two, nonmembers=test, **kw)
    other_name = _write(tmp_path / "flair", _textures(rng, 3), [{"split": "test", "label": 0}] * 3, channels=("flair",))
    with pytest.raises(WorkbenchError, match="channels \\['flair'\\].*trained on \\['t1'\\]"):
        membership(small, members=train, nonmembers=other_name, **kw)
    # sets that overlap, non-members the model saw, bad timesteps
    with pytest.raises(WorkbenchError, match="3 images .* in both the members and the non-members"):
        membership(small, members=train.take(range(5)), nonmembers=train.take(range(2, 8)), **kw)
    with pytest.raises(WorkbenchError, match="8 of the non-members .* trained on"):
        membership(memorized, members=_unseen(store, memorized), nonmembers=memorized.train, **kw)
    with pytest.raises(WorkbenchError, match="timesteps must be integers in 0..999"):
        membership(small, members=train, nonmembers=test, timesteps=(50, 1000), **kw)
    with pytest.raises(WorkbenchError, match="secmi_t=105 must be a multiple of secmi_interval=10"):
        membership(small, members=train, nonmembers=test, secmi_t=105, **kw)
    with pytest.raises(WorkbenchError, match="neither a checkpoint folder"):
        membership(tmp_path, **kw)
    with pytest.raises(WorkbenchError, match="is a SliceStore"):
        membership(store, **kw)
