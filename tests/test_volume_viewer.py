"""The volume viewer without a browser: order by r, linked cursor, channel / window / overlay, the
slice profile, marks, bad input.  (The same widget in chromium: tests/test_volume_viewer_browser.py.)
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from PIL import Image

from workbench.data.store import SliceStore, StoreWriter
from workbench.search import topk_correlation
from workbench.widgets import VolumeViewer, slice_profile
from workbench.widgets.render import CROSSHAIR_RGB
from workbench.widgets.volume_viewer import VIEWS, cursor_at, profile_z, view_plane

D, H, W = 12, 14, 16  # not a cube: every view has its own shape
CHANNELS = ["t1", "flair", "seg"]
COPIES = {0: (3, 0.02), 1: (1, 0.08), 2: (0, 0.25)}  # synthetic volume: (training volume copied, noise)


def _smooth(rng, shape):
    from scipy.ndimage import gaussian_filter

    v = gaussian_filter(rng.random(shape), 1.5)
    return (v - v.min()) / (v.max() - v.min())


def _volume(rng) -> np.ndarray:
    t1 = _smooth(rng, (D, H, W))
    flair = np.clip(0.6 * t1 + 0.4 * _smooth(rng, (D, H, W)), 0, 1)
    blob = _smooth(rng, (D, H, W))
    seg = np.select([blob > 0.8, blob > 0.7, blob > 0.6], [1.0, 0.5, 0.25], 0.0)
    return np.stack([t1, flair, seg]).astype(np.float32)


def write_volumes(tmp_path, *, n_train=5, channels=CHANNELS, seed=0):
    """A training store of ``n_train`` volumes and a synthetic store of noisy copies (COPIES) and one new volume."""
    rng = np.random.default_rng(seed)
    train = np.stack([_volume(rng) for _ in range(n_train)])
    synth = []
    for i in sorted(COPIES):
        j, noise = COPIES[i]
        v = np.clip(train[j] + noise * rng.standard_normal(train[j].shape), 0, 1).astype(np.float32)
        v[2] = train[j][2]  # the copy keeps the tumour's labels
        synth.append(v)
    synth.append(_volume(rng))
    idx = [channels.index(c) for c in channels] if channels == CHANNELS else [CHANNELS.index(c) for c in channels]
    with StoreWriter(tmp_path / "train", channels=channels, height=H, width=W, depth=D) as w:
        w.append(train[:, idx], [{"subject": f"Subject_{i:03d}", "split": "train"} for i in range(n_train)])
    with StoreWriter(tmp_path / "synthetic", channels=channels, height=H, width=W, depth=D, kind="synthetic") as w:
        w.append(np.stack(synth)[:, idx], [{"split": "synthetic", "model": "ddpm", "seed": 100 + i} for i in range(len(synth))])
    return SliceStore.open(tmp_path / "synthetic"), SliceStore.open(tmp_path / "train")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_volumes(tmp_path_factory.mktemp("volumes"))


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _panels(v) -> dict:
    return {k: img.value for k, img in v.images.items()}


# -- the slice profile ------------------------------------------------------------------------------------
def _profile_by_definition(a, b):
    """Pearson r per axial plane, by scipy; NaN where a plane is constant."""
    out = []
    for z in range(a.shape[-3]):
        x, y = a[..., z, :, :].ravel().astype(np.float64), b[..., z, :, :].ravel().astype(np.float64)
        out.append(np.nan if x.min() == x.max() or y.min() == y.max() else scipy.stats.pearsonr(x, y).statistic)
    return np.array(out)


def test_slice_profile_is_pearson_r_of_each_axial_plane():
    rng = np.random.default_rng(3)
    a = rng.random((3, 7, 5, 6)).astype(np.float32)
    b = (0.5 * a + 0.5 * rng.random(a.shape)).astype(np.float32)
    a[:, 2] = 0.7   # a constant plane (every channel): no r
    b[:, 5] = 0.0
    b[1, 4] = 0.3   # constant in one channel only: r over all channels still exists
    got = slice_profile(a, b)
    assert got.shape == (7,) and got.dtype == np.float64
    np.testing.assert_allclose(got, _profile_by_definition(a, b), rtol=1e-10, atol=1e-12)
    assert np.isnan(got[[2, 5]]).all() and np.isfinite(np.delete(got, [2, 5])).all()
    for c in range(3):  # one channel: (D, H, W)
        np.testing.assert_allclose(slice_profile(a[c], b[c]), _profile_by_definition(a[c], b[c]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(slice_profile(a[0], a[0] * 2 + 1)[[0, 1, 3]], 1.0)
    np.testing.assert_allclose(slice_profile(a[0], 1 - a[0])[[0, 1, 3]], -1.0)
    with pytest.raises(ValueError, match="differ"):
        slice_profile(a, b[:, :6])
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        slice_profile(a[0, 0], b[0, 0])


# -- order, header, navigation ----------------------------------------------------------------------------
def test_volumes_are_shown_in_order_of_r_with_their_best_training_volume(stores):
    synth, train = stores
    result = topk_correlation(synth, train, k=1)
    v = VolumeViewer(synth, train)
    expected = np.argsort(-result.values[:, 0], kind="stable")
    assert v.order.tolist() == expected.tolist() == [0, 1, 2, 3]  # the copies by noise, then the new volume
    assert v.best[:3].tolist() == [COPIES[i][0] for i in range(3)]
    assert v.current == 0 and "volume <b>1</b> of 4" in v.position.value and v.prev_button.disabled
    assert "synthetic #0" in v.info.value and "seed 100" in v.info.value and "model ddpm" in v.info.value
    assert "<b>Subject_003</b>" in v.info.value and f"r = <b>{result.values[0, 0]:.4f}</b>" in v.info.value
    v.next_button.click()
    assert v.current == 1 and "Subject_001" in v.info.value
    v._key({"type": "keydown", "key": "ArrowRight"})
    assert v.current == 2
    v._key({"type": "keydown", "key": "ArrowLeft"})
    v.previous()
    assert v.current == 0
    v._key({"type": "keydown", "key": "End"})
    assert v.current == 3 and v.next_button.disabled
    v.next()
    assert v.current == 3
    v.go_to(1)
    assert v.current == 1
    v.go_to(9)
    assert "no synthetic volume #9" in v.info.value and v.current == 1


def test_matches_given_as_indices_and_values_or_a_search_result(stores, tmp_path):
    synth, train = stores
    indices = np.array([4, 2, 0, 1])
    values = np.array([0.1, 0.9, 0.5, 0.7])
    v = VolumeViewer(synth, train, matches=(indices, values), index=1)
    assert v.order.tolist() == [1, 3, 2, 0] and v.current == 3  # index: position in the order
    assert "<b>Subject_001</b>" in v.info.value and "r = <b>0.7000</b>" in v.info.value
    assert VolumeViewer(synth, train, matches=(values, indices)).order.tolist() == [1, 3, 2, 0]  # SearchResult's unpacking order
    result = topk_correlation(synth, train, k=2)
    by_result = VolumeViewer(str(synth.path), str(train.path), matches=result)  # folders and a SearchResult
    assert by_result.best.tolist() == result.indices[:, 0].tolist()


# -- the linked cursor ------------------------------------------------------------------------------------
def test_views_and_clicks_agree_on_the_orientation():
    vol = np.arange(D * H * W, dtype=np.float32).reshape(D, H, W)
    cursor = (3, 5, 7)  # x, y, z
    for view in VIEWS:
        plane, (row, col) = view_plane(vol, view, cursor)
        assert plane[row, col] == vol[7, 5, 3]  # the cross-hair is on the cursor's voxel
        assert cursor_at(view, row, col, cursor, D) == cursor  # and a click there keeps it
    coronal, _ = view_plane(vol, "coronal", cursor)
    assert coronal.shape == (D, W) and coronal[0, 0] == vol[D - 1, 5, 0]  # superior up
    sagittal, _ = view_plane(vol, "sagittal", cursor)
    assert sagittal.shape == (D, H) and sagittal[0, 0] == vol[D - 1, 0, 3]  # superior up, anterior left


def test_a_click_in_any_panel_moves_the_cursor_of_all_six(stores):
    synth, train = stores
    v = VolumeViewer(synth, train, panel_size=160)
    assert v.cursor == (W // 2, H // 2, D // 2)
    scale = 160 / max(D, H, W)
    assert v.panel_px["coronal"] == (round(W * scale), round(D * scale))
    for (row, view), img in v.images.items():
        assert Image.open(io.BytesIO(img.value)).size == v.panel_px[view] == (int(img.width), int(img.height))
    before = _panels(v)
    w_px, h_px = v.panel_px["axial"]
    v.click("axial", {"type": "click", "dataX": (3 + 0.5) * w_px / W, "dataY": (10 + 0.5) * h_px / H})
    assert v.cursor == (3, 10, D // 2) and (v.x.value, v.y.value) == (3, 10)
    after = _panels(v)
    assert all(after[k] != before[k] for k in before)  # all six panels: new planes or a moved cross-hair
    # the cross-hair is drawn through the voxel's centre in the synthetic axial panel
    a = _png_array(after[("synthetic", "axial")])
    yellow = (a == CROSSHAIR_RGB).all(-1)
    assert yellow[:, int(3.5 * w_px / W)].sum() > h_px / 2 and yellow[int(10.5 * h_px / H), :].sum() > w_px / 2
    # coronal: the top row is the most superior plane
    w_px, h_px = v.panel_px["coronal"]
    v.click("coronal", {"type": "click", "dataX": 1, "dataY": 1})
    assert v.cursor == (0, 10, D - 1)
    w_px, h_px = v.panel_px["sagittal"]
    v.click("sagittal", {"type": "click", "relativeX": w_px - 1, "relativeY": h_px - 1,  # without dataX: the element's size
                         "boundingRectWidth": w_px, "boundingRectHeight": h_px})
    assert v.cursor == (0, H - 1, 0)
    # the sliders move the cursor too, and the keys move z
    before = _panels(v)
    v.z.value = 5
    assert v.cursor == (0, H - 1, 5) and all(v.images[k].value != before[k] for k in before)
    v._key({"type": "keydown", "key": "ArrowUp"})
    assert v.z.value == 6
    v._key({"type": "keydown", "key": "ArrowDown"})
    v._key({"type": "keydown", "key": "ArrowDown"})
    assert v.z.value == 4
    v.set_cursor(x=999, y=-3)
    assert v.cursor == (W - 1, 0, 4)
    v.next()  # the cursor stays where it was on the next volume
    assert v.cursor == (W - 1, 0, 4)


# -- channel, window, overlay -----------------------------------------------------------------------------
def test_channel_window_and_overlay_change_the_panels(stores):
    synth, train = stores
    v = VolumeViewer(synth, train, channel="flair")
    assert v.channel.label == "flair" and v.overlay.description == "seg overlay"
    flair = _panels(v)
    v.channel.value = 0
    t1 = _panels(v)
    assert all(t1[k] != flair[k] for k in t1)
    v.window.value = (0.2, 0.6)
    windowed = _panels(v)
    assert all(windowed[k] != t1[k] for k in t1)
    v.overlay.value = True
    tinted = _panels(v)
    changed = [k for k in tinted if tinted[k] != windowed[k]]
    assert changed and all(((tinted[k] != windowed[k]) == (view_plane(v.volumes[k[0]][2], k[1], v.cursor)[0] >= 0.125).any())
                           for k in tinted)  # a panel changes where its plane shows a tumour label
    a = _png_array(tinted[changed[0]]).astype(int)
    assert ((a[..., 0] - a[..., 1]) > 60).any()  # red tint
    v.next()
    assert v.window.value == (0.2, 0.6) and v.overlay.value  # kept across volumes, shared by the panels
    v.auto_window.click()
    assert v.window.value != (0.2, 0.6)
    assert VolumeViewer(synth, train, channel=1).channel.label == "flair"


# -- the slice profile in the viewer ----------------------------------------------------------------------
def test_the_profile_is_of_the_volume_shown_and_marks_the_cursor(stores):
    synth, train = stores
    v = VolumeViewer(synth, train)
    sid, j = v.current, int(v.best[v.current])
    np.testing.assert_allclose(v.profile, _profile_by_definition(synth[sid], train[j]), rtol=1e-9)
    assert np.nanmin(v.profile) > 0.9  # a copy with little noise: every plane
    z = v.z.value
    assert f"plane z={z}: r = <b>{v.profile[z]:.4f}</b> (all channels)" in v.profile_text.value
    before = v.profile_image.value
    v.set_cursor(z=2)
    assert v.profile_image.value != before and "plane z=2" in v.profile_text.value
    v.profile_over.value = "channel"
    np.testing.assert_allclose(v.profile, _profile_by_definition(synth[sid][0], train[j][0]), rtol=1e-9)
    assert "(t1)" in v.profile_text.value
    v.channel.value = 1
    np.testing.assert_allclose(v.profile, _profile_by_definition(synth[sid][1], train[j][1]), rtol=1e-9)
    v._profile_clicked({"type": "click", "dataX": 10_000})  # right of the plot: the top plane
    assert v.z.value == D - 1
    for z in (0, 5, D - 1):
        from workbench.widgets.volume_viewer import PROFILE_PAD, PROFILE_WIDTH

        left, right = PROFILE_PAD[0], PROFILE_WIDTH - PROFILE_PAD[1]
        assert profile_z(left + (right - left) * z / (D - 1), D) == z
    v.go_to(3)  # the new volume: low r
    assert np.nanmax(v.profile) < 0.9


# -- marks ---------------------------------------------------------------------------------------------
def test_marks_are_saved_at_once_and_shown_by_a_new_viewer(stores, tmp_path):
    synth, train = stores
    v = VolumeViewer(synth, train, run=tmp_path, reviewer="dr-a")
    assert "not marked yet" in v.mark_state.value and not any(b.disabled for b in v.verdicts.values())
    v.comment.value = "same tumour, same planes"
    v.verdicts["copy"].click()
    marks = pd.read_csv(tmp_path / "marks.csv")
    assert marks[["synthetic", "verdict", "comment", "reviewer"]].values.tolist() == [[0, "copy", "same tumour, same planes", "dr-a"]]
    assert "marked <b>copy</b> by dr-a" in v.mark_state.value
    v.next()
    assert "not marked yet" in v.mark_state.value and v.comment.value == ""
    v.verdicts["unsure"].click()
    again = VolumeViewer(synth, train, run=tmp_path, reviewer="dr-b")  # a restart: marks come back from marks.csv
    assert again.current == 0 and "marked <b>copy</b> by dr-a" in again.mark_state.value
    assert again.comment.value == "same tumour, same planes"
    again.next()
    assert "marked <b>unsure</b> by dr-a" in again.mark_state.value


def test_marking_is_off_without_a_run_or_with_a_corrupt_marks_file(stores, tmp_path):
    synth, train = stores
    v = VolumeViewer(synth, train)
    assert all(b.disabled for b in v.verdicts.values()) and "run folder" in v.mark_state.value
    with pytest.raises(ValueError, match="run folder"):
        v.mark("copy")
    (tmp_path / "marks.csv").write_text("this,is\nnot,a marks file\n")
    v = VolumeViewer(synth, train, run=tmp_path)
    assert "marks.csv" in v.mark_state.value and "corrupt" in v.mark_state.value
    assert all(b.disabled for b in v.verdicts.values())
    v.next()  # viewing still works
    assert v.current == 1 and "synthetic #1" in v.info.value
    assert (tmp_path / "marks.csv").read_text() == "this,is\nnot,a marks file\n"  # left as it was
    assert "is not a folder" in VolumeViewer(synth, train, run=tmp_path / "nowhere").mark_state.value


# -- bad input --------------------------------------------------------------------------------------------
def _message(v) -> str:
    import html

    assert v.synthetic is None and "Traceback" not in v.widget.value
    return html.unescape(v.widget.value)


def test_bad_input_is_a_message_that_says_what_to_do(stores, tmp_path):
    synth, train = stores
    with StoreWriter(tmp_path / "slices", channels=CHANNELS, height=H, width=W) as w:
        w.append(np.zeros((2, 3, H, W), np.float32), [{"subject": "a", "split": "train", "z": 0}] * 2)
    text = _message(VolumeViewer(tmp_path / "slices", train))
    assert str(tmp_path / "slices") in text and "MatchBrowser" in text and "2D slices" in text
    text = _message(VolumeViewer(synth, tmp_path / "slices"))
    assert "training store" in text and "MatchBrowser" in text
    other = write_volumes(tmp_path / "other", channels=["t1", "seg"])
    assert "channels" in _message(VolumeViewer(other[0], train))
    with StoreWriter(tmp_path / "small", channels=CHANNELS, height=H, width=W, depth=D - 2) as w:
        w.append(np.zeros((1, 3, D - 2, H, W), np.float32), [{"subject": "a", "split": "train"}])
    assert "same size" in _message(VolumeViewer(synth, tmp_path / "small"))
    assert "holds no volumes" in _message(VolumeViewer(synth, train.where(split="test")))
    assert "does not exist" in _message(VolumeViewer(tmp_path / "nowhere", train))
    assert "4 synthetic volumes" in _message(VolumeViewer(synth, train, matches=(np.array([0, 1]), np.array([0.5, 0.4]))))
    assert "not in the training store" in _message(VolumeViewer(synth, train, matches=(np.array([0, 1, 2, 9]), np.ones(4))))
    assert "pair (indices, values)" in _message(VolumeViewer(synth, train, matches=42))
    assert "channel 'dwi'" in _message(VolumeViewer(synth, train, channel="dwi"))


def test_a_constant_synthetic_volume_has_no_match(stores, tmp_path):
    synth, train = stores
    with StoreWriter(tmp_path / "flat", channels=CHANNELS, height=H, width=W, depth=D, kind="synthetic") as w:
        w.append(np.stack([synth[0], np.full((3, D, H, W), 0.5, np.float32)]), [{"split": "synthetic"}] * 2)
    with pytest.warns(UserWarning, match="constant"):
        v = VolumeViewer(tmp_path / "flat", train)
    assert v.order.tolist() == [0, 1]
    v.next()
    assert "no match" in v.info.value and np.isnan(v.profile).all() and "r undefined" in v.profile_text.value
