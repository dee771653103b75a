"""The match browser's behaviour without a browser: order, filters, histogram bins, runner-ups, marks, bad input.

(The same widget is driven in chromium by tests/test_browser.py.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from match_run import make_run
from workbench.data.store import SliceStore
from workbench.memorization import match_table
from workbench.widgets import MatchBrowser


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("match_run"))


def _fresh_run(tmp_path, run):
    """A copy of the run folder (results only; the stores are shared) for tests that write marks."""
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(run["run"], dest)
    return dest


def test_images_are_ordered_by_r_and_step_with_buttons_and_keys(run):
    b = MatchBrowser(run["run"])
    flags = pd.read_parquet(run["run"] / "copy_flags.parquet")
    expected = flags.sort_values(["pixel_max", "synthetic"], ascending=[False, True])["synthetic"].tolist()
    assert b.shown.tolist() == expected
    assert b.current == expected[0] and "image <b>1</b> of 10" in b.position.value
    assert f"synthetic #{expected[0]}" in b.info.value and f"{flags.set_index('synthetic').loc[expected[0], 'pixel_max']:.4f}" in b.info.value
    first = {n: img.value for n, img in b.images.items()}
    b.next_button.click()
    assert b.current == expected[1]
    assert all(b.images[n].value != first[n] for n in ("synthetic", "match", "scatter"))
    b._key({"type": "keydown", "key": "ArrowRight"})
    assert b.current == expected[2]
    b._key({"type": "keydown", "key": "ArrowLeft"})
    b.prev_button.click()
    assert b.current == expected[0] and b.prev_button.disabled
    b._key({"type": "keydown", "key": "End"})
    assert b.current == expected[-1] and b.next_button.disabled
    b.next()  # at the end: stays
    assert b.current == expected[-1]


def test_the_planted_copies_come_first_with_their_source_slice_and_neighbours(run):
    b = MatchBrowser(run["run"])
    store = SliceStore.open(run["store"])
    for _ in range(4):  # the 4 planted copies have r ~ 0.999, far above the new images
        row = b.best.loc[b.current]
        assert int(row["match_row"]) == run["copied"][b.current]
        assert bool(row["copy"]) and "flagged as a copy" in b.info.value
        m = store.manifest.iloc[int(row["match_row"])]
        assert f"{m['subject']}</b> slice z={m['z']}" in b.info.value
        assert (b.titles["prev"].value == f"{m['subject']} z={m['z'] - 1}") == (m["z"] > 0)
        assert (b.titles["next"].value == "z+1 not in the store") == (m["z"] == 7)
        b.next()
    assert "not flagged" in b.info.value


def test_filters_flagged_subject_r_range_and_jump(run):
    b = MatchBrowser(run["run"])
    flags = pd.read_parquet(run["run"] / "copy_flags.parquet").set_index("synthetic")
    b.show.value = "flagged"
    assert set(b.shown.tolist()) == set(flags.index[flags["copy"]]) and len(b.shown) == 4
    b.show.value = "not flagged"
    assert set(b.shown.tolist()) == set(flags.index[~flags["copy"]])
    b.show.value = "all"
    subject = b.best.loc[b.current, "match_subject"]
    b.subject.value = subject
    assert len(b.shown) and all(b.best.loc[i, "match_subject"] == subject for i in b.shown)
    b.subject.value = ""
    b.r_range.value = (0.9, 1.0)
    assert sorted(b.shown.tolist()) == sorted(flags.index[flags["pixel_max"] >= 0.9].tolist())
    b.r_range.value = (b.r_range.min, b.r_range.min + 0.001)
    assert len(b.shown) == 0 and b.current is None and "No synthetic image passes" in b.info.value
    hidden = int(flags["pixel_max"].idxmax())
    b.go_to(hidden)  # clears the filters that hide it
    assert b.current == hidden and len(b.shown) == 10
    b.go_to(999)
    assert "no synthetic image #999" in b.info.value and b.current == hidden


def test_a_histogram_bar_shows_exactly_the_images_in_its_bin(run):
    b = MatchBrowser(run["run"])
    r = b.best["r"].to_numpy()
    assert int(b.counts.sum()) == len(r) and len(b.bars) == b.n_bins
    tau = b.data.thresholds["pixel r"]
    for i, bar in enumerate(b.bars):  # bars above the copy threshold are red
        assert (bar.style.button_color in ("#dc2626", "#fca5a5")) == (b.edges[i] >= tau)
    for i in np.flatnonzero(b.counts):
        b.bars[i].click()
        lo, hi = b.edges[i], b.edges[i + 1]
        inside = (r >= lo) & ((r <= hi) if i == len(b.bars) - 1 else (r < hi))
        assert sorted(b.shown.tolist()) == sorted(b.best["synthetic"][inside].tolist())
        assert f"({int(b.counts[i])} images)" in b.bin_label.value
    b.clear_bin.click()
    assert len(b.shown) == 10 and b.bin is None


def test_order_by_embedding_similarity_rebuilds_the_histogram(run, tmp_path):
    """With an embedding column the browser orders by it; the histogram follows the ordering."""
    flags = pd.read_parquet(run["run"] / "copy_flags.parquet")
    rng = np.random.default_rng(1)
    flags["embedding_max"] = rng.uniform(0, 1, len(flags))
    flags["embedding_match_row"] = flags["pixel_match_row"]
    flags["embedding_copy"] = flags["embedding_max"] > 0.8
    folder = _fresh_run(tmp_path, run)
    flags.to_parquet(folder / "copy_flags.parquet", index=False)
    b = MatchBrowser(folder)
    b.order.value = "embedding"
    assert b.shown.tolist() == flags.sort_values("embedding_max", ascending=False)["synthetic"].tolist()
    assert "embedding similarity" in b.axis.value and int(b.counts.sum()) == 10
    assert f"embedding similarity = <b>{flags.set_index('synthetic').loc[b.current, 'embedding_max']:.3f}" in b.info.value
    b.order.value = "id"
    assert b.shown.tolist() == list(range(10))


def test_runner_ups_come_from_other_subjects_one_click_away(run):
    b = MatchBrowser(run["run"])
    assert b.data.distinct_subjects
    options = [label for label, _ in b.choice.options]
    assert len(options) == 3 and len({o.split(" · ")[1].split()[0] for o in options}) == 3  # 3 subjects
    best_title = b.titles["match"].value
    b.choice.value = 2
    c = b.data.candidates_of(b.current)
    second = c[c["rank"] == 2].iloc[0]
    assert f"row {int(second['match_row'])}" in b.titles["match"].value != best_title
    assert "match 2:" in b.info.value and f"{second['r']:.4f}" in b.titles["scatter"].value
    b._key({"type": "keydown", "key": "3"})
    assert b.choice.value == 3
    b.next()
    assert b.choice.value == 1  # a new image starts at its best match


def test_channel_overlay_and_window_change_the_image_panels(run):
    b = MatchBrowser(run["run"], channel="flair")
    assert b.channel.label == "flair" and b.overlay.description == "seg overlay"
    before = b.images["synthetic"].value
    b.channel.value = 0
    t1 = b.images["synthetic"].value
    assert t1 != before
    b.overlay.value = True
    assert b.images["synthetic"].value != t1 and b.images["match"].value != t1
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(b.images["synthetic"].value)).mode == "RGB"  # red tint on gray
    b.overlay.value = False
    b.window.value = (0.2, 0.6)
    windowed = {n: b.images[n].value for n in ("synthetic", "match")}
    assert windowed["synthetic"] != t1
    b.next()
    assert b.window.value == (0.2, 0.6)  # the window is kept across images and shared by the panels
    b.auto_window.click()
    assert b.window.value != (0.2, 0.6)


def test_marks_are_saved_at_once_and_shown_after_a_restart(run, tmp_path):
    folder = _fresh_run(tmp_path, run)
    b = MatchBrowser(folder, reviewer="dr-a")
    first = b.current
    b.comment.value = "same blob, same slice"
    b.verdicts["copy"].click()
    marks = pd.read_csv(folder / "marks.csv")
    assert marks[["synthetic", "verdict", "comment", "reviewer"]].values.tolist() == [[first, "copy", "same blob, same slice", "dr-a"]]
    b.next()
    assert "not marked yet" in b.mark_state.value and b.comment.value == ""
    b.verdicts["unsure"].click()
    b.show.value = "unmarked"
    assert first not in b.shown.tolist() and len(b.shown) == 8
    again = MatchBrowser(folder, reviewer="dr-b")  # a restart: everything comes back from marks.csv
    assert again.current == first and "marked <b>copy</b> by dr-a" in again.mark_state.value
    assert again.comment.value == "same blob, same slice"
    again.show.value = "copy"
    assert again.shown.tolist() == [first]


def test_a_run_without_search_results_says_how_to_make_them(tmp_path):
    (tmp_path / "empty").mkdir()
    b = MatchBrowser(tmp_path / "empty")
    text = b.widget.value
    assert "no search results" in text and "04_memorization" in text and "memorization.json" in text
    assert "no such run folder" in MatchBrowser(tmp_path / "nowhere").widget.value


def test_missing_store_images_are_named(run, tmp_path):
    import json
    import shutil

    folder = _fresh_run(tmp_path, run)
    synth = tmp_path / "synthetic"
    shutil.copytree(run["synthetic"], synth)
    summary = json.loads((folder / "memorization.json").read_text())
    (folder / "memorization.json").write_text(json.dumps({**summary, "synthetic_store": str(synth)}))
    (synth / "images.npy").unlink()
    text = MatchBrowser(folder).widget.value
    assert "synthetic store" in text and "images.npy" in text and "03_sample" in text
    shutil.rmtree(synth)
    assert "does not exist" in MatchBrowser(folder).widget.value


def test_a_corrupt_marks_file_turns_marking_off_but_browsing_works(run, tmp_path):
    folder = _fresh_run(tmp_path, run)
    (folder / "marks.csv").write_text("this,is\nnot,a marks file\n")
    b = MatchBrowser(folder)
    assert "marks.csv" in b.mark_state.value and "corrupt" in b.mark_state.value
    assert all(v.disabled for v in b.verdicts.values())
    b.next()
    assert b.current is not None and "synthetic #" in b.info.value
    assert (folder / "marks.csv").read_text() == "this,is\nnot,a marks file\n"  # left as it was


def test_from_tables_without_a_run_folder(run):
    synth, store = SliceStore.open(run["synthetic"]), SliceStore.open(run["store"])
    train = store.where(split="train")
    b = MatchBrowser(matches=match_table(synth, train, k=2, progress=False), synthetic=synth, train=train)
    assert b.current is not None and not b.data.has_flags and not b.data.distinct_subjects
    assert [v for _, v in b.show.options][:2] == ["all", "unmarked"]  # no flag filter without flags
    assert all(v.disabled for v in b.verdicts.values()) and "run folder" in b.mark_state.value
    assert "need the synthetic and training stores" in MatchBrowser(matches=pd.DataFrame()).widget.value


def test_the_overlay_tints_labels_only_and_higher_labels_more():
    import io

    from PIL import Image

    from workbench.widgets.render import overlay_png

    mask = np.full((8, 8), 0.04, dtype=np.float32)  # faint background, as a sampled seg channel has
    mask[1, 1], mask[2, 2], mask[3, 3] = 0.25, 0.5, 1.0  # BraTS labels 1, 2, 4 as stored
    rgb = np.asarray(Image.open(io.BytesIO(overlay_png(np.full((8, 8), 0.5), mask)))).astype(int)
    assert (rgb[0, 0] == 128).all()  # background untouched
    red = rgb[..., 0] - rgb[..., 1]
    assert 0 < red[1, 1] <= red[2, 2] < red[3, 3]


def test_chest_xrays_one_channel_no_slices(tmp_path):
    """Radiographs: one channel, no segmentation to overlay, no z and no adjacent slices."""
    from workbench.data.store import StoreWriter
    from workbench.memorization import run_analysis

    rng = np.random.default_rng(0)
    images = rng.random((50, 1, 16, 16), dtype=np.float32)
    rows = [{"subject": f"patient{i}", "split": "train" if i < 25 else "test"} for i in range(50)]
    with StoreWriter(tmp_path / "xray", channels=["xray"], height=16, width=16) as w:
        w.append(images, rows)
    with StoreWriter(tmp_path / "synthetic", channels=["xray"], height=16, width=16, kind="synthetic") as w:
        w.append(np.clip(images[:5] + 0.01, 0, 1), [{"split": "synthetic"}] * 5)
    store, synth = SliceStore.open(tmp_path / "xray"), SliceStore.open(tmp_path / "synthetic")
    run = tmp_path / "run"
    run.mkdir()
    run_analysis(synth, store.where(split="train"), store.where(split="test"), k=2, bootstrap=0, per_channel=False,
                 data_copying_cells=None, progress=False).save(run)
    b = MatchBrowser(run)
    assert b.overlay.disabled and b.channel.label == "xray"
    assert b.titles["prev"].value == "no adjacent slices (a 2D image)" and "z=" not in b.titles["match"].value
    assert f"<b>patient{b.current}</b> (training row {b.current})" in b.info.value  # each copy matches its source
    assert all("z=" not in label for label, _ in b.choice.options)
