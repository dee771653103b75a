"""The run's web app: the match browser and the reader study of one run, served by Voila.

``workbench app runs/demo`` writes parameterised copies of ``05_match_browser`` and
``06_reader_study`` into ``runs/demo/app/`` (parameters injected by papermill, not executed)
and serves that folder with Voila, so reviewers and readers use the widgets in a browser
without seeing code.  Voila runs each page's kernel in ``<run>/app``, so the run folder is
injected as an absolute path.

The pages show patients' images and write marks, so the app is never open: it listens on
127.0.0.1 unless asked otherwise, every page and kernel route asks for a token (new at every
start unless given) that only the printed URLs carry, and Voila with its kernels stops with
``workbench app`` however that ends (Ctrl-C, SIGTERM, a closed terminal, even ``kill -9``).

>>> prepare_app("runs/demo", reviewer="dr-a")   # doctest: +SKIP
PosixPath('/.../runs/demo/app')
>>> serve_app("runs/demo", port=8866)            # until Ctrl-C   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..data.atomic import atomic_file
from ..data import layout
from ..errors import WorkbenchError
from .notebook import check_parameters

#: the app's notebooks, in the order the tree page lists them
APP_NOTEBOOKS = ("05_match_browser", "06_reader_study")
#: parameters of 06_reader_study that prepare_app may set
READER_STUDY_PARAMETERS = ("n_real", "n_synthetic", "seed", "channel")
HOST = "127.0.0.1"
#: signals that stop the app: Ctrl-C, ``kill``, and a closed terminal or ssh connection
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


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
        src = check_parameters(name, parameters[name])  # declared by the notebook, of the right kind
        with atomic_file(folder / src.name) as tmp:
            pm.execute_notebook(str(src), str(tmp), parameters=parameters[name], prepare_only=True,
                                kernel_name="python3", progress_bar=False, log_output=False)
    return folder


def app_urls(port: int, token: str | None = None, *, host: str = HOST) -> dict[str, str]:
    """The tree page and each notebook's page of an app served on ``host:port``, carrying ``token``."""
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    query = f"?token={urllib.parse.quote(token, safe='')}" if token else ""
    return {"tree": base + query, **{name: f"{base}voila/render/{name}.ipynb{query}" for name in APP_NOTEBOOKS}}


def _is_loopback(ip: str) -> bool:
    try:
        return ip == "localhost" or ipaddress.ip_address(ip).is_loopback
    except ValueError:  # a host name, or "" for every interface
        return False


def _url_host(ip: str) -> str:
    """Where this machine reaches a server listening on ``ip`` (every interface: through loopback)."""
    return {"": HOST, "0.0.0.0": HOST, "::": "::1"}.get(ip, ip)


def _free_port(port: int = 0, ip: str = HOST) -> int:
    """``port`` if it is free on ``ip`` (any free port for 0); a port in use is an error."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, int(port)))
        except OSError as err:
            raise WorkbenchError(f"port {port} on {ip or 'every interface'} is not available ({err.strerror}); "
                                 f"choose another with --port, or --port 0 for any free one") from None
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect (to Voila's login page) is an answer to look at, not to follow


def _status(url: str, timeout: float = 30) -> int:
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_until_up(proc: subprocess.Popen, url: str, timeout: float, stop: list) -> bool:
    """Wait until Voila answers at ``url``; False when a stop signal came first."""
    deadline = time.time() + timeout
    while not stop:
        if proc.poll() is not None:
            raise WorkbenchError(f"voila exited with status {proc.returncode} before serving {url} "
                                 f"(is the port in use? its messages are above)")
        try:
            _status(url + "voila/static/", timeout=2)  # any HTTP answer means the server is up
            return True
        except OSError:
            if time.time() > deadline:
                raise WorkbenchError(f"voila did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.3)
    return False


def _require_token(url: str) -> None:
    """Never serve patients' images to whoever asks: the tree page must want the token that ``url`` carries.

    A Jupyter config file can set Voila's token itself (or turn it off); then the printed URLs would
    be wrong or the app open, so it is stopped instead.
    """
    bare, with_token = _status(url.split("?")[0]), _status(url)
    if bare == 200 or with_token != 200:
        raise WorkbenchError(f"voila at {url.split('?')[0]} does not ask for the token workbench gave it "
                             f"(HTTP {bare} without it, {with_token} with it; does a Jupyter config file set "
                             f"Voila.token or IdentityProvider.token?); stopped it")


def _die_with_this_process():
    """A ``preexec_fn`` after which Linux sends Voila SIGTERM when this process dies, even by SIGKILL.

    Voila runs in its own session, so Ctrl-C or a closed terminal reaches only this process, which
    then stops Voila in order; but a ``kill -9`` of this process would leave Voila serving patients'
    images, re-parented to PID 1.  PR_SET_PDEATHSIG closes that gap (SIGTERM, so that Voila still
    stops its kernels).  It follows the *thread* that started Voila: serve_app's, which waits for it.
    None where there is no prctl (not Linux): there, only the signals serve_app handles stop Voila.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG, <linux/prctl.h>
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _stop_signals():
    """For its duration, SIGINT, SIGTERM and SIGHUP are noted in the yielded list instead of ending this process.

    By default SIGTERM and SIGHUP (a closed terminal or ssh connection) end Python at once and leave
    Voila, in its own session, serving.  The handler only notes the signal: serve_app's loops see it
    and stop Voila, and a second signal cannot cut that short.  A signal this process ignores stays
    ignored (``nohup workbench app`` outlives its terminal, as asked).  Handlers are restored after;
    outside the main thread, where Python takes no signals, nothing changes.
    """
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # voila stops its kernels and exits on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _say(text: str, file=None) -> None:
    """print, and never fail: after SIGHUP the terminal may be gone, and stopping Voila matters more."""
    try:
        print(text, file=file or sys.stdout, flush=True)
    except OSError:
        pass


