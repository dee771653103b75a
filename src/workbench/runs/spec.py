"""A sweep's specification: a YAML file read, checked and expanded into runs before any run starts.

A spec names the experiment, fixes the stages' parameters (``base``) and says what varies::

    name: size-and-family
    base:                       # fixed parameters of the stages (any notebook parameter)
      size: 32
      train.steps: 1000         # a name two stages share is written stage.name
      max_images: 8
    vary:                       # parameter -> values: the grid of every combination
      model: [ddpm, gan]
      max_images: [8, 64]
    runs:                       # optional: explicit combinations (each one crossed with the grid of vary)
      - {model: ddpm, augment: flip}

A parameter is any parameter of a stage's notebook (``workbench run --help`` lists them):
``01_prepare_data`` (stage ``prepare``, run once per distinct setting and shared by the runs),
``02_train`` (``train``), ``03_sample`` (``sample``) and ``04_memorization`` (``analyze``).  A
name that only one stage declares needs no prefix; a name several stages declare (``steps``,
``batch_size``, ``ema``) is written ``train.steps`` or ``sample.steps``.  Two names are set in
every stage that has them: ``seed`` (train, sample and analyze) and ``bf16`` (train and sample).
Paths and overwrite flags are the sweep's to set (each run has its own folder).

Everything is checked here, before any run starts: an unknown key or parameter (with the close
matches), a value of the wrong kind, an unknown model family or augmentation, an empty grid,
malformed YAML; each error names the spec file, the line and the key.

Each run has a stable id: the varied values in the spec's order, then a short hash of every
parameter of every stage, so the same spec gives the same folders (a rerun finds its runs) and
a changed ``base`` gives new ones.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WorkbenchError
from .notebook import notebook_defaults, check_parameters, notebook_parameters

#: the stages of a sweep: short name -> notebook; prepare runs once per distinct setting
STAGES = {"prepare": "01_prepare_data", "train": "02_train", "sample": "03_sample", "analyze": "04_memorization"}
#: names set in every stage that declares them (the rest of the shared names need a stage prefix)
EVERY_STAGE = ("seed", "bf16")
#: parameters the sweep sets itself: stage -> names (folders, overwrite and resume)
SET_BY_SWEEP = {
    "prepare": ("store", "overwrite", "phantom_overwrite"),
    "train": ("store", "out", "overwrite", "resume", "run_name"),
    "sample": ("checkpoint", "out", "overwrite"),
    "analyze": ("run", "compare_with"),
}
TOP_KEYS = ("name", "description", "base", "vary", "runs", "report", "findings", "evaluate")
#: the optional last stage of every run, turned on by the spec's ``evaluate`` key: the
#: privacy-against-utility report (its values join the sweep's table; 07's frontier figure)
EVALUATE = "09_privacy_utility"
_ID_SAFE = re.compile(r"[^A-Za-z0-9.,=+-]+")


class SpecError(WorkbenchError):
    """A sweep specification that cannot run; the message names the file, line and key."""


@dataclass
class RunPlan:
    """One run of a sweep: its id, the values it varies, and every stage's parameters."""

    id: str
    varied: dict
    stages: dict  # stage short name -> {parameter: value} (what the spec sets; paths come later)
    prepare_id: str

    def as_dict(self) -> dict:
        return {"id": self.id, "varied": self.varied, "stages": self.stages, "prepare_id": self.prepare_id}


