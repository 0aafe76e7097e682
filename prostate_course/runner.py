"""Run the course: execute the notebooks in numeric order with papermill for a profile.

``prostate-course run --profile smoke`` makes sure the profile's prepared dataset exists, then
executes ``notebooks/NN_*.ipynb`` one by one into ``runs/<profile>/notebooks/``, injecting
``PROFILE`` (and ``OVERRIDES``), each in its own papermill process with a timeout and its
stdout/stderr captured to ``runs/<profile>/logs/``. It stops at the first failure and shows the
failing cell. At the end it writes ``runs/<profile>/report.md`` from the results files.

Each kernel runs under :mod:`.kernel_watch` (a kernelspec written to ``runs/<profile>/.jupyter``
and put first on ``JUPYTER_PATH``), and the runner samples the kernel's process tree with
psutil, so for every notebook it knows its peak resident memory and, when a kernel dies, why:
killed by a signal (SIGKILL: likely out of memory; the message gives the peak and the profile's
``memory_limit_mb``), exited, or timed out. The report flags notebooks over the limit.

Ctrl-C (SIGINT) stops the running notebook: papermill is asked to stop (it shuts its kernel
down), anything of the kernel still alive after a grace period is killed, the stopped
notebook's results file is removed, and :class:`CourseInterrupted` says which notebooks
finished and which one was stopped (the CLI exits with 130).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from . import kernel_watch
from .io_utils import write_json_atomic, write_text_atomic
from .paths import notebooks_dir as default_notebooks_dir
from .paths import results_dir, run_root
from .profile import Profile, load_profile
from .results import load_results

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")
#: Seconds papermill gets to shut its kernel down after Ctrl-C before the runner kills it all.
STOP_GRACE_S = 15.0


class NotebookFailed(RuntimeError):
    """A notebook raised, its kernel died, or it timed out; the message says which, and shows
    the failing cell for an error. ``run`` holds what was measured (status, peak memory)."""

    run: "NotebookRun | None" = None


class NotebookStopped(Exception):
    """The runner was interrupted (Ctrl-C) while this notebook ran; it has been stopped."""

    def __init__(self, run: "NotebookRun"):
        self.run = run
        super().__init__(f"{run.stem} stopped after {run.wall_s:.0f} s")


class CourseInterrupted(Exception):
    """Ctrl-C during ``run_course``: which notebooks finished, which was stopped, which never ran."""

    def __init__(self, finished: list, stopped: str | None, not_run: list[str], where: str = ""):
        self.finished, self.stopped, self.not_run, self.where = finished, stopped, not_run, where
        super().__init__(self.summary())

    def summary(self) -> str:
        done = ", ".join(f"{r.stem} ({r.wall_s:.0f} s)" for r in self.finished) or "none"
        lines = [f"interrupted{' ' + self.where if self.where else ''}.", f"finished: {done}"]
        if self.stopped:
            lines.append(f"stopped: {self.stopped} (its kernel was shut down; no results file "
                         f"is kept for it)")
        if self.not_run:
            lines.append(f"not run: {', '.join(self.not_run)}")
        return "\n".join(lines)


@dataclass
class NotebookRun:
    stem: str
    output: Path
    wall_s: float
    ok: bool
    message: str = ""
    status: str = "ok"            # ok | failed | timed_out | kernel_died | stopped
    peak_rss_mb: float | None = None
    kernel: dict = field(default_factory=dict)


def course_notebooks(directory: Path | None = None, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks of ``directory`` in order; ``only`` filters by number ("03")."""
    directory = Path(directory) if directory else default_notebooks_dir()
    found = sorted(p for p in directory.glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))
    if only:
        wanted = {str(o).zfill(2)[:2] for o in only}
        found = [p for p in found if p.name[:2] in wanted]
        missing = wanted - {p.name[:2] for p in found}
        if missing:
            raise FileNotFoundError(f"no notebook numbered {', '.join(sorted(missing))} in {directory}")
    return found


def failing_cell(executed: Path) -> str:
    """Describe the first cell with an error output in an executed notebook."""
    if not executed.exists():
        return "(no executed notebook was written)"
    nb = nbformat.read(str(executed), as_version=4)
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = "\n".join("    " + line for line in cell.source.splitlines())
                return (f"failing cell (code cell {code_index}):\n{src}\n"
                        f"{out.get('ename')}: {out.get('evalue')}")
    return "(no cell with an error output; the kernel died or the notebook timed out)"


