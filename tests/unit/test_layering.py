"""khan's packages import in one direction, as the README's layout section draws them, and each third-party
library that stands for one edge of the program (the kernel, the API server, Prometheus, HTTP serving) is used
from one place. Every import counts, including those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import paths

KHAN = paths.REPO / "khan"

# Bottom to top: a unit may import units of lower layers only. Units in one layer stand beside each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"khan", "settings", "logs", "shutdown", "lean_imports", "allocator"}),  # depend on nothing of khan
    frozenset({"conntrack", "inventory"}),  # the two edges that do I/O: kernel bytes -> flows; objects -> index
    frozenset({"attribution"}),  # inventory + flows -> labelled connections
    frozenset({"counting"}),  # state between polls
    frozenset({"polling"}),  # one poll -> PollResult
    frozenset({"metrics"}),  # families and exposition
    frozenset({"web"}),  # HTTP serving
    frozenset({"app", "snapshot_command"}),  # the commands' composition
    frozenset({"demo"}),  # `khan demo`: the agent on a lab of network namespaces
    frozenset({"options"}),  # the option table: each flag, its variable, parser and help, once
    frozenset({"cli"}),  # flags -> Settings; dispatch
    frozenset({"__main__"}),  # python -m khan
)

# Library -> the modules (or packages, with a trailing dot) allowed to import it.
SOLE_USERS = {
    "kubernetes_asyncio": ("khan.inventory.kube_transport",),
    "pyroute2": ("khan.conntrack.namespace",),
    "prometheus_client": ("khan.metrics.",),
    "aiohttp.web": ("khan.web.",),
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(KHAN.rglob("*.py")):
        parts = path.relative_to(paths.REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def unit_of(module: str) -> str:
    """khan.counting.tracker -> counting; khan.app -> app; khan and khan.__version__ (a name, not a module) -> khan."""
    parts = module.split(".")
    if len(parts) == 1 or (not (KHAN / parts[1]).with_suffix(".py").exists() and not (KHAN / parts[1]).is_dir()):
        return "khan"
    return parts[1]


def layer_of(unit: str) -> int:
    for level, units in enumerate(LAYERS):
        if unit in units:
            return level
    raise AssertionError(f"khan.{unit} is in no layer: add it to LAYERS here and to the README's layout section")


def edges() -> set[tuple[str, str]]:
    found = set()
    for module, tree in modules():
        for target in imports(tree):
            if target == "khan" or target.startswith("khan."):
                source_unit, target_unit = unit_of(module), unit_of(target)
                if source_unit != target_unit and target_unit != "khan":
                    found.add((source_unit, target_unit))
    return found


def test_every_unit_has_a_layer() -> None:
    for module, _ in modules():
        layer_of(unit_of(module))


def test_imports_only_go_down() -> None:
    upward = sorted(
        f"khan.{source} (layer {layer_of(source)}) imports khan.{target} (layer {layer_of(target)})"
        for source, target in edges()
        if layer_of(target) >= layer_of(source)
    )
    assert upward == []


@pytest.mark.parametrize("library", sorted(SOLE_USERS))
def test_each_edge_library_is_used_from_one_place(library: str) -> None:
    allowed = SOLE_USERS[library]
    users = sorted(
        module
        for module, tree in modules()
        if any(name == library or name.startswith(library + ".") for name in imports(tree))
    )
    assert users, f"nobody imports {library}: update SOLE_USERS"
    strays = [module for module in users if not any(module == a or module.startswith(a) for a in allowed)]
    assert strays == [], f"{library} is for {allowed} only"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports inside functions and under TYPE_CHECKING, where cycles used to hide."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from khan.counting.counters import CounterView\n"
        "def f():\n    import khan.metrics.families\n"
    )
    assert {"khan.counting.counters", "khan.metrics.families"} <= set(imports(tree))
