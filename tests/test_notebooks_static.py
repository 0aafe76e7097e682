"""Conventions every notebook in git must follow (docs/ARCHITECTURE.md "Notebook contract", notebooks/_template.md)."""
import re
from pathlib import Path

import nbformat
import pytest

from prostate_course import REPO_SLUG, REPO_URL
from prostate_course.notebook_cells import colab_url, install_spec

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def _read(path):
    return nbformat.read(str(path), as_version=4)


def test_course_has_notebooks():
    assert NOTEBOOKS, "no numbered notebooks in notebooks/"
    assert IDS[0].startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_valid_and_stored_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: code cell {i} has stored outputs (clear them)"
            assert cell.execution_count is None, f"{path.name}: code cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_structure(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    params: dict = {}
    exec(tagged[0].source, {}, params)  # the parameters cell is plain assignments
    assert params.get("PROFILE") == "auto", f"{path.name}: PROFILE must default to 'auto' (course.start resolves it)"
    assert params.get("OVERRIDES") == {}, f"{path.name}: OVERRIDES must default to {{}}"
    assert any(c.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT") for c in code), \
        f"{path.name}: needs a '# NBVAL_CHECK_OUTPUT' cell with a headline number"
    joined = "\n".join(c.source for c in code)
    assert f'course.start("{path.stem}"' in joined, f"{path.name}: must call pc.course.start({path.stem!r}, ...)"
    assert "session.results.save()" in joined, f"{path.name}: must save its results"
    assert not re.search(r"""["']cuda["']|\.cuda\(\)""", joined), f"{path.name}: hard-codes cuda"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Learning objectives" in first.source and "Time to run" in first.source
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^#+ .*Summary", md, re.M), f"{path.name}: needs a Summary section"
    assert re.search(r"^#+ .*References", md, re.M), f"{path.name}: needs a References section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_badge_and_install_cell_use_the_one_repository_url(path):
    nb = _read(path)
    text = "\n".join(c.source for c in nb.cells)
    assert colab_url(path.stem) in nb.cells[0].source, f"{path.name}: Colab badge missing or wrong"
    assert install_spec() in text, f"{path.name}: Colab install cell missing or wrong"
    for url in re.findall(r"github\.com/([\w.\-]+/[\w.\-]+)", text):
        assert url == REPO_SLUG, f"{path.name}: links to github.com/{url}, expected {REPO_URL}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exercises_have_solution_and_check(path):
    nb = _read(path)
    sols = [i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", [])]
    assert sols, f"{path.name}: needs at least one exercise with a cell tagged 'solution'"
    for i in sols:
        after = [c for c in nb.cells[i + 1:] if c.cell_type == "code"]
        assert after and ("assert" in after[0].source or "check" in after[0].source.lower()), \
            f"{path.name}: the solution cell {i} must be followed by a check cell"