def last_started_cell(executed: Path) -> str:
    """The last code cell papermill started (it has a duration): the one that was running when a
    notebook timed out. "" when there is none."""
    if not executed.exists():
        return ""
    nb = nbformat.read(str(executed), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    started = [i for i, c in enumerate(code)
               if c.metadata.get("papermill", {}).get("duration") is not None]
    if not started:
        return ""
    i = started[-1]
    src = "\n".join("    " + line for line in code[i].source.splitlines())
    return f"the cell that was running (code cell {i + 1}):\n{src}"


def _kernel_env(jupyter_dir: Path | None = None, status_file: Path | None = None) -> dict:
    env = dict(os.environ)
    # The "python3" kernelspec runs `python` from PATH: make it this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # Executed copies are read later without a live kernel: widgets would show nothing there,
    # so viewers draw their static figure instead.
    env.setdefault("PROSTATE_COURSE_STATIC", "1")
    if jupyter_dir is not None:  # the watched kernel (kernel_watch) shadows "python3"
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(jupyter_dir), *([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else [])])
        env[kernel_watch.STATUS_ENV] = str(status_file)
    else:
        env.pop(kernel_watch.STATUS_ENV, None)
    return env


def _log_says(log_file: Path, *markers: str) -> bool:
    """papermill's log (if it can be read) contains any of ``markers``."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return False
    return any(m in text for m in markers)


def _cell_timed_out(log_file: Path) -> bool:
    """nbclient's CellTimeoutError: a cell ran past --execution-timeout."""
    return _log_says(log_file, "CellTimeoutError", "A cell timed out")


def _kernel_died(log_file: Path) -> bool:
    return _log_says(log_file, "DeadKernelError", "Kernel died")


