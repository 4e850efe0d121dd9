"""The house's shape, pinned: the library (`workloads/`) never imports the application
(`sweeps/`), no module imports itself through a circle (lazy imports inside functions count),
and the study files and the local engine import no Ray."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workloads", "sweeps")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports, anywhere in its body."""
    files = {(_module_name(p)): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found - {n for n in found if n in ("workloads", "sweeps")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_library_never_imports_the_application():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith("sweeps")) for m, targets in graph.items()
           if m.startswith("workloads")}
    assert not {m: t for m, t in bad.items() if t}


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_check_finds_a_circle():
    """The checker itself: a planted circle is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_study_files_import_no_ray():
    """A study file is read without Ray (--local runs it on a machine that has none)."""
    code = ("import importlib, pkgutil, sys, sweeps\n"
            "from sweeps.cli import ENGINE_MODULES\n"
            "for m in pkgutil.iter_modules(sweeps.__path__):\n"
            "    if m.name not in ENGINE_MODULES: importlib.import_module('sweeps.' + m.name)\n"
            "import sweeps.local, sweeps.runner, sweeps.study\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
