"""Run the course: execute the notebooks in numeric order with papermill for a profile.

``prostate-course run --profile smoke`` makes sure the profile's prepared dataset exists, then
executes ``notebooks/NN_*.ipynb`` one by one into ``runs/<profile>/notebooks/``, injecting
``PROFILE`` (and ``OVERRIDES``), each in its own papermill process with a timeout and its
stdout/stderr captured to ``runs/<profile>/logs/``. It stops at the first failure and shows the
failing cell. At the end it writes ``runs/<profile>/report.md`` from the results files.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from .io_utils import write_json_atomic, write_text_atomic
from .paths import notebooks_dir as default_notebooks_dir
from .paths import results_dir, run_root
from .profile import Profile, load_profile
from .results import load_results

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")


class NotebookFailed(RuntimeError):
    """A notebook raised or timed out; the message shows the failing cell and the error."""


@dataclass
class NotebookRun:
    stem: str
    output: Path
    wall_s: float
    ok: bool
    message: str = ""


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


def _kernel_env() -> dict:
    env = dict(os.environ)
    # The "python3" kernelspec runs `python` from PATH: make it this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # Executed copies are read later without a live kernel: widgets would show nothing there,
    # so viewers draw their static figure instead.
    env.setdefault("PROSTATE_COURSE_STATIC", "1")
    return env


def execute_notebook(source: Path, output: Path, profile: Profile, overrides: dict | None = None,
                     timeout_s: int | None = None, log_dir: Path | None = None) -> NotebookRun:
    """Execute one notebook with papermill in a child process; raise NotebookFailed on error."""
    output.parent.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or output.parent.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timeout_s = int(timeout_s or profile.timeout_s)
    params = {"PROFILE": profile.name}
    if overrides:
        params["OVERRIDES"] = overrides
    stem = source.stem
    cmd = [sys.executable, "-m", "papermill", str(source), str(output),
           "-y", yaml.safe_dump(params), "--cwd", str(output.parent),
           "--execution-timeout", str(timeout_s), "--no-progress-bar", "--log-level", "WARNING",
           "--stdout-file", str(log_dir / f"{stem}.stdout.log"),
           "--stderr-file", str(log_dir / f"{stem}.stderr.log")]
    t0 = time.perf_counter()
    with open(log_dir / f"{stem}.papermill.log", "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_kernel_env(),
                                  timeout=timeout_s + 60)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.perf_counter() - t0
    if rc == 0:
        return NotebookRun(stem, output, wall, True)
    reason = (f"timed out after {timeout_s} s" if rc is None else f"failed (exit code {rc})")
    detail = failing_cell(output)
    raise NotebookFailed(
        f"{source.name} {reason} after {wall:.0f} s.\n{detail}\n"
        f"executed copy: {output}\nlogs: {log_dir / stem}.*.log"
    )


def run_course(profile: str | Profile, only: list[str] | None = None, overrides: dict | None = None,
               notebooks: Path | None = None, ensure_data: bool = True) -> list[NotebookRun]:
    """Execute the course notebooks for ``profile``; write the report; return the runs.

    ``overrides`` are dotted profile keys (``{"data.n_cases": 20}``); they apply to the data
    preparation here and are passed to every notebook as ``OVERRIDES``.
    """
    prof = load_profile(profile, overrides)  # a Profile is returned as it is
    paths = course_notebooks(notebooks, only)
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks or default_notebooks_dir()}")
    out_dir = run_root(prof.name) / "notebooks"
    if ensure_data:
        from .data.dataset import ensure_dataset

        t0 = time.perf_counter()
        echo(f"[data] ensuring the prepared dataset for profile {prof.name} ...")
        ds = ensure_dataset(prof)
        echo(f"[data] ready: {getattr(ds, 'root', ds)} ({time.perf_counter() - t0:.0f} s)")
    runs = []
    for i, nb in enumerate(paths, 1):
        echo(f"[{i}/{len(paths)}] {nb.stem} ...", end="")
        try:
            run = execute_notebook(nb, out_dir / nb.name, prof, overrides)
        except NotebookFailed:
            echo(" FAILED")
            raise
        echo(f" ok ({run.wall_s:.0f} s)")
        runs.append(run)
        _record_wall_time(prof.name, run)
    report = write_report(prof.name)
    echo(f"executed notebooks: {out_dir}")
    echo(f"report: {report}")
    return runs


def _runner_times_path(profile: str) -> Path:
    return run_root(profile) / "runner_times.json"


def _runner_times(profile: str) -> dict:
    """The runner's own wall time per notebook so far ({} before the first run)."""
    path = _runner_times_path(profile)
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_wall_time(profile: str, run: NotebookRun) -> None:
    """Keep the runner's own wall time per notebook (kernel start and imports included)."""
    times = _runner_times(profile)
    times[run.stem] = round(run.wall_s, 1)
    write_json_atomic(_runner_times_path(profile), times)


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


def write_report(profile: str) -> Path:
    """Collect ``runs/<profile>/results/*.json`` into ``runs/<profile>/report.md``."""
    results = load_results(results_dir(profile)) if results_dir(profile).is_dir() else {}
    runner_times = _runner_times(profile)
    parts = [f"# prostate-course report: profile `{profile}`", "",
             "`wall_s`: the notebook's own time from its setup cell; `runner_wall_s`: the whole "
             "papermill execution (kernel start and imports included).", ""]
    summary = [{"notebook": k, "device": r["device"], "wall_s": r["wall_s"],
                "runner_wall_s": runner_times.get(k),
                "peak_rss_mb": r["peak_rss_mb"], "peak_gpu_mb": r["peak_gpu_mb"],
                "rows": len(r["rows"]), "unavailable": len(r["unavailable"]),
                "stand_ins": len(r["stand_ins"])} for k, r in results.items()]
    parts += ["## Notebooks", "", markdown_table(summary)]
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
