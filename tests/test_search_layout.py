"""The search package keeps one idea per module: no module imports another's private names, and
only the package itself imports the dispatcher (``workbench.search.dispatch``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SEARCH = Path(__file__).resolve().parents[1] / "src" / "workbench" / "search"
DISPATCHER = "workbench.search.dispatch"
MODULES = sorted(SEARCH.glob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of every import in ``path``, relative imports resolved
    (``name`` is "" for ``import module``)."""
    package = "workbench.search"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


def test_the_search_modules_are_found():
    names = {p.stem for p in MODULES}
    assert {"__init__", "dispatch", "kernel", "bounds", "sources", "streaming", "projection", "tiles", "index",
            "distributed"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_name_is_imported_from_another_workbench_module(path):
    bad = [f"{path.name}:{line} imports {name} from {module}" for line, module, name in _imports(path)
           if module.startswith("workbench") and name.startswith("_") and not name.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", [p for p in MODULES if p.stem not in ("__init__", "dispatch")], ids=lambda p: p.name)
def test_only_the_package_imports_the_dispatcher(path):
    bad = [f"{path.name}:{line} imports {module}{'.' + name if name else ''}" for line, module, name in _imports(path)
           if module == DISPATCHER or (module == "workbench.search" and name in ("dispatch", "topk_correlation"))
           or module.startswith(DISPATCHER + ".")]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .kernel import _rescore\nfrom . import dispatch\nfrom .dispatch import topk_correlation\n"
                   "import workbench.search.dispatch\n")
    found = _imports(bad)
    assert (1, "workbench.search.kernel", "_rescore") in found
    assert (2, "workbench.search", "dispatch") in found
    assert (3, DISPATCHER, "topk_correlation") in found
    assert (4, DISPATCHER, "") in found


def test_the_dispatcher_is_the_public_entry_point():
    import workbench.search as search
    from workbench.search.dispatch import topk_correlation

    assert search.topk_correlation is topk_correlation
