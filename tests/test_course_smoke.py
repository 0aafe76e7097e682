"""The whole course under papermill with the smoke profile, then nbval on the executed copies.

One session-scoped run (fresh data and run roots in a temporary folder) feeds every test here:
each notebook ran in its own fresh kernel, in order; each wrote a valid results file; and a
second, independent execution of every executed copy by nbval reproduces every cell marked
``# NBVAL_CHECK_OUTPUT`` exactly (same seed, same numbers on CPU).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prostate_course.results import validate_results

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Per-notebook ceilings (s, the notebook's own wall_s) that catch a notebook gone badly slow, not
# the 45 s design target: that one is measured and written in the README ("Measured": 2-32 s per
# notebook on 2 cores). Each ceiling is over 5x its measured time, for slower CI machines.
SMOKE_BUDGET_S = {"00": 60, "01": 90, "02": 90, "03": 180, "04": 120, "05": 90, "06": 30}

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PROSTATE_COURSE_DATA"] = str(root / "data")
    env["PROSTATE_COURSE_RUNS"] = str(root / "runs")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PROSTATE_COURSE_STATIC"] = "1"
    return env


@pytest.fixture(scope="session")
def smoke_course(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_course")
    proc = subprocess.run([sys.executable, "-m", "prostate_course.cli", "run", "--profile", "smoke"],
                          env=_env(root), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"smoke course failed:\n{proc.stdout}\n{proc.stderr}"
    return root, proc.stdout


def test_every_notebook_ran_and_wrote_valid_results(smoke_course):
    root, stdout = smoke_course
    for nb in NOTEBOOKS:
        assert (root / "runs" / "smoke" / "notebooks" / nb.name).exists(), f"{nb.name} not executed"
        res_path = root / "runs" / "smoke" / "results" / f"{nb.stem}.json"
        assert res_path.exists(), f"{nb.name} wrote no results file"
        res = validate_results(json.loads(res_path.read_text()), str(res_path))
        assert res["profile"] == "smoke" and res["notebook"] == nb.stem
        assert res["rows"], f"{nb.name}: no result rows"
        budget = SMOKE_BUDGET_S.get(nb.name[:2], 90)
        assert res["wall_s"] < budget, f"{nb.name} took {res['wall_s']} s in smoke (budget {budget} s)"
    report = (root / "runs" / "smoke" / "report.md").read_text()
    assert all(nb.stem in report for nb in NOTEBOOKS)
    assert "report:" in stdout


def test_nbval_reproduces_checked_outputs(smoke_course):
    root, _ = smoke_course
    executed = sorted((root / "runs" / "smoke" / "notebooks").glob("*.ipynb"))
    assert len(executed) == len(NOTEBOOKS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
         "--nbval-cell-timeout", "600", "--rootdir", str(root), *map(str, executed)],
        env=_env(root), capture_output=True, text=True, timeout=1800, cwd=root,
    )
    assert proc.returncode == 0, f"nbval found differences:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"


def _follows_exercise_convention(path: Path) -> str | None:
    """None if every solution cell is followed by a check that calls prostate_course.exercises
    (docs/ARCHITECTURE.md "Exercises"), else why not."""
    import nbformat

    cells = nbformat.read(str(path), as_version=4).cells
    for i, c in enumerate(cells):
        if "solution" in c.metadata.get("tags", []) and c.cell_type == "code":
            nxt = next((d for d in cells[i + 1:] if d.cell_type == "code"), None)
            if nxt is None or "exercises." not in nxt.source:
                return (f"{path.name}: the check after solution cell {i} does not call "
                        f"pc.exercises.* yet, so its stub would stop Run-All")
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_student_edition_runs_to_the_last_cell(smoke_course, path, tmp_path):
    """The student edition on a fresh kernel: Run-All reaches the end, and each unanswered
    exercise says so (the check returns the reference answer to the cells after it)."""
    import nbformat

    from prostate_course.editions import student_text

    reason = _follows_exercise_convention(path)
    if reason:
        pytest.skip(reason)
    root, _ = smoke_course          # its data root already holds the smoke dataset
    text, n = student_text(path)
    src, out = tmp_path / path.name, tmp_path / f"executed_{path.name}"
    src.write_text(text)
    env = _env(root)
    env["PROSTATE_COURSE_RUNS"] = str(tmp_path / "runs")
    proc = subprocess.run([sys.executable, "-m", "papermill", str(src), str(out), "-p", "PROFILE", "smoke",
                           "--cwd", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cells = nbformat.read(str(out), as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    assert code[-1].get("execution_count") is not None, "Run-All did not reach the last cell"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    text_out = "\n".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    assert text_out.count("unanswered: Exercise") == n, text_out[-3000:]


def test_primer_runs_on_the_real_picai_labels(tmp_path):
    """Notebook 00 with LABELS_DIR pointing at the real picai_labels sample (tests/fixtures)."""
    import nbformat

    labels = ROOT / "tests" / "fixtures" / "picai_labels"
    out = tmp_path / "00_real.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "00_bpmri_primer.ipynb"), str(out),
         "-p", "PROFILE", "smoke", "-p", "LABELS_DIR", str(labels), "--cwd", str(tmp_path)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = "\n".join(o.get("text", "") for c in nbformat.read(str(out), as_version=4).cells
                     if c.cell_type == "code" for o in c.get("outputs", []))
    assert "cases: 1500" in text  # the real marksheet, not the synthetic one


def test_ctrl_c_on_a_real_smoke_run(smoke_course, tmp_path):
    """SIGINT (Ctrl-C) to `prostate-course run --profile smoke --only 00 01` while notebook 01
    runs (the dataset is the one the smoke course prepared): 00 finished, 01 stopped, its
    kernel gone, no results file for it, exit status 130."""
    from test_runner import _gone, interrupt_run

    root, _ = smoke_course
    runs = tmp_path / "runs"
    env = _env(root)
    env["PROSTATE_COURSE_RUNS"] = str(runs)
    t_running = []

    def executing_for_a_while():  # its kernel has run cells for 3 s
        t_running.append(time.monotonic())
        return time.monotonic() - t_running[0] > 3

    rc, out, err, status, stop_s = interrupt_run(
        ["--profile", "smoke", "--only", "00", "01"], env, "01_transfer_learning", runs / "smoke",
        ready=executing_for_a_while, timeout_s=600)
    assert rc == 130, (out, err)
    assert "finished: 00_bpmri_primer" in err and "stopped: 01_transfer_learning" in err, err
    assert "Traceback" not in err
    results = runs / "smoke" / "results"
    assert (results / "00_bpmri_primer.json").is_file() and not (results / "01_transfer_learning.json").exists()
    assert _gone(status["kernel_pid"]) and _gone(status["watcher_pid"])
    assert stop_s < 20


def test_the_smoke_run_publishes_as_a_readable_reference(smoke_course, tmp_path):
    """`prostate-course publish` on the finished smoke run: report with commit and date, the
    figures it shows, HTML of every executed notebook."""
    root, _ = smoke_course
    out = tmp_path / "published"
    proc = subprocess.run([sys.executable, "-m", "prostate_course.cli", "publish", "--profile", "smoke",
                           "--out", str(out)], env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for nb in NOTEBOOKS:
        assert (out / "notebooks" / f"{nb.stem}.html").stat().st_size > 10_000, nb.stem
    report = (out / "report.md").read_text()
    assert report.startswith("> Reference run of profile `smoke`, commit `")
    for link in [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (out / link).is_file(), link
