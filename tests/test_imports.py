"""The project's own modules import each other without a circle (import-time or lazy).

The graph is read from the source (every `import` anywhere in a file, inside functions too: a
circle hidden in a function is still a circle), over the modules `git ls-files` lists."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_modules() -> dict[str, Path]:
    """module name -> file, for every tracked .py file outside tests/."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    modules = {}
    for f in files:
        parts = Path(f).with_suffix("").parts
        if parts[0] == "tests":
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ROOT / f
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports (not its own parent packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names a.b.c; attributes are not modules
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "service.core.model_dir" in graph["service.core.runtime"]  # `from .model_dir import ...`
    assert "models.plots" in graph["models.evaluate"]
    assert "service.core.runtime" in graph["service.core.engine_core"]


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_service_and_models_stay_apart():
    """DESIGN.md: service/ never imports models/ (nor bench/), models/ never imports service/."""
    graph = import_graph()
    crossings = [(a, b) for a, deps in graph.items() for b in deps
                 if (a.startswith("service") and b.split(".")[0] in ("models", "bench"))
                 or (a.startswith("models") and b.split(".")[0] == "service")]
    assert crossings == []


def test_one_home_for_the_model_contract():
    """The exporter, `anytime check` and the service's loader all use model_format.contract."""
    graph = import_graph()
    for user in ("models.export", "models.check", "service.core.model_dir"):
        assert "model_format.contract" in graph[user], user
    assert graph["model_format.contract"] == set()  # the standard library alone
