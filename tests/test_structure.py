"""The package is a one-way house: no import cycle between hyperdm's modules (imports at module level and inside
functions both count), and no module uses another's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hyperdm"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's hyperdm imports (edges) and every use of another module's private name (reach-ins)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    reach: list[str] = []
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        tree = ast.parse(p.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                for a in node.names:
                    full = f"{target}.{a.name}"
                    owner = _owner(full if full in mods else target, mods)
                    if owner is None or owner == m:
                        continue
                    edges[m].add(owner)
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        reach.append(f"{p.name}:{node.lineno} from {target} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    owner = _owner(a.name, mods)
                    if owner is not None and owner != m:
                        edges[m].add(owner)
                        aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                reach.append(f"{p.name}:{node.lineno} {node.value.id}.{node.attr}")
    return edges, reach


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if n.startswith(m + ".") or m.startswith(n + "."):  # a package and its own submodules
                continue
            if state.get(n) == 1:
                found.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle_and_no_private_reach_in():
    mods = _modules()
    assert "hyperdm.fused" in mods and "hyperdm.distill.loops.base" in mods
    edges, reach = _imports(mods)
    assert "hyperdm.law" in edges["hyperdm.fused"]  # the walk sees imports (module level and lazy)
    assert "hyperdm.distributed" in edges["hyperdm.fused"]  # (a lazy one, inside a function)
    assert _cycles(edges) == []
    assert reach == []


def test_the_walk_finds_a_cycle_and_a_reach_in():
    """The checks above can fail: a made-up pair of modules importing each other, one using the other's _name."""
    edges = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(edges) == [["a", "b", "a"]]
    mods = {"hyperdm.x": PKG / "x.py", "hyperdm.y": PKG / "y.py"}
    tree_y = "from . import x\n\ndef f():\n    return x._hidden()\n"
    orig = Path.read_text
    try:
        Path.read_text = lambda self, *a, **k: tree_y if self.name == "y.py" else "import hyperdm.y\n"  # type: ignore[method-assign]
        edges, reach = _imports(mods)
    finally:
        Path.read_text = orig  # type: ignore[method-assign]
    assert edges["hyperdm.y"] == {"hyperdm.x"} and edges["hyperdm.x"] == {"hyperdm.y"}
    assert _cycles(edges) and reach == ["y.py:4 x._hidden"]
