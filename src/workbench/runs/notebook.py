"""Execute a parameterised notebook through papermill into a run folder, with an HTML export.

A notebook is a function: parameters in (its ``parameters`` cell), outputs and recorded values
out.  The executed copy is written under a temporary name and renamed when the run completes;
a run that fails leaves ``<name>.FAILED.ipynb`` (with the error shown in the failing cell) and
never a notebook that looks finished.

A parameter the notebook does not declare is refused before anything runs (papermill would
inject it and the notebook would quietly use its default), and so is a value of clearly the
wrong kind for its default (a string for an integer, say).  :func:`describe_notebooks` lists
every notebook's parameters, defaults and help (the trailing comments of its ``parameters`` cell).
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import json
import os
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path

from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from ..progress import ENV as PROGRESS_ENV

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


# -- the parameters a notebook declares -------------------------------------------------------
def notebook_parameters(notebook) -> dict[str, dict]:
    """The parameters that ``notebook`` declares in its ``parameters`` cell, in the cell's order.

    Read by papermill's own parser (:func:`papermill.inspect_notebook`).  Each value is a dict
    with ``default`` (the default as written in the cell, e.g. ``'"brain"'`` or ``'0.15'``),
    ``help`` (the line's trailing comment, or ``""``) and ``type`` (the Python type of the
    default, e.g. ``int``; ``None`` when the default is ``None`` or not a literal).

    >>> notebook_parameters("01_prepare_data")["min_foreground"]      # doctest: +SKIP
    {'default': '0.15', 'help': 'keep slices with at least this fraction of brain pixels', 'type': <class 'float'>}
    """
    path = find_notebook(notebook).resolve()
    stat = path.stat()
    return {name: dict(spec) for name, spec in _inspect(str(path), stat.st_mtime_ns, stat.st_size).items()}


@functools.lru_cache(maxsize=32)
def _inspect(path: str, mtime_ns: int, size: int) -> dict[str, dict]:  # cached per version of the file
    import papermill as pm

    inspected = pm.inspect_notebook(path)
    found = {name: (spec["default"], spec["help"] or "") for name, spec in inspected.items()}
    # a parameter whose default is None may say its kind in an annotation (`max_images: int = None`)
    annotated = {name: _ANNOTATED.get(spec.get("inferred_type_name")) for name, spec in inspected.items()}
    # papermill skips (with a logged warning) a line holding two '=', e.g. `label = "a=b"` or an '='
    # in the comment: its name is still a parameter (refusing it would be wrong), with no help
    assigned = _assigned_names(path)
    names = list(assigned) + [name for name in found if name not in assigned]
    declared = {}
    for name in names:
        text, comment = found.get(name, (assigned.get(name), ""))
        try:
            default = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            default = None  # an expression: its type is not known without running it
        declared[name] = {"default": text, "help": comment,
                          "type": annotated.get(name) if default is None else type(default)}
    return declared


#: annotations of a parameters cell that give the kind of a parameter whose default is None
_ANNOTATED = {"int": int, "float": float, "bool": bool, "list": list, "dict": dict}


def _assigned_names(path: str) -> dict[str, str | None]:
    """Names assigned at the top of the ``parameters`` cell, with their values' text (in order)."""
    import nbformat

    cells = [c for c in nbformat.read(path, as_version=4).cells
             if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError:  # IPython syntax (magics): papermill's reading only
        return {}
    names = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                names[target.id] = ast.get_source_segment(cells[0].source, node.value)
    return names


#: for a default of this type: the values that are clearly of the wrong kind, and what it takes.
#: None is always accepted (several parameters take None as "not set"), and a parameter whose
#: default is None, a string or an expression takes anything: papermill cannot tell more.
_WRONG_KIND = {
    bool: ((str, float, list, tuple, dict), "true or false"),
    int: ((bool, str, list, tuple, dict), "an integer"),
    float: ((bool, str, list, tuple, dict), "a number"),
    list: ((bool, int, float, dict), "a list"),
    tuple: ((bool, int, float, dict), "a list"),
    dict: ((bool, int, float, str, list, tuple), "a dict"),
}
_KIND_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", tuple: "list",
               dict: "dict"}


def _kind_problem(name: str, spec: dict, value) -> str | None:
    rule = _WRONG_KIND.get(spec["type"])
    if value is None or rule is None or not isinstance(value, rule[0]):
        return None
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    kind = next((word for cls, word in _KIND_NAMES.items() if type(value) is cls), type(value).__name__)
    problem = f"parameter {name!r} takes {rule[1]} (its default is {spec['default']}), not the {kind} {shown}"
    if isinstance(value, str) and value in ("None", "True", "False"):
        problem += " (on the command line, write null, true or false)"
    elif isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        problem += " (it does not parse as JSON)"
    return problem


