"""`prostate-course synth` and `prostate-course prepare` end to end through prostate_course.cli.main."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from prostate_course import cli


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "raw"
    assert cli.main(["synth", "--cases", "3", "--seed", "5", "--out", str(out), "--workers", "1"]) == 0
    return out


def test_synth_writes_the_raw_layout(synth_raw, capsys):
    ids = sorted(p.name for p in (synth_raw / "images").glob("*/*_t2w.mha"))
    assert len(ids) == 3
    ms = pd.read_csv(synth_raw / "labels" / "clinical_information" / "marksheet.csv", dtype=str)
    assert len(ms) == 3 and "pirads_reports" in ms.columns
    # a rerun with the same settings is a no-op, not an error
    assert cli.main(["synth", "--cases", "3", "--seed", "5", "--out", str(synth_raw), "--workers", "1"]) == 0
    assert "synthetic cohort of 3 cases (seed 5)" in capsys.readouterr().out


def test_prepare_end_to_end(synth_raw, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["prepare", "--raw", str(synth_raw / "images"), "--labels", str(synth_raw / "labels"),
            "--out", str(out), "--spacing", "3,1,1", "--size", "8x32x32", "--workers", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 cases: splits may lack positives
        assert cli.main(argv) == 0
    assert "prepared 3 cases" in capsys.readouterr().out
    t = pd.read_csv(out / "cases.csv", dtype={"case_id": str})
    assert len(t) == 3 and set(t["split"]) <= {"train", "val", "test"}
    cache = torch.load(out / "cache.pt", weights_only=True)
    assert tuple(cache["images"].shape) == (3, 3, 8, 32, 32)  # --size is z,y,x
    assert cache["case_ids"] == list(t["case_id"])
    for f in ("manifest.json", "bad_cases.csv", "params.json"):
        assert (out / f).is_file()
    # rerun: everything reused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    assert "0 new, 3 reused" in capsys.readouterr().out


def test_cli_user_errors_are_messages_not_tracebacks(synth_raw, tmp_path, capsys):
    # missing images folder: named in a one-line error, exit code 2
    rc = cli.main(["prepare", "--raw", str(tmp_path / "nope" / "images"), "--labels",
                   str(synth_raw / "labels"), "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "nope" in err and "Traceback" not in err
    # the same folder with other settings: refused with a message
    rc = cli.main(["synth", "--cases", "4", "--seed", "5", "--out", str(synth_raw), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "other settings" in err


def test_prepare_size_must_be_integers(synth_raw, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["prepare", "--raw", str(synth_raw / "images"), "--labels", str(synth_raw / "labels"),
                  "--out", str(tmp_path / "ds"), "--size", "8.5,32,32"])
    assert e.value.code == 2 and "integer" in capsys.readouterr().err


def test_env_report_and_student_edition_subcommands(tmp_path, monkeypatch, capsys):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from prostate_course.editions import STUB
    from prostate_course.results import Results

    assert cli.main(["env"]) == 0
    assert "python" in capsys.readouterr().out.lower()

    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    res = Results("00_primer", "smoke", seeds=[0])
    res.add_row(task="summary", method="data", label_fraction=None, seed=0, n=3)
    res.save()
    assert cli.main(["report", "--profile", "smoke"]) == 0
    report = tmp_path / "runs" / "smoke" / "report.md"
    assert str(report) in capsys.readouterr().out and "00_primer" in report.read_text()

    src = tmp_path / "nbs"
    src.mkdir()
    nb = new_notebook(cells=[new_code_cell("x = 1"),
                             new_code_cell("answer = 42", metadata={"tags": ["solution"]})])
    nbformat.write(nb, str(src / "00_demo.ipynb"))
    assert cli.main(["student-edition", "--notebooks", str(src), "--out", str(tmp_path / "student")]) == 0
    assert "00_demo.ipynb: 1 solution cell(s) replaced by stubs" in capsys.readouterr().out
    cells = nbformat.read(str(tmp_path / "student" / "00_demo.ipynb"), as_version=4).cells
    assert cells[0].source == "x = 1" and STUB in cells[1].source and "42" not in cells[1].source


def test_run_bad_override_is_a_message(capsys):
    assert cli.main(["run", "--profile", "smoke", "--set", "epochs", "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "KEY=VALUE" in err
