"""The package's shape, checked from its source: no module-level import cycle anywhere in
``vfsearch``; each surface's framework imported only inside that surface (click: the CLI;
fastapi / starlette / uvicorn: the server; anywidget / ipywidgets: the widget); Zarr only inside
the cache package (and the importer, which reads the reference library's own Zarr v2 layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vfsearch"

#: framework → the only vfsearch subpackages (or modules) that may import it
SURFACES = {
    "click": ("vfsearch.cli",),
    "fastapi": ("vfsearch.server",),
    "starlette": ("vfsearch.server",),
    "uvicorn": ("vfsearch.server",),
    "anywidget": ("vfsearch.widget",),
    "ipywidgets": ("vfsearch.widget",),
    "zarr": ("vfsearch.cache", "vfsearch.importing"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        name = ".".join(("vfsearch",) + f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _targets(node, mod: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        subs = [f"{target}.{a.name}" for a in node.names]
        # ``from . import versions`` imports the submodule, not the package's names
        return subs if all(t in MODULES for t in subs) else [target] + subs
    return [a.name for a in node.names]


def _imports(path: Path, mod: str, *, top_level: bool) -> set[str]:
    """What ``path`` imports: at module level only (``top_level``: what runs on import, outside
    functions and ``if TYPE_CHECKING``), or anywhere in the file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    nodes = []
    if top_level:
        todo = list(tree.body)
        while todo:
            n = todo.pop()
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                nodes.append(n)
            elif isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue
            elif isinstance(n, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for c in getattr(n, field, []):
                        todo += c.body if isinstance(c, ast.ExceptHandler) else [c]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    out = set()
    for n in nodes:
        out |= set(_targets(n, mod, is_pkg))
    return out


def test_no_module_level_import_cycle():
    mods = MODULES
    graph = {m: {t for t in _imports(f, m, top_level=True) if t in mods and t != m}
             for m, f in mods.items()}
    state: dict[str, str] = {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [m, t] if t in stack else [m, t]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("framework", sorted(SURFACES))
def test_frameworks_stay_inside_their_surface(framework):
    allowed = SURFACES[framework]
    bad = []
    for m, f in MODULES.items():
        if m == allowed or any(m == a or m.startswith(a + ".") for a in allowed):
            continue
        hits = {t for t in _imports(f, m, top_level=False)
                if t == framework or t.startswith(framework + ".")}
        if hits:
            bad.append(f"{m} imports {', '.join(sorted(hits))}")
    assert not bad, f"{framework} belongs to {', '.join(allowed)} only: " + "; ".join(bad)
