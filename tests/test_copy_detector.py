"""The self-supervised copy detector: loss, augmentations, files, and planted shifted / rotated copies."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.data.store import default_label_channels
from workbench.errors import CheckpointError, WorkbenchError
from workbench.memorization.detector import (
    CONFIG,
    WEIGHTS,
    DetectorConfig,
    Encoder,
    augment_pair,
    embed,
    embedding_match_table,
    embedding_topk,
    load_detector,
    nt_xent_loss,
    save_detector,
    train_detector,
)
from workbench.search import topk_correlation

BRAIN = ("t1", "t1ce", "t2", "flair", "seg")


def _loop_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """NT-Xent written out as in the SimCLR paper, one view at a time."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / (2 * n)


# -- loss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_nt_xent_equals_a_loop_implementation(t):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(nt_xent_loss(z1, z2, t)) == pytest.approx(_loop_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_is_lower_for_aligned_views_than_for_shuffled_ones():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=g)
    z2 = z1 + 0.1 * torch.randn(32, 16, generator=g)
    aligned = float(nt_xent_loss(z1, z2, 0.07))
    shuffled = float(nt_xent_loss(z1, z2[torch.roll(torch.arange(32), 1)], 0.07))
    assert aligned < 0.5 < math.log(63) < shuffled
    with pytest.raises(WorkbenchError, match="at least 2"):
        nt_xent_loss(z1[:1], z2[:1])


# -- augmentation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [("xray",), BRAIN])
def test_augment_pair_is_reproducible_and_keeps_shapes(channels):
    cfg = DetectorConfig(image_size=24, channels=channels).validate()
    labels = [channels.index(c) for c in default_label_channels(channels)]  # as a store says
    x = torch.rand(4, len(channels), 24, 24, generator=torch.Generator().manual_seed(0))
    a1, a2 = augment_pair(x, torch.Generator().manual_seed(7), cfg, label_channels=labels)
    b1, b2 = augment_pair(x, torch.Generator().manual_seed(7), cfg, label_channels=labels)
    c1, _ = augment_pair(x, torch.Generator().manual_seed(8), cfg, label_channels=labels)
    assert a1.shape == a2.shape == x.shape and a1.dtype == torch.float32
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    assert float(a1.min()) >= 0 and float(a1.max()) <= 1
    if "seg" in channels:  # label channel: nearest neighbour, no jitter, so only the original values
        seg = x[:, 4].mul(4).round().div(4)
        s1, _ = augment_pair(torch.cat([x[:, :4], seg[:, None]], 1), torch.Generator().manual_seed(7), cfg,
                             label_channels=labels)
        assert set(torch.unique(s1[:, 4]).tolist()) <= set(torch.unique(seg).tolist()) | {0.0}
    with pytest.raises(WorkbenchError, match="channels"):
        augment_pair(torch.rand(2, 3, 24, 24), torch.Generator(), cfg)


# -- config and files ------------------------------------------------------------------------------
def test_config_round_trips_through_json_and_rejects_bad_values():
    cfg = DetectorConfig(image_size=64, channels=["t1", "flair"], widths=[16, 32, 64], max_translate=0.15).validate()
    back = DetectorConfig.from_json(cfg.to_json())
    assert back == cfg and back.channels == ("t1", "flair") and back.widths == (16, 32, 64)
    assert json.loads(cfg.to_json())["temperature"] == 0.07 and cfg.embedding_dim == 128
    for bad, msg in [({"temperature": 0}, "temperature"), ({"max_translate": 0.7}, "max_translate"),
                     ({"widths": (12, 32)}, "divisible"), ({"embedding_dim": 1}, "embedding_dim"),
                     ({"channels": ()}, "channels"), ({"image_size": 8}, "too often"), ({"flip": "yes"}, "flip")]:
        with pytest.raises(WorkbenchError, match=msg):
            DetectorConfig(**{"image_size": 64, "channels": ["t1"], **bad}).validate()
    d = cfg.to_dict()
    d["colour"] = 1
    with pytest.raises(CheckpointError, match="unknown keys"):
        DetectorConfig.from_dict(d, source="x.json")


def test_load_rejects_missing_and_truncated_files(tmp_path):
    cfg = DetectorConfig(image_size=16, channels=["t1"], widths=(8, 16)).validate()
    enc = Encoder(cfg)
    save_detector(tmp_path / "det", enc, {"seed": 0})
    loaded, cfg2, info = load_detector(tmp_path / "det")
    assert cfg2 == cfg and info == {"seed": 0} and not loaded.training
    x = torch.rand(3, 1, 16, 16)
    assert np.allclose(embed(loaded, x), embed(enc, x), atol=1e-6)
    w = tmp_path / "det" / WEIGHTS
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=WEIGHTS):
        load_detector(tmp_path / "det")
    (tmp_path / "det" / CONFIG).unlink()
    with pytest.raises(CheckpointError, match=CONFIG):
        load_detector(tmp_path / "det")


def test_a_detector_written_before_the_shared_loop_still_loads(tmp_path):
    # the first detectors were a folder of detector.json (config with "kind", version 1) + detector.safetensors
    from safetensors.torch import save_file

    from workbench.memorization.detector import KIND, LEGACY_CONFIG, LEGACY_WEIGHTS

    cfg = DetectorConfig(image_size=16, channels=["t1", "seg"], widths=(8, 16)).validate()
    enc = Encoder(cfg)
    folder = tmp_path / "old"
    folder.mkdir()
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("family", "preset")}
    (folder / LEGACY_CONFIG).write_text(json.dumps({"config": {"kind": KIND, **old, "version": 1},
                                                    "training": {"steps": 3, "seed": 1}}))
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(folder / LEGACY_WEIGHTS),
              metadata={"format": "pt", "workbench": KIND})
    loaded, cfg2, info = load_detector(folder)
    assert cfg2 == cfg and info == {"steps": 3, "seed": 1}
    x = torch.rand(3, 2, 16, 16)
    assert np.allclose(embed(loaded, x), embed(enc, x), atol=1e-6)
    (folder / LEGACY_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="detector.safetensors: missing.*train it again"):
        load_detector(folder)


