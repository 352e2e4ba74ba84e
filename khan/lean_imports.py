"""Packages put in sys.modules without running their __init__, for the memory their re-exports would cost.

Some packages' __init__ imports far more than khan uses, only to re-export names: kubernetes_asyncio's, its ~1,100
generated API classes and models (36 MB of RSS), and urllib3's. `register_unexecuted` registers such a package with
its submodules importable and its __init__ not yet run. A name asked of it later runs the real __init__ then and
answers, so the library stays whole for whoever needs more.

aiohttp's __init__ (its client side, 4 MB) was registered so too, and measurably slowed the agent's turning away of
a flood of silent TLS connections (tests/e2e/test_server_hardening.py): it is imported whole.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def register_unexecuted(name: str) -> None:
    """Registers package `name` without running its __init__ until a name it lacks is asked for."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(name)
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)

    def load(attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__all__":  # probes such as __wrapped__ load nothing
            raise AttributeError(attribute)
        del module.__getattr__
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
