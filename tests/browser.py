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

CHROMIUM = "/usr/bin/chromium"
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


@contextlib.contextmanager
def voila(notebook: Path, *, timeout: float = 90.0):
    """Serve ``notebook`` with Voila on 127.0.0.1 and a free port; yield its URL; stop it after."""
    port = free_port()
    log = open(notebook.parent / f"voila-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser",
                             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
                            cwd=notebook.parent, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"voila exited with {proc.returncode}: {(notebook.parent / log.name).read_text()[-2000:]}")
            try:  # any HTTP answer means the server is up (the page itself runs the notebook)
                with urllib.request.urlopen(url + "voila/static/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"voila did not start within {timeout} s") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
