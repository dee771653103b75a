"""The kernels that run notebooks listen on Unix sockets in a private folder, not on TCP ports."""
from __future__ import annotations

import glob
import os
import tempfile

import nbformat
import pytest

from workbench.runs.notebook import run_notebook


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets are POSIX's")
def test_a_notebook_runs_in_a_kernel_over_private_unix_sockets(tmp_path, capfd):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, stat\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "app = IPKernelApp.instance()\n"
        "folder = os.path.dirname(app.ip)\n"
        "print(app.transport, folder, oct(stat.S_IMODE(os.stat(folder).st_mode)))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "workbench-kernel-*")))
    nbformat.write(nb, tmp_path / "probe.ipynb")
    out = run_notebook(tmp_path / "probe.ipynb", tmp_path / "run", html=False)
    transport, folder, mode = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].split()
    assert transport == "ipc" and mode == "0o700"
    assert not os.path.exists(folder)  # removed with the kernel
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "workbench-kernel-*"))) == before
    assert "without encryption" not in capfd.readouterr().err