@dataclass
class SweepSpec:
    """A checked sweep specification (:func:`load_spec`)."""

    name: str
    path: Path | None
    base: dict
    vary: dict
    runs: list
    description: str = ""
    report: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    text: str = ""
    #: None, or the parameters of the 09_privacy_utility stage every run ends with ({}: its defaults)
    evaluate: dict | None = None

    @property
    def varied_names(self) -> list[str]:
        """The parameters that vary between runs, in the spec's order (runs' keys, then vary's)."""
        names = [name for combo in self.runs for name in combo]
        return list(dict.fromkeys(names + list(self.vary)))

    def plans(self) -> list[RunPlan]:
        """Every run of the sweep, in a stable order."""
        grid = [dict(zip(self.vary, values)) for values in itertools.product(*self.vary.values())] or [{}]
        combos = [{**explicit, **point} for explicit in (self.runs or [{}]) for point in grid]
        plans, seen = [], {}
        for combo in combos:
            stages = _assign({**self.base, **combo})
            prepare_id = parameters_digest(stages["prepare"])
            key = parameters_digest(stages)
            ident = _run_id({name: combo[name] for name in self.varied_names if name in combo}, key)
            if ident in seen:
                continue  # the same combination written twice runs once
            seen[ident] = True
            # each varied parameter's value in this run: its own, else the base's (None: the notebook's default)
            effective = {name: combo[name] if name in combo else self.base.get(name) for name in self.varied_names}
            plans.append(RunPlan(ident, effective, stages, prepare_id))
        return plans


# -- reading ------------------------------------------------------------------------------------------
def load_spec(source) -> SweepSpec:
    """Read and check a sweep spec: a YAML file's path, YAML text, or a dict.

    >>> spec = load_spec({"name": "t", "base": {"size": 32}, "vary": {"model": ["ddpm", "gan"]}})
    >>> [plan.varied for plan in spec.plans()]
    [{'model': 'ddpm'}, {'model': 'gan'}]
    """
    import yaml

    path, lines = None, {}
    if isinstance(source, dict):
        data, text = source, ""
    else:
        text = str(source)
        if "\n" not in text and (text.endswith((".yaml", ".yml")) or Path(text).is_file()):
            path = Path(text)
            if not path.is_file():
                raise SpecError(f"{path}: no such sweep spec")
            text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
            lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SpecError(f"{path or 'spec'}{where}: malformed YAML: {problem}") from None
    return _check(data, path=path, lines=lines, text=text)


def _key_lines(node, prefix=()) -> dict:
    """``(key, key, ...)`` -> the line (1-based) where that key (or list item) is written."""
    import yaml

    out = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (str(key.value),)
            out[path] = key.start_mark.line + 1
            out.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            out.update(_key_lines(item, prefix + (i,)))
    return out


class _Where:
    """Names a place in the spec for error messages: ``findings.yaml line 7 (vary.max_images)``."""

    def __init__(self, path, lines):
        self.path, self.lines = path, lines

    def __call__(self, *keys) -> str:
        line = None
        for n in range(len(keys), 0, -1):
            line = self.lines.get(tuple(keys[:n]))
            if line is not None:
                break
        name = ".".join(str(k) if not isinstance(k, int) else f"[{k}]" for k in keys).replace(".[", "[")
        file = str(self.path) if self.path else "spec"
        return f"{file}" + (f" line {line}" if line else "") + (f" ({name})" if name else "")


