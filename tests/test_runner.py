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


# ----------------------------------------------------- kernel deaths, memory, Ctrl-C
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernel_killed_by_a_signal_is_reported_as_such(tmp_path, runs, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_dies.ipynb", "x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    rc = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "00_dies.ipynb failed: the kernel was killed by signal 9 (SIGKILL)" in err
    assert "the profile's memory_limit_mb is 1500 MB" in err and "peak resident memory was" in err
    stats = json.loads((runs / "smoke" / "runner.json").read_text())["notebooks"]["00_dies"]
    assert stats["status"] == "kernel_died" and stats["kernel"]["signal_name"] == "SIGKILL"
    assert stats["peak_rss_mb"] > 20  # a live ipykernel was measured


@pytest.mark.slow
def test_kernel_exit_and_cell_timeout_are_told_apart(tmp_path, runs, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_exits.ipynb", "import os\nos._exit(3)")
    assert cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data"]) == 1
    err = capsys.readouterr().err
    assert "the kernel exited with code 3" in err and "signal" not in err
    (nbs / "00_exits.ipynb").unlink()
    _notebook(nbs / "00_slow.ipynb", "x = 1", "import time\ntime.sleep(60)")
    t0 = time.monotonic()
    assert cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data",
                     "--set", "timeout_s=3"]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 40
    assert "00_slow.ipynb timed out: a cell ran longer than 3 s (the profile's timeout_s)" in err
    assert "time.sleep(60)" in err and "killed by signal" not in err
    status = json.loads((runs / "smoke" / "runner.json").read_text())["notebooks"]["00_slow"]["status"]
    assert status == "timed_out"


@pytest.mark.slow
def test_runner_measures_peak_memory_and_report_flags_over_limit(tmp_path, runs, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_small.ipynb", "x = 1")
    # 400 MB written (so resident), held for a second so the 0.2 s sampler sees it
    _notebook(nbs / "01_big.ipynb", "import numpy as np, time\na = np.ones(400 * 2**20 // 8)\ntime.sleep(1.0)")
    assert cli.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--no-data",
                     "--set", "memory_limit_mb=300"]) == 0, capsys.readouterr()
    stats = json.loads((runs / "smoke" / "runner.json").read_text())
    assert stats["memory_limit_mb"] == 300
    big, small = stats["notebooks"]["01_big"]["peak_rss_mb"], stats["notebooks"]["00_small"]["peak_rss_mb"]
    assert 400 < big < 700 and small < 300, (big, small)
    report = (runs / "smoke" / "report.md").read_text()
    line = lambda nb: next(l for l in report.splitlines() if l.startswith(f"| {nb} "))  # noqa: E731
    assert "**over limit**" in line("01_big") and "**over limit**" not in line("00_small")
    assert "**over the memory limit** `01_big`" in report and "> 300 MB" in report


def _wait_for(cond, timeout_s: float, proc) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pytest.fail("the run did not reach the expected point in time")


