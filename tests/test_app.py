"""`workbench app RUN`: the run's match browser and reader study, prepared by papermill and served by Voila."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nbformat
import numpy as np
import pytest

from workbench.cli import build_parser, main
from workbench.data.store import StoreWriter
from workbench.errors import WorkbenchError
from workbench.runs import prepare_app, serve_app
from workbench.runs.app import APP_NOTEBOOKS, app_urls


def _injected(path) -> str:
    cells = [c for c in nbformat.read(path, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, path
    return cells[0].source


def _code(path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_prepare_app_writes_both_notebooks_with_the_run_injected(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    folder = prepare_app(run, reviewer="dr-a", n_real=5, channel="t1")
    assert folder == run.resolve() / "app"
    assert sorted(p.name for p in folder.iterdir()) == ["05_match_browser.ipynb", "06_reader_study.ipynb"]
    browser, study = folder / "05_match_browser.ipynb", folder / "06_reader_study.ipynb"
    # absolute: Voila runs each kernel in <run>/app, not where `workbench app` was started
    assert _injected(browser) == f'# Parameters\nrun = "{run.resolve()}"\nreviewer = "dr-a"\n'
    assert _injected(study) == f'# Parameters\nrun = "{run.resolve()}"\nn_real = 5\nchannel = "t1"\n'
    assert "MatchBrowser(run, reviewer=reviewer)" in _code(browser)[-1]
    assert "reader_study_app(run, n_real=n_real" in _code(study)[-1]
    for path in (browser, study):  # prepared, not executed
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert nb.cells[0].cell_type == "markdown" and "parameters" in nb.cells[1].metadata["tags"]
    prepare_app(run)  # again: replaced in place, defaults back, no temporary files left
    assert _injected(browser) == f'# Parameters\nrun = "{run.resolve()}"\nreviewer = "reviewer"\n'
    assert len(list(folder.iterdir())) == 2


def test_the_package_notebooks_are_thin_and_without_outputs():
    from workbench.runs import find_notebook

    for name in APP_NOTEBOOKS:
        nb = nbformat.read(find_notebook(name), as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and params[0].source.startswith('run = "runs/demo"')
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_a_missing_run_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    with pytest.raises(WorkbenchError, match=f"{missing}: run folder does not exist; make one with `workbench demo"):
        prepare_app(missing)
    assert not missing.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkbenchError, match="file: run folder is not a folder"):
        prepare_app(tmp_path / "file")
    (tmp_path / "run").mkdir()
    with pytest.raises(WorkbenchError, match=r"unknown reader-study parameter\(s\) \['n_reel'\]"):
        prepare_app(tmp_path / "run", n_reel=3)
    assert main(["app", str(missing), "--port", "0"]) == 2
    assert f"workbench: error: {missing}: run folder does not exist" in capsys.readouterr().err


def test_cli_app_options():
    args = build_parser().parse_args(["app", "runs/x", "--port", "8870", "--reviewer", "dr-b"])
    assert (args.command, args.run, args.port, args.reviewer, args.open) == ("app", "runs/x", 8870, "dr-b", False)
    args = build_parser().parse_args(["app", "runs/x"])
    assert args.port == 0 and args.reviewer == "reviewer"


def test_a_busy_port_is_an_error_not_another_port(tmp_path):
    (tmp_path / "run").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(WorkbenchError, match=f"port {port} on 127.0.0.1 is not available"):
            serve_app(tmp_path / "run", port=port)


def test_app_urls():
    assert app_urls(8866) == {"tree": "http://127.0.0.1:8866/",
                              "05_match_browser": "http://127.0.0.1:8866/voila/render/05_match_browser.ipynb",
                              "06_reader_study": "http://127.0.0.1:8866/voila/render/06_reader_study.ipynb"}


# -- end to end: `workbench app` as a subprocess, the tree page over HTTP, the reader study in chromium --------

def _small_run(tmp_path):
    """A run folder as 04_memorization leaves it, with enough images for the reader study's defaults (20 + 20)."""
    rng = np.random.default_rng(0)
    train, synthetic = tmp_path / "store", tmp_path / "synthetic"
    with StoreWriter(train, channels=["t1", "flair"], height=16, width=16, kind="real") as w:
        w.append(rng.random((30, 2, 16, 16), dtype=np.float32),
                 [{"subject": f"s{i // 6}", "z": i % 6, "split": "train" if i < 6 else "test"} for i in range(30)])
    with StoreWriter(synthetic, channels=["t1", "flair"], height=16, width=16, kind="synthetic") as w:
        w.append(rng.random((24, 2, 16, 16), dtype=np.float32), [{"split": "synthetic"}] * 24)
    run = tmp_path / "run"
    run.mkdir()
    (run / "memorization.json").write_text(json.dumps({"synthetic_store": str(synthetic), "train_store": str(train)}))
    return run


def _get(url: str, timeout: float = 120.0) -> str:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_workbench_app_serves_both_notebooks_and_the_reader_study_opens(tmp_path):
    import psutil

    from browser import browser_page, free_port, require_chromium

    require_chromium()
    run = _small_run(tmp_path)
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", str(run), "--port", str(port),
                             "--reviewer", "dr-app"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    children = []
    try:
        urls = app_urls(port)
        tree = _get(urls["tree"])
        for name in APP_NOTEBOOKS:  # listed, with links to their pages
            assert f'href="/voila/render/{name}.ipynb' in tree, tree[-3000:]
        deadline = time.time() + 30
        while "reader study:" not in (tmp_path / "app.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        printed = (tmp_path / "app.log").read_text()
        assert all(url in printed for url in urls.values()), printed
        assert "listening on 127.0.0.1 only" in printed
        with browser_page() as page:
            page.goto(urls["06_reader_study"], timeout=120_000)
            page.get_by_placeholder("your name or reader id").wait_for(timeout=120_000)
            assert page.get_by_role("button", name="start", exact=True).count() == 1
            page.get_by_placeholder("your name or reader id").fill("dr-app")
            page.get_by_role("button", name="start", exact=True).click()
            page.locator("text=Image 1 of 40").wait_for(timeout=60_000)  # the run's stores, the default 20 + 20
            page.screenshot(path=str(tmp_path / "app-reader-study.png"))
        assert (run / "reader_study" / "plan.csv").is_file()
        children = psutil.Process(proc.pid).children(recursive=True)  # voila and the page's kernel
        assert len(children) >= 2
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
        assert "stopped" in (tmp_path / "app.log").read_text()
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)  # voila and kernels
        assert not _port_open(port)
    finally:
        for p in [proc, *children]:
            try:
                if isinstance(p, subprocess.Popen):
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                elif p.is_running():
                    p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        log.close()
