"""`workbench app RUN`: the run's match browser and reader study, prepared by papermill and served by Voila."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
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
    assert "browse(run, reviewer=reviewer)" in _code(browser)[-1]  # MatchBrowser, or VolumeViewer for volumes
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
    base = "http://127.0.0.1:8866/"
    assert app_urls(8866, "a b/c") == {"tree": f"{base}?token=a%20b%2Fc",
                                       "05_match_browser": f"{base}voila/render/05_match_browser.ipynb?token=a%20b%2Fc",
                                       "06_reader_study": f"{base}voila/render/06_reader_study.ipynb?token=a%20b%2Fc"}
    assert app_urls(8866, "t", host="::1")["tree"] == "http://[::1]:8866/?token=t"


def test_an_empty_token_is_refused_before_anything_is_served(tmp_path):
    (tmp_path / "run").mkdir()
    for token in ("", "  "):
        with pytest.raises(WorkbenchError, match="the app's token is empty"):
            serve_app(tmp_path / "run", token=token)
    assert not (tmp_path / "run" / "app").exists()


# -- end to end: `workbench app` as a subprocess, its pages over HTTP, the reader study in chromium --------

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


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    """A run folder without results: the pages say what is missing, and serving them needs nothing more."""
    run = tmp_path_factory.mktemp("app") / "run"
    run.mkdir()
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _answer(url: str) -> tuple[int, str, str]:
    """Status, Location header and body of one GET, redirects not followed."""
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=120) as response:
            return response.status, response.headers.get("Location", ""), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location", ""), err.read().decode(errors="replace")


def _port_open(port: int) -> bool:
    """Something listens on 127.0.0.1:port.  A TCP connect to a free port in the ephemeral range
    can connect to itself (the kernel picks that very port as the source: a "simultaneous open"),
    which is not a listener: that case reads as closed."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
        return s.getsockname() != s.getpeername()


def _listeners(port: int) -> list[str]:
    """Who listens on the port (for a failure's message)."""
    import psutil

    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.laddr and c.laddr.port == port:
            try:
                who = psutil.Process(c.pid).cmdline() if c.pid else None
            except psutil.Error:
                who = None
            out.append(f"{c.status} pid {c.pid}: {who}")
    return out


def _gone(processes, timeout: float = 30.0) -> list:
    """The processes still running after ``timeout`` s (a zombie has stopped: PID 1 here may not reap it)."""
    import psutil

    def running(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + timeout
    while any(running(p) for p in processes) and time.time() < deadline:
        time.sleep(0.2)
    return [p for p in processes if running(p)]


class _App:
    """`workbench app` started by a test: its process, log, the URLs it printed and the processes it started."""

    def __init__(self, proc, log_path):
        self.proc, self.log_path, self.started = proc, log_path, []

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def urls(self) -> dict[str, str]:
        names = {"notebooks": "tree", "match browser": "05_match_browser", "reader study": "06_reader_study"}
        printed = re.findall(r"^  (notebooks|match browser|reader study): +(\S+)$", self.log, re.M)
        return {names[k]: v for k, v in printed}

    def note(self) -> list:
        """Voila and the kernels it started so far (noted, so that the test stops them whatever happens)."""
        import psutil

        roots = [self.proc.pid, *self.started]  # voila's kernels, even when voila outlived `workbench app`
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(root) if isinstance(root, int) else root
                self.started += [p for p in root.children(recursive=True) if p not in self.started]
        return list(self.started)


@contextlib.contextmanager
def _workbench_app(tmp_path, command, *, ignore=(), env=None):
    """Run ``command`` (``workbench app`` or a serve_app call) until it prints its URLs; kill all it started after.

    The stop signals start at their defaults (a test runner started with ``&`` ignores SIGINT),
    except those in ``ignore``, which start ignored as under ``nohup``.
    """
    import psutil

    def preexec():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN if sig in ignore else signal.SIG_DFL)

    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        app = _App(subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                    env=env), log_path)
        try:
            deadline = time.time() + 240
            while "reader study:" not in app.log:
                assert app.proc.poll() is None and time.time() < deadline, app.log
                time.sleep(0.2)
            app.note()
            yield app
        finally:
            app.note()
            for p in [app.proc, *app.started]:
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    p.kill()
            app.proc.wait()