def _check(data, *, path, lines, text) -> SweepSpec:
    where = _Where(path, lines)
    if not isinstance(data, dict):
        raise SpecError(f"{where()}: a sweep spec is a YAML mapping with name, base and vary (or runs); "
                        f"found {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            raise SpecError(f"{where(key)}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; a spec has {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where('name')}: the spec needs a name (a string), e.g. `name: family-and-size`")
    base = data.get("base") or {}
    vary = data.get("vary") or {}
    runs = data.get("runs")
    for key, value, kind in (("base", base, dict), ("vary", vary, dict), ("runs", runs, list)):
        if value is not None and not isinstance(value, kind):
            raise SpecError(f"{where(key)}: {key} must be a {'mapping' if kind is dict else 'list of mappings'}, "
                            f"found {type(value).__name__}")
    if "vary" not in data and runs is None:
        raise SpecError(f"{where()}: the spec has neither vary (a grid) nor runs (explicit combinations); "
                        f"a sweep of one run: `runs: [{{}}]`")
    for name_, values in vary.items():
        if not isinstance(values, list):
            raise SpecError(f"{where('vary', name_)}: vary.{name_} must be a list of values, e.g. [{values!r}]")
        if not values:
            raise SpecError(f"{where('vary', name_)}: vary.{name_} is an empty list, so the grid is empty")
        _check_name(name_, where("vary", name_))
        for i, value in enumerate(values):
            _check_value(name_, value, where("vary", name_, i))
    if runs is not None:
        if not runs:
            raise SpecError(f"{where('runs')}: runs is an empty list, so the sweep has no runs")
        for i, combo in enumerate(runs):
            if not isinstance(combo, dict):
                raise SpecError(f"{where('runs', i)}: each item of runs is a mapping of parameters, "
                                f"found {combo!r}")
            for name_, value in combo.items():
                _check_name(name_, where("runs", i, name_))
                _check_value(name_, value, where("runs", i, name_))
    for name_, value in base.items():
        _check_name(name_, where("base", name_))
        _check_value(name_, value, where("base", name_))
    report = data.get("report") or []
    report = [report] if isinstance(report, str) else report
    if not isinstance(report, list) or not all(isinstance(r, str) for r in report):
        raise SpecError(f"{where('report')}: report is a notebook name or a list of them (run on the sweep "
                        f"folder after collect), e.g. 08_findings")
    from .notebook import find_notebook

    for i, notebook in enumerate(report):
        try:
            params = notebook_parameters(find_notebook(notebook))
        except WorkbenchError as err:
            raise SpecError(f"{where('report', i)}: {err}") from None
        if "sweep" not in params:
            raise SpecError(f"{where('report', i)}: {notebook} takes no `sweep` parameter, so it cannot report "
                            f"on a sweep")
    evaluate = data.get("evaluate")
    if evaluate is True:
        evaluate = {}
    elif evaluate in (None, False):
        evaluate = None
    elif isinstance(evaluate, dict):
        if "run" in evaluate:
            raise SpecError(f"{where('evaluate', 'run')}: evaluate.run is set by the sweep (each run's folder)")
        try:
            check_parameters(EVALUATE, evaluate)
        except WorkbenchError as err:
            raise SpecError(f"{where('evaluate')}: {err}") from None
    else:
        raise SpecError(f"{where('evaluate')}: evaluate is true (end every run with {EVALUATE}, the "
                        f"privacy-against-utility report) or a mapping of that notebook's parameters, "
                        f"e.g. {{utility_steps: 300}}; found {evaluate!r}")
    findings = data.get("findings") or []
    if not isinstance(findings, list):
        raise SpecError(f"{where('findings')}: findings is a list of comparisons")
    spec = SweepSpec(name=name.strip(), path=path, base=dict(base), vary=dict(vary),
                     runs=[dict(r) for r in runs] if runs else [], description=str(data.get("description") or ""),
                     report=report, findings=findings, text=text, evaluate=evaluate)
    from ..memorization.compare import check_finding

    for i, finding in enumerate(findings):
        try:
            check_finding(finding, parameters=spec.varied_names + ["checkpoint_step"])
        except WorkbenchError as err:
            raise SpecError(f"{where('findings', i)}: {err}") from None
    # every combination resolves to the stages' parameters (a clash such as max_images in base and
    # a stage-prefixed one is caught here), and the whole set is checked by each notebook
    plans = spec.plans()
    for plan in plans[:1] + plans[-1:]:
        for stage, params in plan.stages.items():
            try:
                check_parameters(STAGES[stage], params)
            except WorkbenchError as err:
                raise SpecError(f"{where()}: run {plan.id}: {err}") from None
    return spec


# -- names and values ------------------------------------------------------------------------------
def _declared() -> dict[str, dict[str, dict]]:
    return {stage: notebook_parameters(notebook) for stage, notebook in STAGES.items()}


def resolve_name(name: str) -> list[tuple[str, str]]:
    """The (stage, parameter) pairs that a spec's name sets; raises :class:`SpecError` without a place.

    >>> resolve_name("max_images")
    [('train', 'max_images')]
    >>> resolve_name("seed")
    [('train', 'seed'), ('sample', 'seed'), ('analyze', 'seed')]
    """
    declared = _declared()
    if not isinstance(name, str):
        raise SpecError(f"parameter names are strings, found {name!r}")
    stage, dot, param = name.partition(".")
    if dot:
        if stage not in STAGES:
            close = difflib.get_close_matches(stage, STAGES, n=1)
            raise SpecError(f"unknown stage {stage!r} in {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; the stages are {', '.join(STAGES)}")
        if param not in declared[stage]:
            close = difflib.get_close_matches(param, declared[stage], n=3)
            raise SpecError(f"{STAGES[stage]} has no parameter {param!r}"
                            + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
                            + f"; its parameters are {', '.join(declared[stage])}")
        pairs = [(stage, param)]
    else:
        pairs = [(s, name) for s in STAGES if name in declared[s]]
        if not pairs:
            every = sorted({p for params in declared.values() for p in params})
            close = difflib.get_close_matches(name, every, n=3)
            raise SpecError(f"unknown parameter {name!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)"
                                                            if close else "")
                            + "; `workbench run --help` lists every notebook's parameters")
        swept = [f"{s}.{p}" for s, p in pairs if p in SET_BY_SWEEP[s]]
        if swept:
            raise SpecError(f"{' and '.join(swept)} {'is' if len(swept) == 1 else 'are'} set by the sweep (each run "
                            f"has its own folders), not by the spec")
        if len(pairs) > 1 and name not in EVERY_STAGE:
            raise SpecError(f"{name!r} is a parameter of {' and '.join(STAGES[s] for s, _ in pairs)}: write "
                            + " or ".join(f"{s}.{name}" for s, _ in pairs))
    for stage, param in pairs:
        if param in SET_BY_SWEEP[stage]:
            raise SpecError(f"{stage}.{param} is set by the sweep (each run has its own folders), not by the spec")
    return pairs


