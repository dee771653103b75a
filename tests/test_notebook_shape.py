"""Notebooks are thin: a parameters cell, then calls into the package (DESIGN.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))


def _code(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_only_workbench_and_its_widgets(path):
    allowed = {"workbench", "workbench.widgets"}
    for cell in _code(path):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                continue
            assert set(names) <= allowed, f"{path.name}: imports {names} (only {sorted(allowed)} are for notebooks)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_have_a_parameters_cell_first_and_are_committed_without_outputs(path):
    cells = _code(path)
    assert "parameters" in cells[0].metadata.get("tags", []), path.name
    assert all(not c.outputs and c.execution_count is None for c in cells), f"{path.name} has outputs"


def test_the_memorization_notebook_is_at_most_25_lines_of_code_outside_its_parameters():
    path = next(p for p in NOTEBOOKS if p.stem == "04_memorization")
    lines = [ln for c in _code(path)[1:] for ln in c.source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) <= 25, "\n".join(lines)
    text = "\n".join(lines)
    assert "workbench.open_run(" in text and "workbench.analyze(" in text and "browse(run" in text
