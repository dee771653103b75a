"""The run's web app: the match browser and the reader study of one run, served by Voila.

``workbench app runs/demo`` writes parameterised copies of ``05_match_browser`` and
``06_reader_study`` into ``runs/demo/app/`` (parameters injected by papermill, not executed)
and serves that folder with Voila on 127.0.0.1, so reviewers and readers use the widgets in a
browser without seeing code.  Voila runs each page's kernel in ``<run>/app``, so the run folder
is injected as an absolute path.

>>> prepare_app("runs/demo", reviewer="dr-a")   # doctest: +SKIP
PosixPath('/.../runs/demo/app')
>>> serve_app("runs/demo", port=8866)            # until Ctrl-C   # doctest: +SKIP
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from .notebook import find_notebook

#: the app's notebooks, in the order the tree page lists them
APP_NOTEBOOKS = ("05_match_browser", "06_reader_study")
#: parameters of 06_reader_study that prepare_app may set
READER_STUDY_PARAMETERS = ("n_real", "n_synthetic", "seed", "channel")
HOST = "127.0.0.1"


def _run_folder(run) -> Path:
    run = Path(run)
    if not run.is_dir():
        what = "is not a folder" if run.exists() else "does not exist"
        raise WorkbenchError(f"{run}: run folder {what}; make one with `workbench demo --out {run}` or "
                             f"`workbench run 04_memorization --out {run} ...`")
    return run.resolve()


def prepare_app(run, *, reviewer: str = "reviewer", **reader_study) -> Path:
    """Write ``<run>/app/05_match_browser.ipynb`` and ``06_reader_study.ipynb`` with their parameters.

    ``reviewer`` is the match browser's reviewer name; ``reader_study`` may set ``n_real``,
    ``n_synthetic``, ``seed`` and ``channel`` of the reader study (the notebook's defaults
    otherwise).  The notebooks are prepared, not executed: Voila runs them for each visitor.
    Returns the app folder.
    """
    import papermill as pm

    run = _run_folder(run)
    unknown = sorted(set(reader_study) - set(READER_STUDY_PARAMETERS))
    if unknown:
        raise WorkbenchError(f"unknown reader-study parameter(s) {unknown}; known: {list(READER_STUDY_PARAMETERS)}")
    folder = run / "app"
    parameters = {"05_match_browser": {"run": str(run), "reviewer": str(reviewer)},
                  "06_reader_study": {"run": str(run), **reader_study}}
    for name in APP_NOTEBOOKS:
        src = find_notebook(name)
        with atomic_file(folder / src.name) as tmp:
            pm.execute_notebook(str(src), str(tmp), parameters=parameters[name], prepare_only=True,
                                kernel_name="python3", progress_bar=False, log_output=False)
    return folder


def app_urls(port: int) -> dict[str, str]:
    """The tree page and each notebook's page of an app served on ``port``."""
    base = f"http://{HOST}:{port}/"
    return {"tree": base, **{name: f"{base}voila/render/{name}.ipynb" for name in APP_NOTEBOOKS}}


def _free_port(port: int = 0) -> int:
    """``port`` if it is free on 127.0.0.1 (any free port for 0); a port in use is an error."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, int(port)))
        except OSError as err:
            raise WorkbenchError(f"port {port} on {HOST} is not available ({err.strerror}); "
                                 f"choose another with --port, or --port 0 for any free one") from None
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise WorkbenchError(f"voila exited with status {proc.returncode} before serving {url} "
                                 f"(is the port in use? its messages are above)")
        try:
            with urllib.request.urlopen(url + "voila/static/", timeout=2):
                return
        except urllib.error.HTTPError:  # any HTTP answer means the server is up
            return
        except OSError:
            if time.time() > deadline:
                raise WorkbenchError(f"voila did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # voila stops its kernels and exits on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_app(run, *, port: int = 0, open_browser: bool = False, reviewer: str = "reviewer",
              startup_timeout: float = 120.0, **reader_study) -> int:
    """Prepare the app of ``run`` and serve it with Voila on 127.0.0.1 until Ctrl-C.

    ``port=0`` picks a free port.  Prints the tree page's URL (a list of the notebooks) and the
    URL of each notebook's page.  Voila runs in its own process group, so Ctrl-C reaches only this
    function, which then stops Voila (and the kernels it started) before returning.  Returns
    Voila's exit status.
    """
    folder = prepare_app(run, reviewer=reviewer, **reader_study)
    if not (folder.parent / "memorization.json").is_file():
        print(f"note: {folder.parent / 'memorization.json'} is missing: the pages will say how to make it "
              f"(notebooks/04_memorization.ipynb, or `make demo`)", flush=True)
    port = _free_port(port)
    urls = app_urls(port)
    # --classic-tree: the tree page lists the notebooks in its HTML (the default one builds the list in JS)
    # --Voila.port_retries=0: serve on this port or fail, never quietly on another one
    command = [sys.executable, "-m", "voila", str(folder), f"--Voila.ip={HOST}", f"--port={port}", "--no-browser",
               "--classic-tree", "--Voila.port_retries=0"]
    proc = subprocess.Popen(command, cwd=folder, start_new_session=True)
    try:
        _wait_until_up(proc, urls["tree"], startup_timeout)
        print(f"\nworkbench app for {folder.parent} (listening on {HOST} only; Ctrl-C stops it)\n"
              f"  prepared:       {', '.join(str(folder / f'{name}.ipynb') for name in APP_NOTEBOOKS)}\n"
              f"  notebooks:      {urls['tree']}\n"
              f"  match browser:  {urls['05_match_browser']}\n"
              f"  reader study:   {urls['06_reader_study']}\n", flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(urls["tree"])
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping voila ...", flush=True)
        _stop(proc)
        print("stopped", flush=True)
        return 0
    finally:
        _stop(proc)
