"""The test layers: each folder is a layer with a marker of its name, and the three that need root are also
marked `root`. `make unit` runs the unit layer (no root, no servers); `make test` runs them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import tools

LAYERS = {  # folder -> needs root (namespaces, the kernel's table, or the API server in a namespace)
    "unit": False,
    "kernel": True,
    "apiserver": True,
    "e2e": True,
}
TESTS = Path(__file__).parent


def layer_of(path: Path) -> str | None:
    relative = path.relative_to(TESTS) if path.is_relative_to(TESTS) else None
    return relative.parts[0] if relative is not None and relative.parts[0] in LAYERS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(Path(item.path))
        if layer is None:
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in one of tests/{{{','.join(LAYERS)}}}/")
        item.add_marker(getattr(pytest.mark, layer))
        if LAYERS[layer]:
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Requirements of the layer, checked before any fixture builds a lab or a cluster."""
    if item.get_closest_marker("root") is not None:
        tools.require_root()
        for tool, package in tools.KERNEL_TOOLS.items():
            tools.require_tool(tool, package)
    if item.get_closest_marker("apiserver") is not None:
        from tests.support.kube_cluster import require_apiserver

        require_apiserver()
