"""Reviewer marks: saved at once, latest wins, shown again after a restart, corrupt file named."""
import pytest

from workbench.errors import WorkbenchError
from workbench.evaluate.marks import MarkLog


def test_marks_are_saved_at_once_and_latest_wins(tmp_path):
    log = MarkLog(tmp_path, reviewer="dr-a")
    log.mark(3, "copy", comment="same slice, same tumour")
    log.mark(5, "unsure")
    assert (tmp_path / "marks.csv").read_text().count("\n") == 3  # header + 2 marks, written immediately
    log.mark(3, "not a copy", comment="different patient, on a second look")
    again = MarkLog(tmp_path, reviewer="dr-b")  # a restart
    current = again.current()
    assert current.loc[3, "verdict"] == "not a copy" and current.loc[3, "reviewer"] == "dr-a"
    assert current.loc[3, "comment"] == "different patient, on a second look"
    assert current.loc[5, "verdict"] == "unsure" and current.loc[5, "comment"] == ""
    assert len(again.history) == 3  # the change of mind is kept
    with pytest.raises(WorkbenchError, match="verdict must be one of"):
        again.mark(1, "maybe")
    assert MarkLog(tmp_path / "empty").current().empty


def test_corrupt_marks_file_is_named(tmp_path):
    (tmp_path / "marks.csv").write_text("synthetic,verdict\n1,copy\n")
    with pytest.raises(WorkbenchError, match="marks.csv: corrupt marks file"):
        MarkLog(tmp_path)
    (tmp_path / "marks.csv").write_text("synthetic,verdict,comment,reviewer,marked_at\n1,yes,,a,t\n")
    with pytest.raises(WorkbenchError, match="line 2 is not a valid mark"):
        MarkLog(tmp_path)
