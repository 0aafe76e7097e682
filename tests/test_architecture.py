"""The package's structure: no import circle between its modules (imports inside functions
count too: a lazy import only hides a circle), and the engine knows no task."""
import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "prostate_course"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Package modules imported anywhere in ``path`` (absolute or relative imports)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("prostate_course")}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for imp in _imports(path):
            while imp and imp not in files:        # "pkg.mod.func" -> "pkg.mod"
                imp = imp.rsplit(".", 1)[0] if "." in imp else ""
            if imp and imp != name and not name.startswith(imp + ".") and imp != "prostate_course":
                deps.add(imp)
        graph[name] = deps
    return graph


def test_no_import_circle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_engine_knows_no_task_and_draws_nothing():
    deps = _graph()["prostate_course.train"]
    assert not deps & {"prostate_course.protocol", "prostate_course.steps", "prostate_course.evaluate",
                       "prostate_course.compare"}, deps
    src = (PKG / "train.py").read_text()
    assert "matplotlib" not in src and "def plot_" not in src
