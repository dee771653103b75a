"""Notebook parameters: a name the notebook does not declare is refused before anything runs.

Nothing here starts a kernel: papermill's ``execute_notebook`` is replaced by a stand-in that
fails (for runs that must be refused) or by papermill's own ``prepare_only`` injection (for runs
that must go ahead).  Real executions are in test_notebooks.py.
"""
import nbformat
import papermill
import pytest

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.runs import DEMO, check_parameters, demo_stages, describe_notebooks, notebook_parameters, run_notebook
from workbench.runs.notebook import NOTEBOOK_DIR

NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb"))


@pytest.fixture
def no_execution(monkeypatch):
    """papermill must not be asked to execute anything."""
    def execute_notebook(*args, **kwargs):
        raise AssertionError("papermill.execute_notebook was called")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)


@pytest.fixture
def prepare_only(monkeypatch):
    """papermill injects the parameters as it would for a run, but starts no kernel."""
    real = papermill.execute_notebook
    calls = []

    def execute_notebook(input_path, output_path, parameters=None, **kwargs):
        calls.append(dict(parameters or {}))
        return real(input_path, output_path, parameters=parameters, **{**kwargs, "prepare_only": True})

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def _injected(path) -> str:
    cells = nbformat.read(path, as_version=4).cells
    return "".join(c.source for c in cells if "injected-parameters" in c.metadata.get("tags", []))


def test_a_misspelled_parameter_is_refused_before_anything_is_written(tmp_path, no_execution):
    out = tmp_path / "runs" / "x"
    with pytest.raises(WorkbenchError) as err:
        run_notebook("01_prepare_data", out, {"min_forground": 0.5}, progress=False)
    message = str(err.value)
    assert message.startswith("01_prepare_data.ipynb: unknown parameter 'min_forground' "
                              "(did you mean 'min_foreground'?); its parameters are: min_foreground, ")
    assert "\n" not in message
    # every parameter is named, the close match first
    assert message.split("its parameters are: ")[1].split(", ") == (
        ["min_foreground"] + [n for n in notebook_parameters("01_prepare_data") if n != "min_foreground"])
    assert not out.exists()  # no run folder, so no executed notebook, no FAILED notebook, no HTML


def test_the_command_line_refuses_it_with_one_line_and_a_failing_status(tmp_path, no_execution, capsys):
    out = tmp_path / "x"
    status = main(["run", "01_prepare_data", "--out", str(out), "-p", "min_forground", "0.5"])
    err = capsys.readouterr().err
    assert status != 0
    assert err.count("\n") == 1 and "unknown parameter 'min_forground' (did you mean 'min_foreground'?)" in err
    assert not out.exists()


def test_several_unknown_parameters_are_named_together(no_execution):
    with pytest.raises(WorkbenchError, match=r"^02_train.ipynb: unknown parameters 'batchsize' \(did you mean "
                                             r"'batch_size'\?\), 'zzz'; its parameters are: batch_size, store, "):
        check_parameters("02_train", {"steps": 3, "batchsize": 3, "zzz": 1})


def test_a_declared_parameter_still_runs(tmp_path, prepare_only):
    target = run_notebook("01_prepare_data", tmp_path, {"min_foreground": 0.5, "n_test": None}, progress=False)
    assert target == tmp_path / "01_prepare_data.ipynb" and target.is_file()
    assert target.with_suffix(".html").is_file()
    assert prepare_only == [{"min_foreground": 0.5, "n_test": None}]
    assert "min_foreground = 0.5\n" in _injected(target) and "n_test = None\n" in _injected(target)


