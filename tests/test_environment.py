"""The install files agree: environment.yml pins what requirements.lock pins; torch stays 2.13.0."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lock():
    return {l.strip() for l in (ROOT / "requirements.lock").read_text().splitlines() if l.strip() and not l.startswith("#")}


def test_environment_yml_has_the_same_pins_as_the_lock():
    env = {l.strip()[2:].strip() for l in (ROOT / "environment.yml").read_text().splitlines()
           if l.strip().startswith("- ") and "==" in l}
    assert env == _lock()


def test_torch_is_pinned_to_the_cpu_build_version():
    assert "torch==2.13.0" in _lock()
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


def test_every_lock_entry_is_pinned():
    assert all("==" in p for p in _lock())


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
