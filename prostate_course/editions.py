"""Student edition: copies of the notebooks with exercise solutions replaced by stubs.

A cell tagged ``solution`` is an exercise answer. In the student edition its code becomes a
stub that raises ``NotImplementedError`` (as nbgrader does); if the cell marks the answer with
``### BEGIN SOLUTION`` / ``### END SOLUTION``, only the lines between the markers are replaced,
so scaffolding around the answer stays.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: replace this line with your answer")'


def stub_solution(source: str) -> str:
    lines = source.splitlines()
    if any(line.strip() == BEGIN for line in lines):
        out, inside = [], False
        for line in lines:
            stripped = line.strip()
            if stripped == BEGIN:
                inside = True
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}# YOUR CODE HERE")
                out.append(f"{indent}{STUB}")
            elif stripped == END:
                inside = False
            elif not inside:
                out.append(line)
        if inside:
            raise ValueError(f"solution cell has {BEGIN!r} without {END!r}")
        return "\n".join(out)
    return f"# YOUR CODE HERE\n{STUB}"


def student_notebook(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return a copy with solution cells stubbed, and how many were stubbed."""
    nb = nbformat.from_dict(nb)
    n = 0
    for cell in nb.cells:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            if cell.cell_type == "code":
                cell.source = stub_solution(cell.source)
                cell.outputs = []
                cell.execution_count = None
            else:
                cell.source = "_Write your answer here._"
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != SOLUTION_TAG] + ["exercise"]
            n += 1
    return nb, n


def write_student_edition(source_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write student copies of every notebook of ``source_dir`` into ``out_dir``."""
    from .io_utils import atomic_path

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    counts = {}
    for path in sorted(source_dir.glob("*.ipynb")):
        nb, n = student_notebook(nbformat.read(str(path), as_version=4))
        with atomic_path(out_dir / path.name) as tmp:
            nbformat.write(nb, str(tmp))
        counts[path.name] = n
    return counts
