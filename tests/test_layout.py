"""The house stays walkable: every module of fashion_ray sits on a floor (docs/development.md,
Layout) and imports only its own floor or those below, in-function imports included; no cycle."""

from __future__ import annotations

import ast
import pathlib

from helpers import ROOT

PACKAGE = pathlib.Path(ROOT) / "fashion_ray"

# top to bottom; a module may import from its own floor and every floor below it
FLOORS = [
    {"bench"},
    {"serving", "training"},
    {"run"},
    {"pipeline"},
    {"stages", "export"},
    {"placement", "lease", "ray_init", "preview", "ledger"},
    {"evaluation"},
    {"video"},
    {"models"},
    {"formats"},
    {"config"},
    {"errors", "taxonomy", "storage", "media", "boxes", "masks", "samplers", "actions", "assets"},
]
LEVEL = {room: len(FLOORS) - k for k, floor in enumerate(FLOORS) for room in floor}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, modules) -> set[str]:
    """The package's modules a file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [s for s in subs if s in modules] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "fashion_ray":
                found.add(name)
    return found


def _room(module: str) -> str:
    return module.split(".")[1]


def test_every_import_points_down_and_there_is_no_cycle():
    modules = _modules()
    rooms = {_room(m) for m in modules if m != "fashion_ray"}
    assert rooms <= set(LEVEL), f"modules on no floor (add them to FLOORS and the Layout): {rooms - set(LEVEL)}"
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if a != "fashion_ray"
        for b in targets
        if LEVEL[_room(b)] > LEVEL[_room(a)]
    )
    assert not upward, upward

    # no cycle: depth-first search with the path on a stack
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
