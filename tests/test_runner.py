"""The course runner: order, failure reporting, unknown profiles, results report."""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from prostate_course import cli
from prostate_course.notebook_cells import PARAMETERS_SOURCE, new_notebook, write_notebook
from prostate_course.runner import course_notebooks, markdown_table, write_report
from prostate_course.results import Results


def _notebook(path, *body):
    cells = [new_code_cell(PARAMETERS_SOURCE, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(src) for src in body]
    write_notebook(new_notebook(cells), path)


GOOD = """\
import prostate_course.course as course
session = course.start("00_good", PROFILE, OVERRIDES, quiet=True)
session.results.add_row(task="summary", method="data", label_fraction=None, seed=0, n=len(OVERRIDES) + 41)
session.results.unavailable("imagenet", "no weights offline")
print("path", session.results.save())
"""


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_notebooks_in_numeric_order_and_only(tmp_path):
    for name in ["10_b.ipynb", "02_a.ipynb", "_template.ipynb", "notes.ipynb"]:
        _notebook(tmp_path / name, "1")
    assert [p.name for p in course_notebooks(tmp_path)] == ["02_a.ipynb", "10_b.ipynb"]
    assert [p.name for p in course_notebooks(tmp_path, only=["10"])] == ["10_b.ipynb"]
    with pytest.raises(FileNotFoundError, match="03"):
        course_notebooks(tmp_path, only=["03"])


def test_unknown_profile_names_the_available_ones(capsys):
    assert cli.main(["run", "--profile", "nope", "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'nope'" in err
    for name in ("smoke", "cpu", "gpu", "full"):
        assert name in err


@pytest.mark.slow
def test_run_executes_injects_profile_and_reports(tmp_path, runs, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_good.ipynb", GOOD)
    with pytest.warns(UserWarning, match="no key 'notebooks.00.x'"):  # a new key: allowed, flagged
        rc = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data",
                       "--set", "notebooks.00.x=1"])
    assert rc == 0, capsys.readouterr()
    executed = runs / "smoke" / "notebooks" / "00_good.ipynb"
    nb = nbformat.read(str(executed), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'PROFILE = "smoke"' in injected[0].source
    res = json.loads((runs / "smoke" / "results" / "00_good.json").read_text())
    assert res["rows"][0]["n"] == 42  # OVERRIDES reached the notebook
    report = (runs / "smoke" / "report.md").read_text()
    assert "00_good" in report and "**unavailable** `imagenet`" in report
    out = capsys.readouterr().out
    assert "[1/1] 00_good" in out and "report:" in out


@pytest.mark.slow
def test_failing_notebook_shows_cell_and_exits_nonzero(tmp_path, runs, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", "x = 1")
    _notebook(nbs / "01_bad.ipynb", "y = 2", "raise ValueError('lesion map is empty')")
    _notebook(nbs / "02_never.ipynb", "z = 3")
    rc = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "01_bad.ipynb failed" in captured.err
    assert "raise ValueError('lesion map is empty')" in captured.err
    assert "ValueError: lesion map is empty" in captured.err
    assert not (runs / "smoke" / "notebooks" / "02_never.ipynb").exists()  # stopped at first failure


def test_report_flags_unavailable_and_stand_ins(runs):
    res = Results("03_contrastive", "smoke", seeds=[0])
    res.add_row(task="classification", method="simclr", label_fraction=0.5, seed=0, auroc_patient=0.7)
    res.add_row(task="classification", method="scratch", label_fraction=0.5, seed=0, auroc_patient=0.6)
    res.stand_in("simclr", "encoder checkpoint of notebook 03 missing; trained 1 epoch here")
    res.unavailable("imagenet", "offline")
    res.save()
    text = write_report("smoke").read_text()
    assert "**stand-in** `simclr`" in text and "**unavailable** `imagenet`" in text
    simclr_line = [l for l in text.splitlines() if l.startswith("| classification | simclr")][0]
    assert simclr_line.rstrip().endswith("| yes |")


def test_markdown_table_union_of_columns():
    t = markdown_table([{"a": 1, "b": 0.12345}, {"a": 2, "c": None}])
    assert t.splitlines()[0] == "| a | b | c |"
    assert "| 1 | 0.123 |  |" in t
