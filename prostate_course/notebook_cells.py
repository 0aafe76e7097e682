"""The standard cells every course notebook starts with, in one place.

Notebook authors build notebooks with nbformat and call :func:`header_cells`; the tests check
that every notebook's badge and Colab install cell match :data:`prostate_course.REPO_URL`.
"""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from . import REPO_SLUG, REPO_URL

COLAB_BASE = "https://colab.research.google.com/github"


def colab_url(stem: str) -> str:
    return f"{COLAB_BASE}/{REPO_SLUG}/blob/main/notebooks/{stem}.ipynb"


def colab_badge(stem: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(stem)})")


def install_spec() -> str:
    return f"prostate-course @ git+{REPO_URL}"


SETUP_SOURCE = '''\
# Setup. On Colab: install the course package (elsewhere this cell does nothing).
# Set USE_GOOGLE_DRIVE = True to keep data and results on your Drive between sessions.
import subprocess, sys
USE_GOOGLE_DRIVE = False
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{spec}"], check=True)
    if USE_GOOGLE_DRIVE:
        import prostate_course.course
        prostate_course.course.use_google_drive()'''

PARAMETERS_SOURCE = '''\
PROFILE = "auto"    # auto (gpu if CUDA or MPS, else cpu) | smoke | cpu | gpu | full  (prostate_course/profiles/)
OVERRIDES = {}      # dotted profile keys, e.g. {"protocol.finetune.epochs": 5}'''


def setup_source() -> str:
    return SETUP_SOURCE.format(spec=install_spec())


def header_cells(stem: str, title: str, objectives: list[str], minutes: dict[str, int],
                 intro: str = "", extra_parameters: str = "") -> list:
    """Title + badge + objectives + time estimate, the setup cell, the ``parameters`` cell and
    the session cell. ``minutes`` maps profile names to the expected run time, e.g.
    ``{"smoke": 1, "cpu": 8, "gpu": 20}``."""
    times = ", ".join(f"{k}: ~{v} min" for k, v in minutes.items())
    md = [f"# {title}", "", colab_badge(stem), ""]
    if intro:
        md += [intro, ""]
    md += ["**Learning objectives**", ""] + [f"- {o}" for o in objectives]
    md += ["", f"**Time to run** ({times}); reading and exercises about 45 minutes."]
    params = PARAMETERS_SOURCE + ("\n" + extra_parameters if extra_parameters else "")
    return [
        new_markdown_cell("\n".join(md)),
        new_code_cell(setup_source()),
        new_code_cell(params, metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import prostate_course as pc\n"
            "import prostate_course.course\n"
            f'session = pc.course.start("{stem}", PROFILE, OVERRIDES)'
        ),
    ]


def new_notebook(cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def solution_cell(source: str) -> nbformat.NotebookNode:
    """An exercise answer: tagged ``solution`` (the student edition replaces it with a stub)."""
    return new_code_cell(source, metadata={"tags": ["solution"]})


def write_notebook(nb, path) -> None:
    """Write without outputs (the repository stores none)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