@pytest.mark.parametrize("notebook,parameters,words", [
    ("01_prepare_data", {"size": "big"}, "parameter 'size' takes an integer (its default is 64), not the string 'big'"),
    ("01_prepare_data", {"min_foreground": [0.5]}, "parameter 'min_foreground' takes a number"),
    ("01_prepare_data", {"overwrite": "False"}, "takes true or false (its default is False), not the string 'False' "
                                                "(on the command line, write null, true or false)"),
    ("01_prepare_data", {"channels": 3}, "parameter 'channels' takes a list"),
    ("02_train", {"options": "{ae_steps: 3}"}, "takes a dict (its default is {}), not the string '{ae_steps: 3}' "
                                               "(it does not parse as JSON)"),
    ("02_train", {"steps": True}, "parameter 'steps' takes an integer (its default is 1000), not the boolean True"),
    # a default of None with an annotation (`max_images: int = None`) says what it takes
    ("02_train", {"max_images": "eight"}, "parameter 'max_images' takes an integer (its default is None), "
                                          "not the string 'eight'"),
])
def test_a_value_of_clearly_the_wrong_kind_is_refused(tmp_path, no_execution, notebook, parameters, words):
    with pytest.raises(WorkbenchError) as err:
        run_notebook(notebook, tmp_path / "x", parameters, progress=False)
    assert str(err.value).startswith(f"{notebook}.ipynb: ") and words in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("notebook,parameters", [
    ("01_prepare_data", {"n_test": None, "size": 64.0, "min_foreground": 1, "channels": "flair"}),
    ("01_prepare_data", {"channels": ("t1", "seg"), "overwrite": 1}),
    ("02_train", {"prediction_type": "anything", "lr": 1, "max_images": 8, "options": {"ae_steps": 3},
                  "run_name": 2024}),
    ("04_memorization", {"channel": 0, "detector": None, "compare_with": ["runs/a"]}),
    ("06_reader_study", {"channel": "t1", "n_real": 5}),
])
def test_values_that_may_be_right_are_let_through(notebook, parameters):
    # None for anything, numbers for numbers, anything where the default is None or a string
    assert check_parameters(notebook, parameters).name == f"{notebook}.ipynb"


def test_every_notebook_and_parameter_is_listed_with_its_default_and_help():
    text = describe_notebooks(width=100)
    assert NOTEBOOKS == ["01_prepare_data", "02_train", "03_sample", "04_memorization", "05_match_browser",
                         "06_reader_study", "07_compare_runs", "08_findings", "09_privacy_utility"]
    lines = text.splitlines()
    for name in NOTEBOOKS:
        assert any(line.startswith(f"{name}: ") for line in lines), name
        for parameter, spec in notebook_parameters(name).items():
            assert spec["help"], f"{name}: parameter {parameter!r} has no trailing # help comment"
            assert any(line.startswith(f"  {parameter} = {spec['default']}") for line in lines), (name, parameter)
    assert "  min_foreground = 0.15" in text and "# keep slices with at least this fraction of brain pixels" in text
    # wrapped to the width, but for a name = default that is longer by itself
    assert all(len(line) <= 100 for line in lines)
    narrow = describe_notebooks(["03_sample"], width=60).splitlines()
    assert "03_sample: Sample synthetic images" in narrow and all(len(line) <= 60 for line in narrow)


@pytest.mark.parametrize("settings", [None, {"phantom_subjects": 3, "size": 32, "steps": 3, "lr": 2e-4, "seed": 5}])
def test_the_demo_passes_only_parameters_its_notebooks_declare(tmp_path, no_execution, settings):
    stages = demo_stages(tmp_path, settings)
    assert [name for name, _ in stages] == ["01_prepare_data", "02_train", "03_sample", "04_memorization",
                                            "09_privacy_utility"]
    for name, parameters in stages:
        declared = notebook_parameters(name)
        assert set(parameters) <= set(declared), (name, sorted(set(parameters) - set(declared)))
        check_parameters(name, parameters)  # of the right kinds, too
    # every demo setting reaches some notebook
    passed = {key for _, parameters in stages for key in parameters}
    assert {"phantom_subjects", "n_test", "size", "preset", "steps", "batch_size", "lr"} <= passed
    assert set(DEMO) - passed <= {"samples", "ddim_steps", "seed", "block_out_channels"}  # renamed: n, steps, *_seed
    train = dict(stages)["02_train"]
    assert train["options"] == {"block_out_channels": list((settings or {}).get("block_out_channels",
                                                                              DEMO["block_out_channels"]))}


def test_a_line_papermill_cannot_read_is_still_a_parameter(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell('label = "a=b"    # two "=" on a line: papermill skips it\nn = 3  # count')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(label, n)")]
    path = tmp_path / "custom.ipynb"
    nbformat.write(nb, path)
    assert list(notebook_parameters(path)) == ["label", "n"]
    assert notebook_parameters(path)["n"]["help"] == "count"
    check_parameters(path, {"label": "c", "n": 4})
    with pytest.raises(WorkbenchError, match=r"^custom.ipynb: unknown parameter 'lable' \(did you mean 'label'\?\)"):
        check_parameters(path, {"lable": "c"})


def test_a_notebook_without_a_parameters_cell_takes_none(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "plain.ipynb"
    nbformat.write(nb, path)
    assert notebook_parameters(path) == {}
    check_parameters(path, {})
    with pytest.raises(WorkbenchError, match=r"^plain.ipynb: it declares no parameters \(no parameters cell\), "
                                             r"so it takes none \(got 'x'\)"):
        check_parameters(path, {"x": 2})
