"""`make test` runs the browser tests wherever it can, and says how to run them where it cannot."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skipped_browser_tests_end_the_run_with_how_to_run_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_REQUIRE_BROWSER"}
    env["WORKBENCH_CHROMIUM"] = str(tmp_path / "no-chromium")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_jupyterlab.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert "skipped" in last  # pytest's own count
    assert (f"1 browser test(s) skipped: {tmp_path / 'no-chromium'} is missing. Run them with: "
            f"sudo apt-get install -y chromium && make test") in r.stdout


def test_make_test_installs_chromium_where_it_may():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "bash .ci/install-chromium" in test_rule and "pytest" in test_rule
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's command, which installs chromium itself
    script = (ROOT / ".ci" / "install-chromium").read_text()
    assert "apt-get install -y -qq chromium" in script and "sudo -n" in script
    assert os.access(ROOT / ".ci" / "install-chromium", os.X_OK)
