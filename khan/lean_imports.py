"""Packages put in sys.modules without running their __init__, for the memory their re-exports would cost.

Some packages' __init__ imports far more than khan uses, only to re-export names: kubernetes_asyncio's, its ~1,100
generated API classes and models (36 MB of RSS); aiohttp's, its whole client side (4 MB), which an agent serving
an --inventory file never uses. `register_unexecuted` registers such a package with its submodules importable and
its __init__ not yet run. A name asked of it later runs the real __init__ then and answers, so the library stays
whole for whoever needs more; with `submodules_first`, a name that is one of its submodules is imported alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def register_unexecuted(name: str, *, submodules_first: bool = False, **attributes: object) -> None:
    """Registers package `name` without running its __init__ until a name it lacks is asked for. `attributes` are
    set at once: what its submodules import from the package itself (aiohttp's `__version__`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(name)
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)

    def load(attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__all__":  # probes such as __wrapped__ load nothing
            raise AttributeError(attribute)
        if submodules_first and importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        del module.__getattr__
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = load  # type: ignore[method-assign]
    for attribute, value in attributes.items():
        setattr(module, attribute, value)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
