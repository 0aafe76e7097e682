"""Student edition: copies of the notebooks whose exercise answers are stubs that still run.

A cell tagged ``solution`` is an exercise answer (docs/ARCHITECTURE.md "Exercises"). In the
student edition its code becomes stubs that keep Run-All going (the check after it reports the
exercise as unanswered and hands the reference answer to the cells that follow):

- ``name = ...`` (any top-level assignment to names) -> ``name = pc.exercises.UNANSWERED``;
- ``def f(...): ...`` -> the same signature and docstring, body ``return pc.exercises.UNANSWERED``;
- every other statement of the answer (prints, helper computations) is dropped.

If the cell marks the answer with ``### BEGIN SOLUTION`` / ``### END SOLUTION``, only the lines
between the markers are replaced, so the scaffolding around the answer stays (inside a function
body the stub is ``return pc.exercises.UNANSWERED``). A markdown solution cell becomes a prompt.

The edition also points its Colab badge at the student copy (``student/`` in the repository),
and :func:`write_student_edition` writes every notebook of a folder (``prostate-course
student-edition``). The instructor edition (``notebooks/``) keeps the solutions.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB_VALUE = "pc.exercises.UNANSWERED"
#: The marker every stub carries (tests and students search for it).
STUB = "# YOUR CODE HERE"
STUDENT_DIR = "student"
NOTE = ("*Student edition*: the answer cells hold stubs (`pc.exercises.UNANSWERED`). Run-All "
        "works as it is: each check reports an unanswered exercise and the notebook goes on with "
        "the reference answer. Replace a stub with your answer and run its check again.")


def _stub_statements(code: str, indent: str = "") -> list[str]:
    """Stub lines for a block of answer code (already dedented)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise ValueError(f"solution cell does not parse ({e.msg}, line {e.lineno}): cannot make its stub") from None
    out: list[str] = []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = code.splitlines()
            body0 = node.body[0]
            keep_doc = (isinstance(body0, ast.Expr) and isinstance(getattr(body0, "value", None), ast.Constant)
                        and isinstance(body0.value.value, str))
            end_header = (body0.end_lineno if keep_doc else body0.lineno - 1)
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            header = lines[start - 1:end_header]
            body_indent = " " * (body0.col_offset)
            out += [indent + h for h in header]
            out += [indent + body_indent + STUB, indent + body_indent + f"return {STUB_VALUE}"]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in names:
                        names.append(n.id)
    if names:
        out += [indent + STUB] + [indent + f"{n} = {STUB_VALUE}" for n in names]
    return out


def stub_solution(source: str) -> str:
    """The student-edition stub of a solution cell's source (see the module docstring)."""
    lines = source.splitlines()
    if any(line.strip() == BEGIN for line in lines):
        out, inside, region, indent = [], False, [], ""
        for line in lines:
            stripped = line.strip()
            if stripped == BEGIN:
                inside, region = True, []
                indent = line[: len(line) - len(line.lstrip())]
            elif stripped == END:
                inside = False
                stub = _stub_statements(textwrap.dedent("\n".join(region)), indent) if indent == "" else []
                if not stub:   # inside a function body, or nothing assigned: return the sentinel
                    stub = [indent + STUB, indent + f"return {STUB_VALUE}"] if indent else [indent + STUB]
                out += stub
            elif inside:
                region.append(line)
            else:
                out.append(line)
        if inside:
            raise ValueError(f"solution cell has {BEGIN!r} without {END!r}")
        return "\n".join(out)
    stub = _stub_statements(source)
    return "\n".join(stub) if stub else f"{STUB}\npass"


def _student_badge(source: str) -> str:
    return source.replace("/blob/main/notebooks/", f"/blob/main/{STUDENT_DIR}/")


def student_notebook(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return a student copy (solutions stubbed, Colab badge to ``student/``) and the number
    of solution cells stubbed. The instructor notebook is not modified."""
    nb = nbformat.from_dict(nb)
    n = 0
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if i == 0 and cell.cell_type == "markdown":
            cell.source = _student_badge(cell.source)
        if SOLUTION_TAG in tags:
            if cell.cell_type == "code":
                cell.source = stub_solution(cell.source)
                cell.outputs = []
                cell.execution_count = None
            else:
                cell.source = "_Write your answer here._"
            cell.metadata["tags"] = [t for t in tags if t != SOLUTION_TAG] + [EXERCISE_TAG]
            n += 1
    if n and nb.cells and nb.cells[0].cell_type == "markdown" and NOTE not in nb.cells[0].source:
        nb.cells[0].source = nb.cells[0].source.rstrip() + "\n\n" + NOTE
    return nb, n


def student_text(path: str | Path) -> tuple[str, int]:
    """The student edition of one notebook file, as the exact text written to ``student/``."""
    nb, n = student_notebook(nbformat.read(str(path), as_version=4))
    return nbformat.writes(nb) + "\n", n


def write_student_edition(source_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write student copies of every notebook of ``source_dir`` into ``out_dir``."""
    from .io_utils import write_text_atomic

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    counts = {}
    for path in sorted(source_dir.glob("*.ipynb")):
        text, n = student_text(path)
        target = out_dir / path.name
        if not target.is_file() or target.read_text() != text:
            write_text_atomic(target, text)
        counts[path.name] = n
    return counts
