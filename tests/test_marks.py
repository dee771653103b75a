"""Reviewer marks: saved at once, latest wins, shown again after a restart, corrupt file named, safe at once."""
import multiprocessing as mp
import time

import pytest

from workbench.errors import WorkbenchError
from workbench.evaluate.marks import COLUMNS, MarkLog


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
    (tmp_path / "run").mkdir()
    log = MarkLog(tmp_path / "run")    # opened before someone put another file in its place
    (tmp_path / "run" / "marks.csv").write_text("this,is\nnot,a marks file\n")
    with pytest.raises(WorkbenchError, match="marks.csv: its first line .* is not the header"):
        log.mark(1, "copy")
    assert (tmp_path / "run" / "marks.csv").read_text() == "this,is\nnot,a marks file\n"  # left as it was


def test_a_mark_cut_off_by_a_killed_writer_is_left_out_not_fatal(tmp_path):
    log = MarkLog(tmp_path, reviewer="dr-a")
    log.mark(1, "copy", comment='two lines,\nand "quotes"')
    path = tmp_path / "marks.csv"
    with open(path, "ab") as fh:
        fh.write(b"2,not a co")      # a kernel killed in the middle of writing a mark
    with pytest.warns(RuntimeWarning, match="marks.csv: left out an incomplete last line"):
        again = MarkLog(tmp_path, reviewer="dr-b")
    assert again.current().index.tolist() == [1]
    assert again.current().loc[1, "comment"] == 'two lines,\nand "quotes"'
    with pytest.warns(RuntimeWarning, match="marks.csv: cut off an incomplete last line"):
        again.mark(3, "unsure")
    assert MarkLog(tmp_path).current()["verdict"].to_dict() == {1: "copy", 3: "unsure"}  # no warning now
    assert sorted(p.name for p in tmp_path.iterdir()) == [".marks.csv.lock", "marks.csv"]  # the lock: hidden

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "marks.csv").write_bytes(b"synthetic,verd")  # killed while writing the header
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        assert MarkLog(tmp_path / "b").current().empty
    with pytest.warns(RuntimeWarning, match="cut off"):
        MarkLog(tmp_path / "b").mark(4, "copy")
    assert (tmp_path / "b" / "marks.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert MarkLog(tmp_path / "b").current().index.tolist() == [4]


def test_a_mark_waits_for_the_lock_and_says_busy_naming_the_file_if_held_too_long(tmp_path):
    import threading

    from workbench.data.csv_log import append_row, locked

    path, held, done = tmp_path / "marks.csv", threading.Event(), threading.Event()

    def other_writer():
        with locked(path):
            held.set()
            done.wait(10)
    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(10)
    row = {"synthetic": 1, "verdict": "copy", "comment": "", "reviewer": "a", "marked_at": "t"}
    with pytest.raises(WorkbenchError, match=r"marks.csv: busy, another process has held its lock \.marks\.csv\.lock"):
        append_row(path, COLUMNS, row, timeout=0.2)
    assert not path.exists()
    done.set()
    thread.join()
    append_row(path, COLUMNS, row)
    assert MarkLog(tmp_path).current().index.tolist() == [1]


# -- reviewers marking at the same instant: real processes, started together ---------------------
# Each trial hands one job to each of k worker processes (forked once, reused across trials); a
# job sets up (opens the log, as a browser tab would) and reports ready; when all are ready they
# are released together and spin to a shared start time, so their writes overlap.

def _serve(index, tasks, results, go, start_at):
    from workbench.errors import WorkbenchError

    while (task := tasks.get()) is not None:
        fn, args = task
        try:
            act = fn(*args)
        except BaseException as err:  # noqa: BLE001 (reported to the test)
            results.put((index, "setup failed", repr(err)))
            continue
        results.put((index, "ready", None))
        go.wait()
        while time.monotonic() < start_at.value:
            pass
        try:
            results.put((index, "ok", act()))
        except WorkbenchError as err:
            results.put((index, "refused", str(err)))
        except BaseException as err:  # noqa: BLE001
            results.put((index, "failed", repr(err)))


class RacingWorkers:
    """``n`` worker processes that run one job each per :meth:`race`, all starting at the same instant."""

    def __init__(self, n: int = 4):
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.go, self.start_at, self.results = ctx.Event(), ctx.Value("d", 0.0, lock=False), ctx.Queue()
        self.tasks = [ctx.SimpleQueue() for _ in range(n)]
        self.procs = [ctx.Process(target=_serve, args=(i, q, self.results, self.go, self.start_at), daemon=True)
                      for i, q in enumerate(self.tasks)]
        for p in self.procs:
            p.start()

    def race(self, *jobs) -> list[tuple[str, object]]:
        """Run ``jobs`` (``(setup, args)``: ``setup(*args)`` returns the action) at once; (status, value) each."""
        for q, job in zip(self.tasks, jobs):
            q.put(job)
        first = [self.results.get(timeout=60) for _ in jobs]
        ready = sum(status == "ready" for _, status, _ in first)
        self.start_at.value = time.monotonic() + 0.003
        self.go.set()
        second = [self.results.get(timeout=60) for _ in range(ready)]
        self.go.clear()
        failed = [m for m in first + second if m[1] in ("setup failed", "failed")]
        assert not failed, failed
        return [(status, value) for _, status, value in sorted(second)]

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)


@pytest.fixture(scope="module")
def racers():
    workers = RacingWorkers(4)
    yield workers
    workers.close()


def _first_marks(run, reviewer, images):
    """A reviewer's match browser, opened before anything was marked; the action marks ``images``."""
    log = MarkLog(run, reviewer=reviewer)

    def act():
        for image in images:
            log.mark(image, "copy", comment=f"{reviewer}, image {image}")
    return act


def test_reviewers_marking_at_once_lose_nothing_and_write_the_header_once(racers, tmp_path):
    for trial in range(90):
        run, k = tmp_path / f"run{trial}", 2 + trial % 3       # 2, 3 or 4 reviewers, a fresh run folder
        results = racers.race(*[(_first_marks, (run, f"dr-{r}", [r, 10 + r])) for r in range(k)])
        assert results == [("ok", None)] * k
        lines = (run / "marks.csv").read_text().splitlines()
        assert lines[0] == ",".join(COLUMNS) and lines.count(lines[0]) == 1, (trial, lines)
        history = MarkLog(run).history
        assert sorted(zip(history["reviewer"], history["synthetic"])) == sorted(
            (f"dr-{r}", i) for r in range(k) for i in (r, 10 + r)), (trial, lines)
