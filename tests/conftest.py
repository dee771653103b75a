"""Shared fixtures: a small brain phantom and its SliceStore, built once per test session."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from workbench.data.phantom import write_brain_phantom
from workbench.data.prepare import prepare_brats_store


@pytest.fixture(scope="session", autouse=True)
def machine_cache(tmp_path_factory):
    """The per-machine probes' cache (bf16 speed, the search's brute probe) in a folder of this test
    session, never the user's ``~/.cache``: what one test measured another (and the notebooks the
    tests run, which inherit the environment) may read, as on a user's machine."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield os.environ["XDG_CACHE_HOME"]
    if before is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def fresh_machine_cache(tmp_path, monkeypatch):
    """An empty per-machine cache for one test: every probe is measured again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "workbench"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "brain"
    write_brain_phantom(out, subjects=3, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_store(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "store32"
    return prepare_brats_store(phantom_dir, out, size=32, n_test=1, seed=0, progress=False)


@pytest.fixture(scope="session")
def phantom_detector(phantom_store, tmp_path_factory):
    """A copy detector trained on the phantom store's training split (about 20 s on 2 cores)."""
    from workbench.memorization.detector import train_detector

    out = tmp_path_factory.mktemp("detector") / "det32"
    # 32x32: three stages leave 4x4 feature maps (the default four would leave 2x2)
    train_detector(phantom_store.where(split="train"), out, steps=600, batch_size=64, seed=0, progress=False,
                   widths=(32, 64, 128))
    return out


def write_subject(root, sid, *, shape=(24, 20, 10), contrasts=("t1", "t1ce", "t2", "flair", "seg"), seed=0,
                  suffix=".nii.gz", overrides=None):
    """A tiny BraTS-layout subject: a bright box of 'brain' in each contrast, a small tumour in seg."""
    rng = np.random.default_rng(seed)
    folder = root / sid
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    brain = np.zeros(shape, np.float32)
    brain[4:-4, 3:-3, 2:-2] = 1
    for c in contrasts:
        if c == "seg":
            data = np.zeros(shape, np.uint8)
            data[10:13, 8:11, 4:6] = 2
            data[11, 9, 5] = 4
        else:
            data = (brain * (100 + 50 * rng.random(shape))).astype(np.float32)
        if overrides and c in overrides:
            data = overrides[c]
        nib.save(nib.Nifti1Image(data, affine), folder / f"{sid}_{c}{suffix}")
    return folder


def pytest_terminal_summary(terminalreporter):
    """End a run that skipped the browser tests with how many, and the one command that runs them."""
    from browser import CHROMIUM

    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "chromium" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} browser test(s) skipped: {CHROMIUM} is missing. Run them with: "
            f"sudo apt-get install -y chromium && make test", yellow=True, bold=True)
