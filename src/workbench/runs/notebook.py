"""Execute a parameterised notebook through papermill into a run folder, with an HTML export.

A notebook is a function: parameters in (its ``parameters`` cell), outputs and recorded values
out.  The executed copy is written under a temporary name and renamed when the run completes;
a run that fails leaves ``<name>.FAILED.ipynb`` (with the error shown in the failing cell) and
never a notebook that looks finished.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from ..data.atomic import atomic_file
from ..errors import WorkbenchError

#: the workbench's notebooks (notebooks/ at the top of the repository)
NOTEBOOK_DIR = Path(__file__).resolve().parents[3] / "notebooks"


def find_notebook(name) -> Path:
    """Resolve ``name`` as a path, or as the name of one of the workbench's notebooks.

    >>> find_notebook("04_memorization").name        # doctest: +SKIP
    '04_memorization.ipynb'
    """
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (NOTEBOOK_DIR / path.name, NOTEBOOK_DIR / f"{path.name}.ipynb"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    raise WorkbenchError(f"{name}: no such notebook (the workbench's notebooks are {known})")


def parse_value(text: str):
    """Read a command-line parameter value: JSON (numbers, true/false/null, lists) or a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def export_html(notebook: Path, html: Path) -> Path:
    """Export an executed notebook to a self-contained HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    with warnings.catch_warnings():  # scrapbook's records have no HTML form, by design
        warnings.filterwarnings("ignore", message=".*scrapbook.scrap.*")
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_file(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html


def run_notebook(notebook, out, parameters: dict | None = None, *, html: bool = True,
                 progress: bool = True, log_output: bool = False) -> Path:
    """Execute ``notebook`` with ``parameters`` into the run folder ``out``.

    Writes ``out/<name>.ipynb`` (and ``out/<name>.html``) and returns the notebook's path.

    >>> run_notebook("01_prepare_data", "runs/mine", {"phantom_subjects": 4})   # doctest: +SKIP
    """
    import papermill as pm

    src = find_notebook(notebook)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / src.name
    failed = out / f"{src.stem}.FAILED.ipynb"
    params = dict(parameters or {})
    started = time.time()
    with atomic_file(target) as tmp:
        try:
            pm.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=progress,
                                log_output=log_output, kernel_name="python3")
        except pm.PapermillExecutionError as err:
            tmp.replace(failed)
            raise WorkbenchError(
                f"{src.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"  the executed notebook with the error is {failed}") from None
    if failed.exists():
        failed.unlink()
    if html:
        export_html(target, target.with_suffix(".html"))
    if progress:
        print(f"ran {src.name} in {time.time() - started:.0f} s -> {target}" + (f" (+ {target.with_suffix('.html').name})" if html else ""))
    return target
