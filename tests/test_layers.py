"""The layering of DESIGN.md holds: import-linter's contracts (pyproject.toml), no import cycle
inside ``workbench``, and no module importing another module's private names."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "workbench"


def test_the_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith("workbench"))
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d.startswith("workbench"))
             for m in modules}
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges.get(child, []))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_inside_the_package():
    graph = grimp.build_graph("workbench", cache_dir=None)
    # a package's __init__ re-exporting its modules is not a cycle of ideas: leave those edges out
    for module in sorted(graph.modules):
        if not module.startswith("workbench"):
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("workbench") and (module.startswith(imported + ".")):
                graph.remove_import(importer=module, imported=imported)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("workbench", "workbench.a", "workbench.b", "workbench.c"):
        graph.add_module(m)
    graph.add_import(importer="workbench.a", imported="workbench.b")
    graph.add_import(importer="workbench.b", imported="workbench.a")
    graph.add_import(importer="workbench.c", imported="workbench.a")
    assert _cycles(graph) == [["workbench.a", "workbench.b"]]


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("workbench")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {alias.name} "
                                 f"from {'.' * node.level}{node.module or ''}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _private_imports(path)]
    assert not found, "\n".join(found)
