"""Helpers for tests in a real browser: Voila on a free local port, driven by Playwright + chromium.

Every server listens on 127.0.0.1 only and is stopped by the test that started it.  Chromium is
Debian's (``apt-get install -y chromium``), not Playwright's download.  Where it is missing the
browser tests are skipped, except when ``WORKBENCH_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
where that is an error.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")  # Debian's; another path for tests of the skip
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> str:
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) for the browser tests"
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, *cells: str) -> Path:
    """A notebook of code cells with the python3 kernel, for a server to run."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@contextlib.contextmanager
def _server(name: str, command: list[str], *, cwd: Path, probe: str, timeout: float, env: dict | None = None):
    """Run a local web server until ``probe`` answers over HTTP (any status); stop it after."""
    log_path = cwd / f"{name}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    break
            except urllib.error.HTTPError:  # an HTTP answer means the server is up
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{name} did not start within {timeout} s") from None
                time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def voila(notebook: Path, *, timeout: float = 90.0):
    """Serve ``notebook`` with Voila on 127.0.0.1 and a free port; yield its URL; stop it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with _server(f"voila-{port}", [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser",
                                   "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
                 cwd=notebook.parent, probe=url + "voila/static/", timeout=timeout):
        yield url


@contextlib.contextmanager
def browser_page(*, width: int = 1400, height: int = 1000):
    """A chromium page through Playwright (headless)."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


# -- timing a step in the page: from the key press to the last panel drawn -----------------------------
STEP_TIMER = """(root) => {
  window.__t0 = null; window.__last = null;
  window.addEventListener('keydown', () => { window.__t0 = performance.now(); window.__last = null; }, true);
  const seen = (t) => { if (window.__t0 !== null) window.__last = Math.max(window.__last || 0, t); };
  new MutationObserver((records) => {
    for (const r of records) {
      seen(performance.now());
      if (r.type === 'attributes' && r.target.tagName === 'IMG') {   // count the decode of a new panel too
        r.target.decode().then(() => seen(performance.now()), () => {});
      }
    }
  }).observe(document.querySelector(root), {subtree: true, childList: true, characterData: true,
                                             attributes: true, attributeFilter: ['src']});
}"""


def install_step_timer(page, root: str) -> None:
    """Record, for every key press, when the last change under ``root`` (text or image, decoded) happened."""
    page.evaluate(STEP_TIMER, root)


def timed_key(page, key: str, *, settled_ms: int = 250) -> float:
    """Press ``key``; wait until the page under the timer has been quiet for ``settled_ms``; return ms to the last change."""
    page.keyboard.press(key)
    page.wait_for_function("() => window.__last !== null", timeout=30_000)
    while True:  # wait for the burst of updates to end
        before = page.evaluate("() => window.__last")
        page.wait_for_timeout(settled_ms)
        if page.evaluate("() => window.__last") == before:
            return float(before - page.evaluate("() => window.__t0"))


@contextlib.contextmanager
def jupyterlab(folder: Path, *, timeout: float = 120.0):
    """JupyterLab on 127.0.0.1 and a free port, serving ``folder``; yields (base URL, token); stopped after.

    Update checks, news and the extension manager are off, and settings and workspaces live in
    ``folder``, so the test neither reaches the network nor touches the user's JupyterLab.
    """
    import secrets

    port, token = free_port(), secrets.token_hex(16)
    state = folder / ".jupyter-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces")}
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={folder}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.allow_root=True"]
    with _server(f"jupyterlab-{port}", command, cwd=folder, probe=f"{url}api/status?token={token}", timeout=timeout,
                 env=env):
        yield url, token
