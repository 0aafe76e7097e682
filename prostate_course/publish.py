"""Publish a finished run as a reference that anyone can read without running anything.

``prostate-course run --profile cpu --publish docs/results/cpu`` (or ``prostate-course publish
--profile cpu --out docs/results/cpu`` after a run) writes::

    <out>/README.md              what this is: profile, commit, date, machine; links
    <out>/report.md              the run's report (tables, 05's main table, 06's figure)
    <out>/figures/...            the figures the report shows
    <out>/notebooks/<nb>.html    every executed notebook as HTML (nbconvert), outputs included
    <out>/results/...            the results JSON, per-case scores and lesion results
    <out>/manifest.json          commit, date, profile, versions, file list with sha256

The folder is built beside ``<out>`` and swapped in at the end, so a failed publish leaves the
previous one intact.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

from .paths import run_root


def _html(notebook: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def publish(profile: str, out, *, commit: str | None = None, date: str | None = None) -> Path:
    """Write the reference run of ``profile`` (its ``runs/<profile>/`` folder) into ``out``."""
    from .artifacts import code_version
    from .io_utils import sha256_file, write_json_atomic, write_text_atomic
    from .repro import package_versions

    src = run_root(profile)
    report = src / "report.md"
    executed = sorted((src / "notebooks").glob("*.ipynb"))
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist: run the course first "
                                f"(prostate-course run --profile {profile})")
    if not executed:
        raise FileNotFoundError(f"no executed notebooks in {src / 'notebooks'}")
    out = Path(out).resolve()
    commit = commit or code_version()
    date = date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tmp = out.with_name(f".{out.name}.publishing")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "notebooks").mkdir(parents=True)
    for nb in executed:
        write_text_atomic(tmp / "notebooks" / f"{nb.stem}.html", _html(nb))
    if (src / "figures").is_dir():
        shutil.copytree(src / "figures", tmp / "figures")
    if (src / "results").is_dir():
        shutil.copytree(src / "results", tmp / "results")
    header = (f"> Reference run of profile `{profile}`, commit `{commit}`, made {date}. "
              "Later commits may give other numbers.\n\n")
    write_text_atomic(tmp / "report.md", header + report.read_text())
    links = "\n".join(f"- [{nb.stem}](notebooks/{nb.stem}.html)" for nb in executed)
    write_text_atomic(tmp / "README.md", (
        f"# Reference run: profile `{profile}`\n\n"
        f"Made from commit `{commit}` on {date} with `prostate-course run --profile {profile} "
        f"--publish`. Read it without running anything; later commits of the course may give "
        f"other numbers.\n\n- [the report](report.md) (tables and figures of every notebook)\n"
        f"{links}\n- `results/`: results JSON, per-case scores and lesion-level results\n"))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    write_json_atomic(tmp / "manifest.json", {
        "profile": profile, "commit": commit, "date": date, "versions": package_versions(),
        "files": {str(p.relative_to(tmp)): sha256_file(p) for p in files}})
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    return out


__all__ = ["publish"]