def check_parameters(notebook, parameters: dict | None) -> Path:
    """Refuse ``parameters`` that ``notebook`` does not declare, or values of clearly the wrong kind.

    Raises one :class:`WorkbenchError` naming the notebook, every problem and, for an unknown
    name, the close matches and the notebook's parameters; returns the notebook's path.  Nothing
    is executed.  Use it before papermill injects parameters (``execute_notebook``, also with
    ``prepare_only=True``), which would otherwise accept any name.

    >>> check_parameters("01_prepare_data", {"min_forground": 0.5})   # doctest: +SKIP
    WorkbenchError: 01_prepare_data.ipynb: unknown parameter 'min_forground' (did you mean
    'min_foreground'?); its parameters are: min_foreground, dataset, source, ...
    """
    path = find_notebook(notebook)
    parameters = dict(parameters or {})
    declared = notebook_parameters(path)
    unknown = [name for name in parameters if name not in declared]
    problems = []
    if unknown and not declared:
        problems.append(f"it declares no parameters (no parameters cell), so it takes none "
                        f"(got {', '.join(repr(name) for name in unknown)})")
    elif unknown:
        close = {name: difflib.get_close_matches(str(name), list(declared), n=3, cutoff=0.6) for name in unknown}
        named = ", ".join(repr(name) + (f" (did you mean {' or '.join(repr(c) for c in close[name])}?)"
                                        if close[name] else "") for name in unknown)
        first = list(dict.fromkeys(c for name in unknown for c in close[name]))
        valid = first + [name for name in declared if name not in first]
        problems.append(f"unknown parameter{'s' if len(unknown) > 1 else ''} {named}; "
                        f"its parameters are: {', '.join(valid)}")
    problems += [p for name, value in parameters.items() if name in declared
                 for p in [_kind_problem(name, declared[name], value)] if p]
    if problems:
        raise WorkbenchError(f"{path.name}: " + "; ".join(problems))
    return path


