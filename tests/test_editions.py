"""Student edition: stubs that keep Run-All going, badges to student/, and the committed student/
folder up to date with notebooks/ (regenerate: prostate-course student-edition)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import prostate_course as pc
from prostate_course.editions import STUB, STUDENT_DIR, student_notebook, student_text, stub_solution
from prostate_course.notebook_cells import colab_url

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _run(source: str) -> dict:
    ns = {"pc": pc}
    exec(source, ns)
    return ns


def test_assignments_become_unanswered_and_other_statements_go():
    src = "import math\nn = len([1, 2])\nrate, (lo, hi) = n / 4, (0, 1)\nprint('secret', rate)"
    stub = stub_solution(src)
    assert "secret" not in stub and "n / 4" not in stub and STUB in stub
    ns = _run(stub)
    assert all(ns[k] is pc.exercises.UNANSWERED for k in ("n", "rate", "lo", "hi"))


def test_a_function_keeps_its_signature_and_docstring_and_returns_unanswered():
    src = 'def f(x, *, y=2):\n    """Twice x."""\n    z = 2 * x\n    return z\n\nanswer = f(3)'
    stub = stub_solution(src)
    assert stub.startswith('def f(x, *, y=2):\n    """Twice x."""') and "2 * x" not in stub
    ns = _run(stub)
    assert ns["f"](1) is pc.exercises.UNANSWERED and ns["answer"] is pc.exercises.UNANSWERED


def test_markers_keep_the_scaffolding():
    src = "def g(x):\n    y = x + 1\n    ### BEGIN SOLUTION\n    return y * 2\n    ### END SOLUTION"
    stub = stub_solution(src)
    assert "y = x + 1" in stub and "y * 2" not in stub
    assert _run(stub)["g"](1) is pc.exercises.UNANSWERED
    top = "data = [1, 2]\n### BEGIN SOLUTION\ntotal = sum(data)\n### END SOLUTION\nprint(total)"
    ns = _run(stub_solution(top))
    assert ns["data"] == [1, 2] and ns["total"] is pc.exercises.UNANSWERED
    with pytest.raises(ValueError, match="without"):
        stub_solution("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="does not parse"):
        stub_solution("x = = 1")


def test_student_notebook_marks_exercises_and_points_its_badge_to_the_student_copy():
    nb = new_notebook(cells=[
        new_markdown_cell(f"# T\n\n[![Open In Colab](x.svg)]({colab_url('00_demo')})"),
        new_code_cell("answer = 42", metadata={"tags": ["solution"]}),
        new_markdown_cell("Why?", metadata={"tags": ["solution"]}),
        new_code_cell("answer = pc.exercises.nb00  # check"),
    ])
    student, n = student_notebook(nb)
    assert n == 2
    assert f"/blob/main/{STUDENT_DIR}/00_demo.ipynb" in student.cells[0].source
    assert "Student edition" in student.cells[0].source
    assert student.cells[1].metadata["tags"] == ["exercise"] and "42" not in student.cells[1].source
    assert student.cells[2].source == "_Write your answer here._"
    assert nb.cells[1].source == "answer = 42" and "/notebooks/" in nb.cells[0].source  # instructor copy intact


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_student_edition_is_up_to_date(path):
    target = ROOT / STUDENT_DIR / path.name
    assert target.is_file(), f"{target} missing: run `prostate-course student-edition` (writes {STUDENT_DIR}/)"
    text, n = student_text(path)
    assert target.read_text() == text, (
        f"{target} is out of date with {path}: run `prostate-course student-edition` and commit {STUDENT_DIR}/")
    nb = nbformat.read(str(target), as_version=4)
    assert colab_url(path.stem).replace("/notebooks/", f"/{STUDENT_DIR}/") in nb.cells[0].source
    assert not any("solution" in c.metadata.get("tags", []) for c in nb.cells), "a solution survived"
    assert sum("exercise" in c.metadata.get("tags", []) for c in nb.cells) == n


def test_student_folder_holds_only_generated_notebooks():
    extra = {p.name for p in (ROOT / STUDENT_DIR).glob("*.ipynb")} - {p.name for p in NOTEBOOKS}
    assert not extra, f"{STUDENT_DIR}/ has notebooks that notebooks/ does not: {sorted(extra)}"