def default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action. A test suite started as a background
    job (``cmd &`` in a non-interactive shell) inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt: the Ctrl-C tests would test nothing but a hang."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_run(argv: list[str], env: dict, stopped: str, runs_dir: Path, ready=None,
                  timeout_s: float = 600):
    """Start `prostate-course run ...` in its own process group, send SIGINT (what Ctrl-C sends
    to the foreground group) once notebook ``stopped``'s kernel runs (and ``ready()``), and
    return (returncode, stdout, stderr, kernel status record, seconds from SIGINT to exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "prostate_course.cli", "run", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    status_file = runs_dir / "logs" / f"{stopped}.kernel.json"
    try:
        def running():
            try:
                st = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return False
            return st.get("state") == "running" and (ready is None or ready())

        _wait_for(running, timeout_s, proc)
        status = json.loads(status_file.read_text())
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err, status, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_ctrl_c_stops_the_running_notebook_and_exits_130(tmp_path, runs):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_quick.ipynb", "x = 1")
    _notebook(nbs / "01_long.ipynb",
              "from prostate_course.results import Results\n"
              "r = Results('01_long', PROFILE, seeds=[0])\n"
              "r.add_row(task='summary', method='data', label_fraction=None, seed=0, n=1)\n"
              "print(r.save())",
              "import time\ntime.sleep(300)")
    _notebook(nbs / "02_never.ipynb", "z = 3")
    results = runs / "smoke" / "results"
    env = dict(os.environ, PROSTATE_COURSE_RUNS=str(runs))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    rc, out, err, status, stop_s = interrupt_run(
        ["--profile", "smoke", "--notebooks", str(nbs), "--no-data"], env, "01_long", runs / "smoke",
        ready=lambda: (results / "01_long.json").is_file())  # its first cell has saved results
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "finished: 00_quick" in err and "stopped: 01_long" in err and "not run: 02_never" in err
    assert not (results / "01_long.json").exists()  # no results file for the stopped notebook
    assert not (runs / "smoke" / "notebooks" / "02_never.ipynb").exists()
    assert _gone(status["kernel_pid"]) and _gone(status["watcher_pid"])  # the kernel was stopped
    assert stop_s < 20
    stats = json.loads((runs / "smoke" / "runner.json").read_text())["notebooks"]
    assert stats["00_quick"]["status"] == "ok" and stats["01_long"]["status"] == "stopped"


def test_describe_end_names_the_signal_and_the_memory():
    from prostate_course.kernel_watch import describe_end

    killed = {"state": "ended", "signal": 9, "signal_name": "SIGKILL", "peak_rss_mb": 1480.0}
    text = describe_end(killed, 1712.4, 1500)  # the sampler saw more than the kernel alone
    assert text == ("the kernel was killed by signal 9 (SIGKILL), likely out of memory (the kernel's "
                    "peak resident memory was 1712 MB; the profile's memory_limit_mb is 1500 MB)")
    assert "likely out of memory" in describe_end(killed, None, None)  # no limit: can't rule it out
    assert "the profile sets no memory limit" in describe_end(killed, None, None)
    low = describe_end(dict(killed, peak_rss_mb=60.0), 61.0, 1500)
    assert "likely" not in low and "61 MB, well below the limit" in low
    segv = describe_end({"state": "ended", "signal": 11, "signal_name": "SIGSEGV", "peak_rss_mb": 90}, 95, 1500)
    assert segv.startswith("the kernel was killed by signal 11 (SIGSEGV) (a crash")
    assert describe_end({"state": "ended", "signal": None, "exit_code": 3, "peak_rss_mb": 80}, 0, 1500) \
        .startswith("the kernel exited with code 3")
    assert "no exit status" in describe_end(None, 10, 1500)


def test_tree_sampler_sums_the_kernel_tree_and_kills_what_is_left(tmp_path):
    """papermill stand-in (holding 100 MB) -> kernel stand-in (150 MB) -> worker (80 MB): the
    sampler sums the kernel's tree (from papermill's descendants, or from the kernel pid in the
    watcher's status file), never papermill itself; kill_leftovers ends exactly that tree."""
    from prostate_course.kernel_watch import TreeSampler

    worker = "a = b'x' * (80 * 2**20); import time; time.sleep(60)"
    kernel = ("import subprocess, sys, time\n"
              f"w = subprocess.Popen([sys.executable, '-c', {worker!r}])\n"
              "a = b'x' * (150 * 2**20); time.sleep(60)")
    top = f"import subprocess, sys, time\nk = subprocess.Popen([sys.executable, '-c', {kernel!r}])\n" \
          "a = b'x' * (100 * 2**20); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", top])
    try:
        s = TreeSampler(parent.pid, tree_every_s=0.0)
        deadline = time.monotonic() + 90  # (a loaded machine starts interpreters slowly)
        while time.monotonic() < deadline and s.sample() < 230:
            time.sleep(0.1)
        assert 230 < s.peak_mb < 330, s.peak_mb  # 150 + 80 + two interpreters, not the 100
        kern = psutil.Process(parent.pid).children()[0]
        status = tmp_path / "k.json"
        status.write_text(json.dumps({"state": "running", "kernel_pid": kern.pid}))
        k = TreeSampler(parent.pid, status)
        assert abs(k.sample() - s.peak_mb) < 20
        tree = sorted([kern.pid, *(c.pid for c in kern.children())])
        assert len(tree) == 2 and sorted(s.seen) == tree, (tree, sorted(s.seen))
        assert sorted(s.kill_leftovers()) == tree
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(pid) for pid in tree):
            time.sleep(0.05)  # SIGKILL is delivered asynchronously
        assert all(_gone(pid) for pid in tree)
        assert parent.poll() is None  # papermill's stand-in is not the runner's to kill
    finally:
        parent.kill()
        parent.wait()
