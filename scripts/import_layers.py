"""The import graph of `cmrl/` and its layers, read with `ast` (no import is executed).

    python scripts/import_layers.py            # every module: its depth, layer and what it imports
    python scripts/import_layers.py --check    # exit 1 if a module imports from a higher layer

A module's *depth* is the length of the longest chain of internal imports below it (a module that
imports nothing internal has depth 1). Its *layer* is fixed by its package (`LAYERS`): a module may
import from its own package and from lower layers only; the three layer-1 packages (tasks and
environments, networks, run files) are independent of each other. `tests/test_layers.py` runs
the check.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

LAYERS: dict[str, int] = {
    "cmrl._version": 0, "cmrl.config": 0, "cmrl.variants": 0, "cmrl.agent_kinds": 0,
    "cmrl.envs": 1, "cmrl.nets": 1, "cmrl.runs": 1,
    "cmrl.data": 2,
    "cmrl.algo": 3,
    "cmrl.experiments": 4,
    "cmrl": 5, "cmrl.cli": 5, "cmrl.errors": 5, "cmrl.__main__": 5,
}
"""Package (or top-level module) -> layer. 0 configuration; 1 tasks/environments, networks, run
files; 2 datasets; 3 the algorithm; 4 experiments; 5 the public API and the command line."""


INDEPENDENT = {1}
"""Layers whose packages must not import each other (modules of layers 0 and 5 may)."""


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the internal modules it imports (a `from pkg import mod` counts as `pkg.mod`)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
                hits = [n for n in names[1:] if n in mods] or [target]
            elif isinstance(node, ast.Import):
                hits = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {h for h in hits if h in mods and h != m}
    return graph


def group(module: str) -> str:
    """The LAYERS entry a module belongs to: itself, or its package (the root `cmrl` covers only its
    `__init__`, so a new top-level module or package must be given a layer)."""
    best = max((g for g in LAYERS if module == g or (g != "cmrl" and module.startswith(g + "."))),
               key=len, default=None)
    if best is None:
        raise KeyError(f"{module} is in no layer: add its package to LAYERS")
    return best


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, or of a peer package in an INDEPENDENT layer."""
    bad = []
    for m, deps in sorted(graph.items()):
        gm = group(m)
        for d in sorted(deps):
            gd = group(d)
            if gd != gm and (LAYERS[gd] > LAYERS[gm] or LAYERS[gd] == LAYERS[gm] in INDEPENDENT):
                bad.append(f"{m} (layer {LAYERS[gm]}) imports {d} (layer {LAYERS[gd]})")
    return bad


def depths(graph: dict[str, set[str]]) -> dict[str, int]:
    @functools.lru_cache(None)
    def depth(m: str) -> int:  # the package's own __init__ is skipped: it re-exports the API
        return 1 + max((depth(d) for d in graph[m] if d != "cmrl"), default=0)
    return {m: depth(m) for m in graph}


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent / "cmrl"
    graph = import_graph(root)
    bad = violations(graph)
    if "--check" not in argv:
        d = depths(graph)
        for m in sorted(graph, key=lambda m: (LAYERS[group(m)], d[m], m)):
            print(f"layer {LAYERS[group(m)]}  depth {d[m]:2d}  {m:38s} "
                  f"{', '.join(sorted(x.removeprefix('cmrl.') for x in graph[m]))}")
        print(f"{len(graph)} modules, {sum(map(len, graph.values()))} internal imports, "
              f"{max(d.values())} levels deep, {len(bad)} upward imports")
    for line in bad:
        print("UPWARD:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