def describe_notebooks(notebooks=None, *, width: int | None = None) -> str:
    """The workbench's notebooks with their parameters, defaults and help, as plain text.

    Written for the epilog of ``workbench run --help`` (argparse's RawDescriptionHelpFormatter
    keeps its lines); ``notebooks`` defaults to every notebook in :data:`NOTEBOOK_DIR`, and
    ``width`` to the terminal's.  Each parameter reads as in the notebook's ``parameters`` cell::

        01_prepare_data: Prepare data → SliceStore
          dataset = "brain"     # "brain" (BraTS layout) or "xray" (Kermany chest X-ray layout)
    """
    if width is None:
        width = shutil.get_terminal_size().columns - 2
    width = max(int(width), 60)
    if notebooks is None:
        notebooks = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    blocks = [textwrap.fill("notebook parameters (set with -p NAME VALUE; a name the notebook does not "
                            "declare is refused):", width=width)]
    for notebook in notebooks:
        path = find_notebook(notebook)
        title = _title(path)
        lines = [f"{path.stem}: {title}" if title else path.stem]
        declared = notebook_parameters(path)
        lefts = {name: f"  {name} = {spec['default']}" for name, spec in declared.items()}
        # the comments' column, as in the cells: beside the longest name = default, bar long outliers
        column = max((len(left) for left in lefts.values() if len(left) <= 36), default=0) + 2
        for name, spec in declared.items():
            left = lefts[name]
            if not spec["help"]:
                lines.append(left)
                continue
            start = max(column, len(left) + 2)
            if width - start >= 30:
                first, indent = left.ljust(start), " " * start
            else:  # no room beside it: the help goes below, indented
                lines.append(left)
                first = indent = " " * 6
            wrapped = textwrap.wrap(spec["help"], width=width - len(indent) - 2)
            lines.append(first + "# " + wrapped[0])
            lines += [indent + "# " + more for more in wrapped[1:]]
        if not declared:
            lines.append("  (no parameters cell)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _title(path: Path) -> str:
    """The notebook's title: its first markdown heading, without the number ("# 03 · Sample ...")."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
            heading = cell.source.lstrip().splitlines()[0].lstrip("#").strip()
            return heading.split("·", 1)[1].strip() if "·" in heading else heading
    return ""


def notebook_defaults(notebook: Path) -> dict:
    """The values of a notebook's parameters cell (literals; anything else as its source text)."""
    import ast

    out = {}
    for name, spec in notebook_parameters(notebook).items():
        try:
            out[name] = ast.literal_eval(spec["default"])
        except (ValueError, SyntaxError):
            out[name] = spec["default"]
    return out


def parse_value(text: str):
    """Read a command-line parameter value: JSON (numbers, true/false/null, lists) or a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def export_html(notebook: Path, html: Path) -> Path:
    """Export an executed notebook to a self-contained HTML page.

    A cell's consecutive prints are merged and a text progress bar's redraws (``\\r``) collapse to
    its last line, as a terminal would show them."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    exporter = HTMLExporter(config=Config({"CoalesceStreamsPreprocessor": {"enabled": True}}))
    with warnings.catch_warnings():  # scrapbook's records have no HTML form, by design
        warnings.filterwarnings("ignore", message=".*scrapbook.scrap.*")
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_file(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html


# -- what the kernel prints reaches the terminal --------------------------------------------------
@contextlib.contextmanager
def kernel_environment(variables: dict[str, str]):
    """Set environment ``variables`` for the kernels started inside the block (they inherit this
    process's environment), and restore the previous values after it."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TerminalStream:
    """Where papermill writes a kernel's stdout or stderr as it comes: ``target`` (a text stream).

    On a terminal the text passes unchanged, so a text progress bar (``\r`` + its line) redraws in
    place.  Anywhere else (a log file, a pipe, a test's capture) each redraw becomes a line of its
    own, so the log reads as lines and keeps every bar's last state.
    """

    def __init__(self, target):
        self.target = target
        try:
            self.tty = bool(target.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.line_start = True

    def write(self, text: str) -> int:
        if self.tty:
            self.target.write(text)
            return len(text)
        pieces = text.replace("\r\n", "\n").split("\r")
        for i, piece in enumerate(pieces):
            if i and not self.line_start:  # a redraw: end the line it redraws
                self.target.write("\n")
                self.line_start = True
            if piece.strip(" ") == "":  # a bar clearing its line (leave=False): nothing to keep
                continue
            self.target.write(piece)
            self.line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def kernel_manager_class():
    """The kernel manager papermill starts each kernel with: over local (IPC) sockets where the OS has them.

    jupyter_client's default is TCP on 127.0.0.1: signed but unencrypted, on ports any local
    process can reach (and ipykernel warns so at every start).  A kernel here carries patient
    images, so on POSIX it listens on Unix sockets instead, in a fresh folder only this user can
    enter, removed when the block ends (a killed run leaves at most an empty temporary folder).
    """
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, Unicode

    if os.name != "posix":
        yield AsyncKernelManager
        return
    with tempfile.TemporaryDirectory(prefix="workbench-kernel-") as folder:  # mode 0700
        class LocalSocketKernelManager(AsyncKernelManager):
            transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)
            ip = Unicode(os.path.join(folder, "kernel"), config=True)

        yield LocalSocketKernelManager


def run_notebook(notebook, out, parameters: dict | None = None, *, html: bool = True,
                 progress: bool = True, log_output: bool = False) -> Path:
    """Execute ``notebook`` with ``parameters`` into the run folder ``out``.

    Writes ``out/<name>.ipynb`` (and ``out/<name>.html``) and returns the notebook's path.
    Parameters the notebook does not declare, or values of clearly the wrong kind, are refused
    first (:func:`check_parameters`), before anything runs or is written.  The kernel draws its
    progress bars as plain text (``WORKBENCH_PROGRESS=text``, :mod:`workbench.progress`); with
    ``progress`` what it prints to stdout and stderr, those bars included, is forwarded to this
    process's stdout and stderr as it comes.

    >>> run_notebook("01_prepare_data", "runs/mine", {"phantom_subjects": 4})   # doctest: +SKIP
    """
    import papermill as pm

    params = dict(parameters or {})
    src = check_parameters(notebook, params)  # before the run folder is touched
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / src.name
    failed = out / f"{src.stem}.FAILED.ipynb"
    started = time.time()
    # the kernel's bars are plain text (workbench.progress), and with `progress` its stdout and stderr
    # reach this terminal, each stage's own bars with their ETA; papermill's cell counter would
    # redraw over them, so it is off then
    forward = dict(stdout_file=TerminalStream(sys.stdout), stderr_file=TerminalStream(sys.stderr)) if progress else {}
    with atomic_file(target) as tmp, kernel_environment({PROGRESS_ENV: "text"}), kernel_manager_class() as manager:
        try:
            pm.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=False,
                                log_output=log_output, kernel_name="python3", kernel_manager_class=manager,
                                **forward)
        except pm.PapermillExecutionError as err:
            tmp.replace(failed)
            raise WorkbenchError(
                f"{src.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"  the executed notebook with the error is {failed}") from None
    if failed.exists():
        failed.unlink()
    if html:
        export_html(target, target.with_suffix(".html"))
    from .run import record_stage

    # run.json: what ran, with every parameter (the notebook's defaults too), how long, where it wrote
    record_stage(out, src.stem, {**notebook_defaults(src), **params}, seconds=time.time() - started)
    if progress:
        print(f"ran {src.name} in {time.time() - started:.0f} s -> {target}" + (f" (+ {target.with_suffix('.html').name})" if html else ""))
    return target