def _stop(proc: subprocess.Popen, sampler: kernel_watch.TreeSampler) -> None:
    """Stop papermill after Ctrl-C: SIGINT (it shuts its kernel down), then, after
    :data:`STOP_GRACE_S` or a second Ctrl-C, SIGKILL; then kill what is left of the kernel."""
    def signal_papermill(sig):
        try:
            if os.name != "nt":
                os.killpg(proc.pid, sig)  # papermill leads its own process group
            else:  # pragma: no cover (Windows: no SIGINT to send to another process)
                proc.terminate()
        except (ProcessLookupError, PermissionError):
            pass

    signal_papermill(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        pass
    if proc.poll() is None:
        signal_papermill(signal.SIGKILL)
    proc.wait()
    sampler.sample()
    sampler.stop()
    # papermill normally takes its kernel with it; anything it left behind goes now
    sampler.kill_leftovers()


def execute_notebook(source: Path, output: Path, profile: Profile, overrides: dict | None = None,
                     timeout_s: int | None = None, log_dir: Path | None = None) -> NotebookRun:
    """Execute one notebook with papermill in a child process under a watched kernel.

    Returns the :class:`NotebookRun` (with ``peak_rss_mb``); raises :class:`NotebookFailed`
    saying whether a cell raised (with the cell), the kernel died (how) or it timed out, and
    :class:`NotebookStopped` when interrupted (Ctrl-C), after stopping the notebook.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or output.parent.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timeout_s = int(timeout_s or profile.timeout_s)
    params = {"PROFILE": profile.name}
    if overrides:
        params["OVERRIDES"] = overrides
    stem = source.stem
    status_file = log_dir / f"{stem}.kernel.json"
    status_file.unlink(missing_ok=True)
    jupyter_dir = kernel_watch.write_kernelspec(output.parent.parent / ".jupyter")
    papermill_log = log_dir / f"{stem}.papermill.log"
    cmd = [sys.executable, "-m", "papermill", str(source), str(output),
           "-y", yaml.safe_dump(params), "--cwd", str(output.parent),
           "--execution-timeout", str(timeout_s), "--no-progress-bar", "--log-level", "WARNING",
           "--stdout-file", str(log_dir / f"{stem}.stdout.log"),
           "--stderr-file", str(log_dir / f"{stem}.stderr.log")]
    t0 = time.perf_counter()
    timed_out = False
    proc, sampler = None, kernel_watch.TreeSampler(0, status_file if jupyter_dir else None)
    with open(papermill_log, "w") as log:
        try:
            # its own process group: Ctrl-C reaches only the runner, which then stops papermill
            # (one SIGINT, so papermill can shut its kernel down in order)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=_kernel_env(jupyter_dir, status_file),
                                    start_new_session=os.name != "nt")
            sampler.root_pid = proc.pid
            sampler.start()
            try:
                rc = proc.wait(timeout=timeout_s + 60)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc, sampler)
                rc = proc.returncode
        except KeyboardInterrupt:
            if proc is not None:
                _stop(proc, sampler)
            status = kernel_watch.read_status(status_file) or {}
            peak = max(sampler.peak_mb, float(status.get("peak_rss_mb") or 0.0)) or None
            raise NotebookStopped(NotebookRun(stem, output, time.perf_counter() - t0, False,
                                              "stopped (Ctrl-C)", "stopped", peak, status)) from None
        finally:
            sampler.stop()
    wall = time.perf_counter() - t0
    status = kernel_watch.read_status(status_file) or {}
    peak = max(sampler.peak_mb, float(status.get("peak_rss_mb") or 0.0)) or None
    run = NotebookRun(stem, output, wall, rc == 0, peak_rss_mb=peak, kernel=status)
    if rc == 0 and not timed_out:
        return run
    if timed_out or _cell_timed_out(papermill_log):
        run.status = "timed_out"
        reason = (f"timed out: it ran longer than {timeout_s} s (the profile's timeout_s)"
                  if timed_out else f"timed out: a cell ran longer than {timeout_s} s (the "
                                    f"profile's timeout_s) and was interrupted")
        running = last_started_cell(output)
        detail = running + "\n" if running else ""
    elif _kernel_died(papermill_log):
        run.status = "kernel_died"
        reason = f"failed: {kernel_watch.describe_end(status, sampler.peak_mb, profile.memory_limit_mb)}"
        detail = ""
    else:
        run.status = "failed"
        reason = f"failed (exit code {rc})"
        detail = failing_cell(output) + "\n"
    run.message = reason
    err = NotebookFailed(f"{source.name} {reason} after {wall:.0f} s.\n{detail}"
                         f"executed copy: {output}\nlogs: {log_dir / stem}.*.log")
    err.run = run
    raise err


def _remove_results(profile: str, stem: str) -> list[Path]:
    """Remove ``results/<stem>.json`` and the scores file it names (a stopped notebook's)."""
    path = results_dir(profile) / f"{stem}.json"
    removed = []
    if path.is_file():
        try:
            scores = json.loads(path.read_text()).get("scores")
        except (OSError, ValueError, AttributeError):
            scores = None
        if isinstance(scores, str) and scores and Path(scores).name == scores:
            side = path.parent / scores
            if side.is_file():
                side.unlink()
                removed.append(side)
        path.unlink()
        removed.append(path)
    return removed


def run_course(profile: str | Profile, only: list[str] | None = None, overrides: dict | None = None,
               notebooks: Path | None = None, ensure_data: bool = True) -> list[NotebookRun]:
    """Execute the course notebooks for ``profile``; write the report; return the runs.

    ``overrides`` are dotted profile keys (``{"data.n_cases": 20}``); they apply to the data
    preparation here and are passed to every notebook as ``OVERRIDES``. Ctrl-C raises
    :class:`CourseInterrupted` once the running notebook is stopped.
    """
    prof = load_profile(profile, overrides)  # a Profile is returned as it is
    paths = course_notebooks(notebooks, only)
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks or default_notebooks_dir()}")
    out_dir = run_root(prof.name) / "notebooks"
    runs: list[NotebookRun] = []
    i = 0
    try:
        if ensure_data:
            from .data.dataset import ensure_dataset

            t0 = time.perf_counter()
            echo(f"[data] ensuring the prepared dataset for profile {prof.name} ...")
            try:
                ds = ensure_dataset(prof)
            except KeyboardInterrupt:
                raise CourseInterrupted([], None, [p.stem for p in paths],
                                        "while preparing the dataset") from None
            echo(f"[data] ready: {getattr(ds, 'root', ds)} ({time.perf_counter() - t0:.0f} s)")
        for i, nb in enumerate(paths):
            echo(f"[{i + 1}/{len(paths)}] {nb.stem} ...", end="")
            try:
                run = execute_notebook(nb, out_dir / nb.name, prof, overrides)
            except NotebookStopped as e:
                echo(" STOPPED")
                _remove_results(prof.name, nb.stem)
                _record_run(prof, e.run)
                raise CourseInterrupted(runs, nb.stem, [p.stem for p in paths[i + 1:]]) from None
            except NotebookFailed as e:
                echo(" FAILED")
                if getattr(e, "run", None) is not None:
                    _record_run(prof, e.run)
                raise
            echo(f" ok ({run.wall_s:.0f} s" + (f", peak {run.peak_rss_mb:.0f} MB)" if run.peak_rss_mb else ")"))
            runs.append(run)
            _record_run(prof, run)
    except KeyboardInterrupt:  # between notebooks (or while writing the stats)
        raise CourseInterrupted(runs, None, [p.stem for p in paths[len(runs):]]) from None
    report = write_report(prof.name, memory_limit_mb=prof.memory_limit_mb)
    echo(f"executed notebooks: {out_dir}")
    echo(f"report: {report}")
    return runs


def _runner_stats_path(profile: str) -> Path:
    return run_root(profile) / "runner.json"


def _runner_stats(profile: str) -> dict:
    """What the runner measured: {"memory_limit_mb", "notebooks": {stem: {wall_s, peak_rss_mb,
    status}}} ({} before the first run)."""
    path = _runner_stats_path(profile)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _record_run(prof: Profile, run: NotebookRun) -> None:
    """Keep the runner's own measurements per notebook (kernel start and imports included)."""
    stats = _runner_stats(prof.name)
    stats["memory_limit_mb"] = prof.memory_limit_mb
    nbs = stats.setdefault("notebooks", {})
    nbs[run.stem] = {"wall_s": round(run.wall_s, 1), "status": run.status,
                     "peak_rss_mb": None if run.peak_rss_mb is None else round(run.peak_rss_mb, 1),
                     "kernel": {k: run.kernel.get(k) for k in ("signal_name", "exit_code")
                                if run.kernel.get("state") == "ended"}}
    write_json_atomic(_runner_stats_path(prof.name), stats)


def echo(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


# ---------------------------------------------------------------------------------- report
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of dict rows (union of keys, in first-seen order)."""
    if not rows:
        return "_no rows_\n"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _limit_of(profile: str, stats: dict, memory_limit_mb):
    if memory_limit_mb is not None:
        return float(memory_limit_mb)
    if stats.get("memory_limit_mb") is not None:
        return float(stats["memory_limit_mb"])
    try:
        return load_profile(profile).memory_limit_mb
    except KeyError:  # a profile name the package does not ship
        return None


def write_report(profile: str, memory_limit_mb: float | None = None) -> Path:
    """Collect ``runs/<profile>/results/*.json`` into ``runs/<profile>/report.md``.

    Each notebook's peak resident memory is the larger of the runner's measurement (kernel
    process tree) and the notebook's own (``peak_rss_mb`` of its results); a notebook above
    ``memory_limit_mb`` (default: the last run's, else the profile's) is flagged.
    """
    results = load_results(results_dir(profile)) if results_dir(profile).is_dir() else {}
    stats = _runner_stats(profile)
    measured = stats.get("notebooks", {})
    limit = _limit_of(profile, stats, memory_limit_mb)
    parts = [f"# prostate-course report: profile `{profile}`", "",
             "`wall_s`: the notebook's own time from its setup cell; `runner_wall_s`: the whole "
             "papermill execution (kernel start and imports included). `peak_rss_mb`: the "
             "larger of the notebook's own peak and the runner's (resident memory of the "
             "kernel's process tree, sampled every 0.2 s, and the kernel's exact high-water "
             "mark).", ""]
    summary, over = [], []
    for k in sorted(set(results) | set(measured)):
        r, m = results.get(k), measured.get(k, {})
        peaks = [v for v in ((r or {}).get("peak_rss_mb"), m.get("peak_rss_mb")) if v is not None]
        peak = max(peaks) if peaks else None
        flag = ""
        if limit is not None and peak is not None and peak > limit:
            flag = "**over limit**"
            over.append(f"- **over the memory limit** `{k}`: peak resident memory {peak:.0f} MB "
                        f"> {limit:.0f} MB (`memory_limit_mb` of profile `{profile}`)")
        summary.append({"notebook": k, "status": m.get("status", "ok" if r else ""),
                        "device": (r or {}).get("device"), "wall_s": (r or {}).get("wall_s"),
                        "runner_wall_s": m.get("wall_s"), "peak_rss_mb": peak, "memory": flag,
                        "peak_gpu_mb": (r or {}).get("peak_gpu_mb"),
                        "rows": len(r["rows"]) if r else None,
                        "unavailable": len(r["unavailable"]) if r else None,
                        "stand_ins": len(r["stand_ins"]) if r else None})
    parts += ["## Notebooks", "", markdown_table(summary)]
    parts += ["Memory limit: " + (f"{limit:.0f} MB per notebook." if limit is not None
                                  else "none for this profile."), ""]
    parts += over + ([""] if over else [])
    for name, r in results.items():
        parts += [f"## {name}", ""]
        for u in r["unavailable"]:
            parts.append(f"- **unavailable** `{u['method']}`: {u['reason']}")
        for s in r["stand_ins"]:
            parts.append(f"- **stand-in** `{s['artifact']}`: {s['reason']} (rows that use it are flagged)")
        stand_in_methods = {s["artifact"] for s in r["stand_ins"]}
        rows = [dict(row, stand_in="yes") if row.get("method") in stand_in_methods else row
                for row in r["rows"]]
        parts += ["", markdown_table(rows)] + report_extras(r)
    return write_text_atomic(run_root(profile) / "report.md", "\n".join(parts))


def report_extras(result: dict) -> list[str]:
    """The tables (``report_tables``) and figures (``figures``, paths relative to the run
    folder, where report.md lives) a notebook's results file asks the report to show."""
    parts = []
    for t in result.get("report_tables") or []:
        parts += [f"### {t['title']}", "", markdown_table(t["rows"])]
    for f in result.get("figures") or []:
        parts += [f"![{f.get('caption') or f['file']}]({f['file']})", ""]
        if f.get("caption"):
            parts += [f"*{f['caption']}*", ""]
    return parts
