"""Publishing a run: report with commit and date, figures, HTML of the executed notebooks; the
report shows the tables and figures a results file lists; the CLI hooks."""
import json

import matplotlib
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

matplotlib.use("Agg")


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    """A run folder as the runner leaves it: results with a figure and a table, an executed
    notebook, the report."""
    import matplotlib.pyplot as plt

    from prostate_course.results import Results
    from prostate_course.runner import write_report

    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    res = Results("05_detection", "pub", seeds=[0])
    res.add_row(task="detection", method="scratch", protocol="finetune", label_fraction=1.0, seed=0, auroc=0.81)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    rel = res.add_figure(fig, "overlays", caption="reference vs predicted lesions")
    res.add_report_table("main table", [{"method": "scratch", "auroc": 0.81, "ap": 0.42}])
    res.save()
    nb = new_notebook(cells=[new_code_cell("print('hello')", outputs=[new_output("stream", name="stdout",
                                                                                 text="MARKER-42\n")])])
    out = tmp_path / "runs" / "pub" / "notebooks"
    out.mkdir(parents=True)
    nbformat.write(nb, str(out / "05_detection.ipynb"))
    write_report("pub")
    return tmp_path, rel


def test_the_report_shows_listed_tables_and_figures(finished_run):
    root, rel = finished_run
    report = (root / "runs" / "pub" / "report.md").read_text()
    assert "### main table" in report and "| scratch | 0.81 | 0.42 |" in report
    assert f"![reference vs predicted lesions]({rel})" in report
    assert (root / "runs" / "pub" / rel).is_file()


def test_publish_writes_report_figures_html_and_manifest(finished_run):
    from prostate_course.publish import publish

    root, rel = finished_run
    out = publish("pub", root / "docs" / "results" / "pub", commit="abc123", date="2030-01-02")
    head = (out / "report.md").read_text().splitlines()[0]
    assert "commit `abc123`" in head and "2030-01-02" in head and "Later commits" in head
    assert (out / rel).is_file() and (out / "results" / "05_detection.json").is_file()
    html = (out / "notebooks" / "05_detection.html").read_text()
    assert "MARKER-42" in html and "<html" in html
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["commit"] == "abc123" and "report.md" in manifest["files"]
    assert "notebooks/05_detection.html" in (out / "README.md").read_text()
    again = publish("pub", out, commit="def456", date="2030-01-03")     # replaces the old copy
    assert "def456" in (again / "report.md").read_text() and not list(out.parent.glob(".*"))


def test_publish_cli_and_a_missing_run(finished_run, tmp_path, capsys):
    from prostate_course.cli import main

    root, _ = finished_run
    assert main(["publish", "--profile", "pub", "--out", str(root / "pub_out")]) == 0
    assert (root / "pub_out" / "README.md").is_file()
    assert main(["publish", "--profile", "never-ran", "--out", str(tmp_path / "x")]) == 2
    assert "run the course first" in capsys.readouterr().err
    from prostate_course.cli import build_parser

    args = build_parser().parse_args(["run", "--profile", "smoke", "--publish", "docs/results/smoke"])
    assert args.publish == "docs/results/smoke"
