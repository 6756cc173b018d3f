"""The package reads as the pipeline: no import cycle, no import back up the pipeline, no huge module.

Layers, lowest first (a module may import from its own layer and the ones below, never above):
core (errors, log, run, resources, sysroot, yamlread, profile, config, manifest, templates, kernel)
-> resolve/ (ELF and kernel-module closures, the kernel's config) and formats/ (writers, readers)
-> modules/ (the modules.d contract) -> build -> cli. boot/ (QEMU, for tests and qemu/) sits beside
the pipeline and uses only core and formats. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "initbuild"
MAX_LINES = 500

LAYER = {"resolve": 1, "formats": 1, "boot": 1, "modules": 2, "build": 3, "cli": 4, "__main__": 5}
# what each top-level part may import besides core and its own part
ALLOWED = {
    "resolve": {"formats"},
    "formats": set(),
    "boot": {"formats"},
    "modules": {"resolve", "formats"},
    "build": {"resolve", "formats", "modules"},
    "cli": {"resolve", "formats", "modules", "build", "boot"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "data" in rel.parts:
            continue  # modules.d/*/module.py are loaded by path, not imported
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) - {"initbuild"} for name, path in mods.items()}


def _part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else "core"


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_runs_back_up_the_pipeline() -> None:
    bad = []
    for name, deps in _graph().items():
        part = _part(name)
        for dep in deps:
            dp = _part(dep)
            if dp == "core" or dp == part:
                continue
            if part == "core" or dp not in ALLOWED[part]:
                bad.append(f"{name} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_no_module_over_the_size_limit() -> None:
    big = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if "data" not in p.relative_to(PACKAGE).parts and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_checker_sees_imports() -> None:
    """The graph is not empty by accident: known edges of the pipeline are found."""
    graph = _graph()
    assert "initbuild.build" in graph["initbuild.cli"]
    assert any(d.startswith("initbuild.formats") for d in graph["initbuild.build"])
    assert "initbuild.errors" in graph["initbuild.sysroot"]
