"""The command line, as a user calls it."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workbench.cli import main
from workbench.runs.notebook import parse_value


def wb(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, cwd=cwd)


def test_phantom_command_writes_brats_layout(tmp_path):
    r = wb("data", "phantom", "brain", "--subjects", "1", "--out", str(tmp_path / "ph"), "--seed", "4")
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "ph" / "Phantom_001").iterdir())
    assert files == [f"Phantom_001_{c}.nii.gz" for c in ("flair", "seg", "t1", "t1ce", "t2")]
    assert "not patient data" in r.stdout


def test_search_command_writes_matches(phantom_store, tmp_path):
    out = tmp_path / "m.parquet"
    assert main(["search", "--queries", str(phantom_store.path), "--reference", str(phantom_store.path),
                 "--split", "train", "--k", "2", "--out", str(out)]) == 0
    t = pd.read_parquet(out)
    assert len(t) == 2 * len(phantom_store) and set(t["rank"]) == {1, 2}
    train_rows = set(phantom_store.where(split="train").rows.tolist())
    assert set(t["match_row"]) <= train_rows
    # every training slice finds itself first
    own = t[(t["rank"] == 1) & t["query_row"].isin(train_rows)]
    assert (own["query_row"] == own["match_row"]).all() and np.allclose(own["r"], 1.0)


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["search", "--queries", str(tmp_path / "nope"), "--reference", str(tmp_path), "--out", "x.parquet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error:") and "nope: no SliceStore here" in err


def test_prepare_command_on_empty_folder(tmp_path, capsys):
    assert main(["data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "no BraTS subject folders found" in capsys.readouterr().err


def test_python_dash_m_and_help():
    r = wb("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "search" in r.stdout


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("null", None),
                                        ("[1, 2]", [1, 2]), ("runs/x", "runs/x"), ("flair", "flair")])
def test_parameter_values_parse_like_json(text, value):
    assert parse_value(text) == value


def test_search_command_prints_a_summary_with_pruning(phantom_store, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["search", "--queries", str(phantom_store.path), "--reference", str(phantom_store.path),
                 "--split", "train", "--k", "2", "--method", "pruned", "--channels", "t1,flair", "--distinct", "subject",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "pairs in" in line and "pruned" in line and "candidates rescored per query" in line
    t = pd.read_csv(out)
    assert len(t) == 2 * len(phantom_store)
    assert (t.groupby("query")["match_subject"].nunique() == 2).all()  # two different subjects each


def test_search_command_says_what_auto_chose(phantom_store, tmp_path, capsys, monkeypatch):
    from workbench.search import index as index_module

    monkeypatch.setattr(index_module, "AUTO_MIN_QUERIES", 10)  # build an index even for this small search
    monkeypatch.setattr(index_module, "AUTO_MIN_REFERENCE", 10)
    out = tmp_path / "m.csv"
    assert main(["search", "--queries", str(phantom_store.path), "--reference", str(phantom_store.path),
                 "--split", "train", "--k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "method auto chose " in printed and ("predicted" in printed or "more than" in printed)
    assert "probe timed now" in printed or "probe as measured 20" in printed  # where brute force's figures came from


def test_the_index_commands_row_copy_formats_are_the_searchs():
    from workbench import cli
    from workbench.search import rowcopy

    assert cli.ROW_COPY_FORMATS == rowcopy.FORMATS


@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_index_command_and_search_with_it_give_the_searchs_table(phantom_store, tmp_path, capsys, fmt):
    """`workbench index` prepares the train split once (here with a float16 or int8 row copy);
    `workbench search --index` then gives the same matches as searching the store itself."""
    direct = tmp_path / "direct.parquet"
    assert main(["search", "--queries", str(phantom_store.path), "--reference", str(phantom_store.path),
                 "--split", "train", "--k", "3", "--out", str(direct)]) == 0
    index = tmp_path / "train.index"
    assert main(["index", "--reference", str(phantom_store.path), "--split", "train", "--basis-dim", "16",
                 "--row-copy", str(tmp_path / "rows.npy"), "--row-copy-format", fmt, "--out", str(index)]) == 0
    out = capsys.readouterr().out
    assert f"{fmt} row copy" in out and f"workbench search --index {index}" in out
    via = tmp_path / "via.parquet"
    assert main(["search", "--queries", str(phantom_store.path), "--index", str(index), "--k", "3",
                 "--method", "pruned", "--out", str(via)]) == 0
    a, b = pd.read_parquet(direct), pd.read_parquet(via)
    cols = ["query_row", "rank", "match_row", "match_subject", "match_z"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    np.testing.assert_allclose(a["r"], b["r"], atol=1e-12)
    assert "pruned" in capsys.readouterr().out
    # what does not go with an index, and an index folder that exists already: one clear line each
    assert main(["search", "--queries", str(phantom_store.path), "--index", str(index), "--split", "train",
                 "--out", str(tmp_path / "x.parquet")]) == 2
    assert "--split: not with --index" in capsys.readouterr().err
    assert main(["index", "--reference", str(phantom_store.path), "--out", str(index)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --reference nor --index: argparse says which are needed
        main(["search", "--queries", str(phantom_store.path), "--out", str(tmp_path / "x.parquet")])
    assert "one of the arguments --reference --index is required" in capsys.readouterr().err