def test_embed_checks_channels_and_size(phantom_store):
    enc = Encoder(DetectorConfig(image_size=32, channels=["t1", "flair"], widths=(8, 16)).validate())
    with pytest.raises(WorkbenchError, match="channels"):
        embed(enc, phantom_store)
    with pytest.raises(WorkbenchError, match="expects"):
        embed(enc, np.zeros((2, 2, 16, 16), np.float32))
    z = embed(enc, np.random.default_rng(0).random((3, 2, 32, 32), dtype=np.float32))
    assert z.shape == (3, 128) and z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)


def test_embedding_topk_is_exact_cosine_similarity():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 16)) + 0.5, rng.normal(size=(50, 16)) + 0.5  # non-zero mean: r != cosine
    values, indices = embedding_topk(q, r, k=3)
    qn, rn = q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)
    cos = qn @ rn.T
    want = np.argsort(-cos, axis=1, kind="stable")[:, :3]
    assert np.array_equal(indices, want)
    assert np.allclose(values, np.take_along_axis(cos, want, 1), atol=1e-12, rtol=0)


# -- planted copies ----------------------------------------------------------------------------------
def _rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    a = torch.tensor(np.deg2rad(degrees), dtype=torch.float32)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), zero], 1), torch.stack([a.sin(), a.cos(), zero], 1)], 1)
    xt = torch.from_numpy(x)
    grid = F.affine_grid(theta, list(xt.shape), align_corners=False)
    return F.grid_sample(xt, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()


@pytest.fixture(scope="module")
def trained(phantom_store, phantom_detector):
    # the session's detector (conftest.py): 600 steps at 32x32, three stages
    return load_detector(phantom_detector), phantom_store.where(split="train"), phantom_detector


def test_training_writes_the_detector_and_its_record(trained, phantom_store):
    (enc, cfg, info), train, out = trained
    assert cfg.channels == tuple(phantom_store.channels) and cfg.image_size == 32
    # a checkpoint folder of the "detector" family, written by the shared training loop
    assert json.loads((out / "config.json").read_text())["family"] == "detector" and info["model"] == "detector"
    assert info["label_channels"] == ["seg"] and info["augment"] == "none"
    losses = [value for _, value in info["loss"]]
    assert info["seed"] == 0 and info["steps"] == len(losses) == 600
    assert info["train_rows"] == train.rows.tolist() and info["train_seconds"] > 0
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0  # it learned something
    with pytest.raises(FileExistsError):
        train_detector(train, out, steps=1, progress=False)
    with pytest.raises(WorkbenchError, match="unknown option"):
        train_detector(train, "never-written", steps=1, progress=False, colour="red")


def test_detector_finds_shifted_and_rotated_copies(trained, phantom_store):
    (enc, cfg, info), train, _ = trained
    images = train.to_array()
    m = train.manifest.reset_index(drop=True)
    rng = np.random.default_rng(1)
    src = rng.choice(len(images), 60, replace=False)
    # shifts of 2 to 3 pixels in any direction (on 32x32 slices: 6-9 % of the field of view)
    moves = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if 2 <= math.hypot(dy, dx) <= 3.01]
    shifts = [moves[i] for i in rng.integers(len(moves), size=len(src))]
    shifted = np.stack([np.roll(images[s], d, axis=(1, 2)) for s, d in zip(src, shifts)])
    rotated = _rotate(images[src], rng.uniform(3, 5, len(src)) * rng.choice([-1, 1], len(src)))
    novel = phantom_store.where(split="test")

    def found(nearest):  # the source slice, or its z-1 / z+1 neighbour of the same subject
        return np.mean([m.subject[j] == m.subject[s] and abs(int(m.z[j]) - int(m.z[s])) <= 1
                        for j, s in zip(nearest, src)])

    ref = embed(enc, train)
    sim_shift, nn_shift = embedding_topk(embed(enc, shifted), ref)
    sim_rot, nn_rot = embedding_topk(embed(enc, rotated), ref)
    sim_novel, _ = embedding_topk(embed(enc, novel), ref)
    r_shift, pix_shift = topk_correlation(shifted, images, k=1, progress=False)
    det_rate, pix_rate = found(nn_shift[:, 0]), found(pix_shift[:, 0])
    print(f"\nshifted copies found: detector {det_rate:.0%}, pixel r {pix_rate:.0%}; rotated: detector "
          f"{found(nn_rot[:, 0]):.0%}; mean similarity shifted {sim_shift.mean():.3f}, rotated "
          f"{sim_rot.mean():.3f}, novel {sim_novel.mean():.3f}; mean pixel r of shifted {r_shift.mean():.3f}")
    assert det_rate >= 0.8
    assert found(nn_rot[:, 0]) >= 0.8
    assert sim_shift.mean() > sim_novel.mean() and sim_rot.mean() > sim_novel.mean()
    assert det_rate >= pix_rate

    table = embedding_match_table(enc, novel, train, k=2)
    assert len(table) == 2 * len(novel) and table.attrs["similarity"].startswith("cosine")
    assert np.allclose(table.loc[table["rank"] == 1, "r"].to_numpy(), sim_novel[:, 0])