def _cli(run, port, *options):
    return [sys.executable, "-m", "workbench", "app", str(run), "--port", str(port), *options]


def _listening(process, port: int) -> set[str]:
    """The addresses ``process`` listens on at ``port``."""
    import psutil

    return {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            and c.laddr.port == port}


@pytest.mark.slow
def test_every_page_and_kernel_wants_the_printed_token(empty_run, tmp_path):
    import psutil

    from browser import free_port

    port = free_port()
    with _workbench_app(tmp_path, _cli(empty_run, port)) as app:
        urls = app.urls()
        assert set(urls) == {"tree", *APP_NOTEBOOKS}, app.log
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(urls["tree"]).query)["token"][0]
        assert len(token) >= 32 and urls == app_urls(port, token)
        assert "listening on 127.0.0.1 only" in app.log and "WARNING" not in app.log
        base = f"http://127.0.0.1:{port}/"
        kernels = []
        for name, url in urls.items():
            bare = url.split("?")[0]
            for wrong in (bare, f"{bare}?token=wrong", f"{bare}?token={token[:-1]}"):
                status, location, _ = _answer(wrong)  # Voila 0.5 sends the browser to its login page (token form)
                assert (status, location.split("?")[0]) == (302, "/login"), (name, wrong, status)
            status, _, page = _answer(url)
            assert status == 200, (name, page[-2000:])
            kernels += re.findall(r'"kernelId": "([0-9a-f-]{36})"', page)
        assert len(kernels) == len(APP_NOTEBOOKS)  # each notebook's page started its kernel
        for kernel in kernels:  # the kernel REST API and its websocket answer no one without the token
            for wrong in ("", "?token=wrong"):
                assert _answer(f"{base}api/kernels/{kernel}{wrong}")[0] == 403
                assert _answer(f"{base}api/kernels/{kernel}/channels{wrong}")[0] == 403
            status, _, body = _answer(f"{base}api/kernels/{kernel}?token={token}")
            assert status == 200 and json.loads(body)["id"] == kernel
        assert _answer(f"{base}voila/api/contents/")[0] == 403
        assert _answer(f"{base}voila/api/contents/?token={token}")[0] == 200
        # Voila 0.5 has no kernel list (/api/kernels), with or without the token
        assert _answer(f"{base}api/kernels")[0] == _answer(f"{base}api/kernels?token={token}")[0] == 404
        assert _answer(f"{base}login")[0] == 200  # public: it asks for the token
        # the token is on no command line (`ps` shows those to every user), and Voila listens on 127.0.0.1 only
        processes = [psutil.Process(app.proc.pid), *app.note()]
        assert len(processes) >= 4  # workbench app, voila, two kernels
        assert not any(token in " ".join(p.cmdline()) for p in processes)
        assert _listening(app.started[0], port) == {"127.0.0.1"}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_stops_voila_and_its_kernels(empty_run, tmp_path, signum):
    from browser import free_port

    port = free_port()
    with _workbench_app(tmp_path, _cli(empty_run, port)) as app:
        assert _answer(app.urls()["06_reader_study"])[0] == 200  # starts the page's kernel
        started = app.note()
        assert len(started) >= 2  # voila and the kernel
        app.proc.send_signal(signum)  # Ctrl-C, `kill`, a closed terminal or ssh connection
        assert app.proc.wait(timeout=60) == 0, app.log
        assert not _gone(started), app.log
        assert not _port_open(port)
        stopping = f"{signal.Signals(signum).name}: stopping voila and its kernels ...\n.*Kernel shutdown.*\nstopped\n"
        assert re.search(stopping, app.log, re.S), app.log  # voila shut its kernel down, it was not killed


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_voila_does_not_outlive_workbench_app_even_killed(empty_run, tmp_path):
    from browser import free_port

    port = free_port()
    with _workbench_app(tmp_path, _cli(empty_run, port), ignore=(signal.SIGHUP,)) as app:  # as under nohup
        assert _answer(app.urls()["06_reader_study"])[0] == 200
        started = app.note()
        app.proc.send_signal(signal.SIGHUP)  # ignored, as asked: still serving
        time.sleep(1)
        assert app.proc.poll() is None and _answer(app.urls()["tree"])[0] == 200
        app.proc.kill()  # SIGKILL: no handler runs, the kernel tells voila
        app.proc.wait(timeout=10)
        assert not _gone(started), app.log
        deadline = time.time() + 10  # the listening socket closes with the last process that holds it
        while _port_open(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _port_open(port), _listeners(port)


@pytest.mark.slow
def test_serving_beyond_127_0_0_1_warns_and_still_wants_the_token(empty_run, tmp_path):
    from browser import free_port

    port = free_port()
    token = secrets.token_urlsafe(16)  # given by the caller, through the environment (not on a command line)
    code = ("import os, sys; from workbench.runs import serve_app; "
            "sys.exit(serve_app(sys.argv[1], port=int(sys.argv[2]), ip='0.0.0.0', token=os.environ['APP_TOKEN']))")
    with _workbench_app(tmp_path, [sys.executable, "-c", code, str(empty_run), str(port)],
                        env={**os.environ, "APP_TOKEN": token}) as app:  # stopped in the test, at the latest on exit
        deadline = time.time() + 30
        while "stop the app when done" not in app.log and time.time() < deadline:
            time.sleep(0.1)
        assert app.urls() == app_urls(port, token)
        assert "listening on 0.0.0.0;" in app.log
        assert (f"WARNING: listening on 0.0.0.0, not on 127.0.0.1 only: any computer that can reach this machine "
                f"on port {port} gets the app's login page, and anyone with a URL above (it carries the token) sees "
                f"patients' images") in app.log
        assert _listening(app.started[0], port) == {"0.0.0.0"}
        assert _answer(app.urls()["tree"].split("?")[0])[0] == 302 and _answer(app.urls()["tree"])[0] == 200
        app.proc.terminate()
        assert app.proc.wait(timeout=60) == 0
        assert not _port_open(port)


@pytest.mark.slow
def test_workbench_app_serves_both_notebooks_and_the_reader_study_opens(tmp_path):
    from browser import browser_page, free_port, require_chromium

    require_chromium()
    run = _small_run(tmp_path)
    port = free_port()
    with _workbench_app(tmp_path, _cli(run, port, "--reviewer", "dr-app")) as app:
        urls = app.urls()
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(urls["tree"]).query)["token"][0]
        assert urls == app_urls(port, token), app.log
        assert "listening on 127.0.0.1 only" in app.log
        tree = _get(urls["tree"])
        for name in APP_NOTEBOOKS:  # listed, with links to their pages
            assert f'href="/voila/render/{name}.ipynb' in tree, tree[-3000:]
        with browser_page() as page:
            page.goto(urls["06_reader_study"], timeout=120_000)
            page.get_by_placeholder("your name or reader id").wait_for(timeout=120_000)
            assert page.get_by_role("button", name="start", exact=True).count() == 1
            page.get_by_placeholder("your name or reader id").fill("dr-app")
            page.get_by_role("button", name="start", exact=True).click()
            page.locator("text=Image 1 of 40").wait_for(timeout=60_000)  # the run's stores, the default 20 + 20
            page.screenshot(path=str(tmp_path / "app-reader-study.png"))
        assert (run / "reader_study" / "plan.csv").is_file()
        children = app.note()  # voila and the page's kernel
        assert len(children) >= 2
        app.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert app.proc.wait(timeout=60) == 0
        assert "stopped" in app.log
        assert not _gone(children)
        assert not _port_open(port)