def _check_name(name, place: str) -> None:
    try:
        resolve_name(name)
    except SpecError as err:
        raise SpecError(f"{place}: {err}") from None


def _check_value(name: str, value, place: str) -> None:
    """A value of the wrong kind, an unknown model family, augmentation or preset: refused here."""
    for stage, param in resolve_name(name):
        try:
            check_parameters(STAGES[stage], {param: value})
        except WorkbenchError as err:
            detail = str(err).split(": ", 1)[-1]
            raise SpecError(f"{place}: {detail}") from None
        if stage == "train" and param == "model" and value is not None:
            from ..models.family import get_family

            try:
                family = get_family(value) if isinstance(value, str) else None
            except WorkbenchError as err:
                raise SpecError(f"{place}: {err}") from None
            if family is None or not family.makes_images:
                raise SpecError(f"{place}: model {value!r} is not a generative model family "
                                f"(ddpm, ldm or gan)")
        if stage == "train" and param == "augment":
            from ..train.augment import Augment

            try:
                Augment.parse(value)
            except WorkbenchError as err:
                raise SpecError(f"{place}: {err}") from None
        if stage == "train" and param == "preset" and value not in ("tiny", "small", "base"):
            raise SpecError(f"{place}: preset {value!r} is not one of tiny, small, base")


def _assign(values: dict) -> dict[str, dict]:
    """Spread the spec's names over the stages: {stage: {parameter: value}}."""
    stages = {stage: {} for stage in STAGES}
    explicit = {}
    for name, value in values.items():
        for stage, param in resolve_name(name):
            if "." not in name and (stage, param) in explicit:
                continue  # a stage-prefixed name wins over the bare one
            stages[stage][param] = value
            if "." in name:
                explicit[(stage, param)] = True
    return stages


def stage_parameters(plan: RunPlan, stage: str) -> dict:
    """The stage's full parameters: the notebook's defaults overlaid with the plan's (no paths yet)."""
    from .notebook import find_notebook

    return {**notebook_defaults(find_notebook(STAGES[stage])), **plan.stages[stage]}


def parameters_digest(value) -> str:
    """A short, stable hash of JSON-able parameters (keys sorted)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _run_id(varied: dict, key: str) -> str:
    parts = []
    for name, value in varied.items():
        if value is None or isinstance(value, (dict, list)):
            continue  # the hash tells such runs apart; the folder name stays readable
        short = name.split(".")[-1]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"{short}={text}")
    slug = _ID_SAFE.sub("_", ",".join(parts)).strip("_")[:80]
    return f"{slug}-{key}" if slug else key
