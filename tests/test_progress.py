"""Progress bars reach the terminal under `workbench run` / the demo: plain text, with an ETA."""
import io
import os
import re
import subprocess
import sys

import nbformat

from workbench.progress import ENV, INTERVAL_ENV, TextTqdm
from workbench.runs import run_notebook
from workbench.runs.notebook import TerminalStream

#: a tqdm line with its counts, elapsed<remaining and rate, e.g. "5/5 [00:00<00:00, 12.3step/s]"
BAR = re.compile(r"tiny loop: +\d+%.*\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(step/s|s/step)\]")


def tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n = 3  # loop length")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import time\n"
            "from workbench.progress import progress_mode, tqdm\n"
            "print('progress mode:', progress_mode())\n"
            "for _ in tqdm(range(n), desc='tiny loop', unit='step'):\n"
            "    time.sleep(0.05)\n"),
    ]
    nbformat.write(nb, path)
    return path


def test_a_notebook_run_shows_its_own_text_progress_with_an_eta(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv(INTERVAL_ENV, "0")  # every update drawn: the short loop shows its ETA on the way
    notebook = tiny_notebook(tmp_path / "tiny.ipynb")
    run_notebook(notebook, tmp_path / "run", {"n": 6}, html=True)
    captured = capsys.readouterr()
    assert "progress mode: text" in captured.out  # the kernel chose the text bars
    lines = [line for line in captured.err.splitlines() if "tiny loop" in line]
    assert any(BAR.search(line) for line in lines), captured.err
    assert any(re.search(r"<00:0\d, ", line) and " 6/6 " not in line for line in lines), lines  # an ETA mid-run
    assert not any("\r" in line for line in lines)  # not a terminal: one line per redraw
    assert "Executing" not in captured.err  # papermill's cell counter would redraw over the bars
    assert ENV not in os.environ  # set for the kernel only
    # the executed notebook and its HTML page keep the bar's last line
    html = (tmp_path / "run" / "tiny.html").read_text()
    assert "6/6" in html


def test_without_progress_nothing_reaches_the_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    run_notebook(tiny_notebook(tmp_path / "tiny.ipynb"), tmp_path / "run", {"n": 2}, html=False, progress=False)
    captured = capsys.readouterr()
    assert "tiny loop" not in captured.err and "progress mode" not in captured.out


def test_terminal_stream_turns_redraws_into_lines_off_a_terminal():
    out = io.StringIO()
    stream = TerminalStream(out)
    for text in ("\rbar:   0%| 0/4 [00:00<?, ?it/s]", "\rbar:  50%| 2/4 [00:01<00:01, 2.0it/s]  ",
                 "\rbar: 100%| 4/4 [00:02<00:00, 2.0it/s]\n", "printed\n", "\r          \r", "next\n"):
        stream.write(text)
    assert out.getvalue().splitlines() == [
        "bar:   0%| 0/4 [00:00<?, ?it/s]", "bar:  50%| 2/4 [00:01<00:01, 2.0it/s]  ",
        "bar: 100%| 4/4 [00:02<00:00, 2.0it/s]", "printed", "next"]


def test_terminal_stream_passes_redraws_to_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    TerminalStream(out).write("\rbar:  50%|\rbar: 100%|\n")
    assert out.getvalue() == "\rbar:  50%|\rbar: 100%|\n"


def test_text_bars_only_when_asked_and_they_redraw_seldom(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    code = ("from workbench.progress import tqdm, TextTqdm; from tqdm.auto import tqdm as auto; "
            "print(tqdm is TextTqdm, tqdm is auto)")
    env = {k: v for k, v in os.environ.items() if k not in (ENV, INTERVAL_ENV)}
    for value, expected in ((None, "False True"), ("text", "True False")):
        run_env = dict(env, **({ENV: value} if value else {}))
        done = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == expected
    bar = TextTqdm(total=3, file=io.StringIO(), mininterval=0.1)
    assert bar.mininterval >= 5.0  # logs stay short: the caller's shorter interval is raised
    bar.close()


def test_a_new_postfix_waits_for_the_next_redraw(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    out = io.StringIO()
    with TextTqdm(total=100, file=out, desc="slicing") as bar:
        for i in range(100):
            bar.set_postfix(slices=i)  # tqdm would redraw at each of these
            bar.update()
    assert out.getvalue().count("\r") <= 4  # first draw, close, and nothing in between


def test_a_bar_done_within_a_second_is_not_drawn(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    out = io.StringIO()
    for _ in TextTqdm(range(5), file=out, desc="searching"):
        pass
    assert out.getvalue() == ""