def _open_in_browser(url: str) -> Path:
    """Open ``url`` through a redirect file only this user can read, as Jupyter does.

    Given to the browser directly, the token would stand on its command line, which ``ps`` shows to
    every user of the machine.  The file lies in Jupyter's runtime folder, not /tmp, which a
    sandboxed browser (snap, flatpak) may not see.
    """
    import html
    import tempfile
    import webbrowser

    from jupyter_core.paths import jupyter_runtime_dir

    Path(jupyter_runtime_dir()).mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, path = tempfile.mkstemp(prefix="workbench-app-", suffix=".html", dir=jupyter_runtime_dir())  # mode 0600
    with os.fdopen(fd, "w") as f:
        f.write(f'<!DOCTYPE html><meta http-equiv="refresh" content="0;url={html.escape(url)}">')
    webbrowser.open(Path(path).as_uri())
    return Path(path)


def _exposure_warning(ip: str, port: int) -> str:
    who = "any computer that can reach this machine" if ip in ("", "0.0.0.0", "::") else f"anyone who can reach {ip}"
    return (f"WARNING: listening on {ip or 'every interface'}, not on 127.0.0.1 only: {who} on port {port} gets "
            f"the app's login page, and anyone with a URL above (it carries the token) sees patients' images and "
            f"can write marks. The connection is plain http (not encrypted). Share the URL only with the readers, "
            f"on a network you trust, and stop the app when done; to share safely, serve on 127.0.0.1 and let "
            f"each reader tunnel with `ssh -L`.")


def serve_app(run, *, port: int = 0, ip: str = HOST, token: str | None = None, open_browser: bool = False,
              reviewer: str = "reviewer", startup_timeout: float = 120.0, **reader_study) -> int:
    """Prepare the app of ``run`` and serve it with Voila until Ctrl-C, SIGTERM or SIGHUP.

    The pages show patients' images and write marks, so Voila asks every visitor for ``token``
    (a new random one at every start when None) and listens on ``ip``: 127.0.0.1 by default, so
    only this machine's users can connect (others through an ``ssh -L`` tunnel); any other
    address prints a warning.  Prints the tree page's URL and each notebook's, all carrying the
    token.  The token reaches Voila in its environment (``JUPYTER_TOKEN``), which other users
    cannot read, not on its command line, which ``ps`` shows them.  ``port=0`` picks a free port.

    Voila runs in its own session, so Ctrl-C reaches only this function, which stops Voila and
    its kernels on SIGINT, SIGTERM or SIGHUP; on Linux Voila also dies with this process, even
    on SIGKILL.  Returns 0 when a signal stopped it, otherwise Voila's exit status.
    """
    if token is None:
        token = secrets.token_urlsafe(24)
    elif not str(token).strip():
        raise WorkbenchError("the app's token is empty: give a non-empty one, or none for a random one "
                             "(an empty token would let anyone in)")
    folder = prepare_app(run, reviewer=reviewer, **reader_study)
    if not (folder.parent / layout.MEMORIZATION).is_file():
        print(f"note: {folder.parent / layout.MEMORIZATION} is missing: the pages will say how to make it "
              f"(notebooks/04_memorization.ipynb, or `make demo`)", flush=True)
    port = _free_port(port, ip)
    host = _url_host(ip)
    urls = app_urls(port, str(token), host=host)
    # --classic-tree: the tree page lists the notebooks in its HTML (the default one builds the list in JS)
    # --Voila.port_retries=0: serve on this port or fail, never quietly on another one
    # --Voila.auto_token with --Voila.token=None: the token comes from JUPYTER_TOKEN, whatever a config file says
    command = [sys.executable, "-m", "voila", str(folder), f"--Voila.ip={ip}", f"--port={port}", "--no-browser",
               "--classic-tree", "--Voila.port_retries=0", "--Voila.auto_token=True", "--Voila.token=None"]
    env = {**{k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN_FILE"}, "JUPYTER_TOKEN": str(token)}
    proc = redirect = None
    with _stop_signals() as stop:
        try:
            proc = subprocess.Popen(command, cwd=folder, env=env, start_new_session=True,
                                    preexec_fn=_die_with_this_process())
            if _wait_until_up(proc, app_urls(port, host=host)["tree"], startup_timeout, stop):
                _require_token(urls["tree"])
                where = f"listening on {HOST} only" if ip == HOST else f"listening on {ip or 'every interface'}"
                print(f"\nworkbench app for {folder.parent} ({where}; Ctrl-C stops it)\n"
                      f"  prepared:       {', '.join(str(folder / f'{name}.ipynb') for name in APP_NOTEBOOKS)}\n"
                      f"  notebooks:      {urls['tree']}\n"
                      f"  match browser:  {urls['05_match_browser']}\n"
                      f"  reader study:   {urls['06_reader_study']}\n"
                      f"  These URLs carry the access token: whoever has one sees patients' images and can write\n"
                      f"  marks, so give them only to the reviewers and readers.\n", flush=True)
                if not _is_loopback(ip):
                    _say(_exposure_warning(ip, port) + "\n", file=sys.stderr)
                if open_browser:
                    redirect = _open_in_browser(urls["tree"])
                while proc.poll() is None and not stop:
                    time.sleep(0.2)
            if not stop:
                return proc.returncode
            _say(f"\n{signal.Signals(stop[0]).name}: stopping voila and its kernels ...")
            _stop(proc)
            _say("stopped")
            return 0
        finally:
            if proc is not None:
                _stop(proc)
            if redirect is not None:
                redirect.unlink(missing_ok=True)
