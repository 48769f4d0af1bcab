"""The package layering of docs/DESIGN.md, checked on the source: every `import` under jdr/ (module level and
inside functions, read with `ast`) goes from a layer to a lower one, and no packages import each other in a cycle.

LAYERS is the one statement of the order (DESIGN quotes it; `test_design_quotes_the_layers` keeps the quote
true). A unit is a top-level module (`jdr.io`) or a package with everything under it (`jdr.data` holds
`jdr.data.selfsup`). A unit may import itself and units of LOWER layers; units of one layer never import each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jdr"

# Lowest first.
LAYERS = [
    ["jdr.io", "jdr.errors", "jdr.config", "jdr.distributed", "jdr.losses", "jdr.malloc"],
    ["jdr.checkpoint", "jdr.run_info", "jdr.losses_rerank"],
    ["jdr.models", "jdr.index"],
    ["jdr.data"],
    ["jdr.negatives"],
    ["jdr.evaluate"],
    ["jdr.compare", "jdr.fusion", "jdr.rerank"],
    ["jdr.train"],
    ["jdr.vq"],
    ["jdr.cli"],
]
# Narrower rules inside the order: what a unit may take from a lower one, where DESIGN promises less than the
# order allows. data knows models only for the bucketing rule and the ragged padder.
ONLY = {("jdr.data", "jdr.models"): {"jdr.models.tokenize"}}
# Units whose code never touches jax: the index layer is numpy + faiss; self-supervised pairs are numpy.
NO_JAX = ("jdr.index", "jdr.data.selfsup")
JAX_LIBRARIES = ("jax", "flax", "optax", "orbax")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in the file, relative ones resolved; `from pkg import mod` names
    the module `pkg.mod` when it is one."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def _unit(module: str) -> str | None:
    """The LAYERS unit holding `module` (None for the bare `jdr` package)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else None


LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _jdr_edges():
    """(importer module, imported module, line) for every import of jdr code by jdr code."""
    for name, path in MODULES.items():
        for target, line in _imports(name, path):
            if target == "jdr" or target.startswith("jdr."):
                yield name, target, line


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {None}
    assert sorted(units - set(LEVEL)) == [], "add these modules / packages to LAYERS"
    assert sorted(set(LEVEL) - units) == [], "LAYERS names units that do not exist"


def test_imports_go_down_the_layers():
    bad = []
    for src, dst, line in _jdr_edges():
        a, b = _unit(src), _unit(dst)
        if b is None or a == b:
            continue
        if LEVEL[b] >= LEVEL[a]:
            bad.append(
                f"{MODULES[src].relative_to(ROOT)}:{line}: {a} (layer {LEVEL[a]}) imports {dst} (layer {LEVEL[b]})"
            )
        allowed = ONLY.get((a, b))
        if allowed is not None and dst not in allowed:
            bad.append(
                f"{MODULES[src].relative_to(ROOT)}:{line}: {a} may take only {sorted(allowed)} of {b}, imports {dst}"
            )
    assert bad == [], "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle_between_units_or_modules():
    """No two LAYERS units import each other, and no modules import each other in a cycle (imports inside
    functions included), whatever the layers say. A sub-package and its parent may import each other's modules
    (jdr.train's trainer picks an objective of jdr.train.objectives, whose base uses jdr.train.state) as long as
    no module cycle forms."""
    units: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for src, dst, _ in _jdr_edges():
        if dst in MODULES and dst != "jdr":
            if _unit(src) != _unit(dst):
                units.setdefault(_unit(src), set()).add(_unit(dst))
            if src != dst:
                modules.setdefault(src, set()).add(dst)
    cycles = _cycles(units) + _cycles(modules)
    assert cycles == [], "\n".join(cycles)


@pytest.mark.parametrize("unit", NO_JAX)
def test_units_without_jax(unit):
    """Neither the unit nor any jdr module it reaches through imports imports jax, flax, optax or orbax."""
    seen, todo, bad = set(), [m for m in MODULES if m == unit or m.startswith(unit + ".")], []
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for target, line in _imports(m, MODULES[m]):
            if target.split(".")[0] in JAX_LIBRARIES:
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {target}")
            elif target in MODULES and target != "jdr":
                todo.append(target)
    assert bad == [], "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A lazy import is an import: the checker reads function bodies too (a check that cannot fail is no check)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from jdr.train import trainer\n    import jdr.cli\n")
    assert [t for t, _ in _imports("jdr.models.m", src)] == ["jdr.train.trainer", "jdr.cli"]


def test_design_quotes_the_layers():
    """docs/DESIGN.md's layer list (the lines `N. jdr.a, jdr.b` in its layers section) is LAYERS."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    quoted = [
        [u.strip(" `") for u in m.group(2).split(",")]
        for m in re.finditer(r"^ *(\d+)\. (`jdr[^\n]*)$", text, flags=re.M)
    ]
    assert quoted == LAYERS
