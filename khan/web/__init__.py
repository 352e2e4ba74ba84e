"""HTTP: the aiohttp server and its limits, the routes over bytes rendered once per poll, TLS and authentication.
The only user of aiohttp's server."""

from __future__ import annotations

import importlib.util
import re
import sys

from khan.lean_imports import register_unexecuted


def _lean_aiohttp() -> None:
    """aiohttp's __init__ imports its whole client side to re-export it: 4 MB of an agent that only serves (one
    reading the API loads it in full, as kube_transport asks for aiohttp's client names). Its server modules need
    of the package only `__version__`, read here from the same file; if that cannot be read, aiohttp loads whole."""
    if "aiohttp" in sys.modules:
        return
    spec = importlib.util.find_spec("aiohttp")
    try:
        with open(spec.origin if spec and spec.origin else "", encoding="utf-8") as init:
            found = re.search(r'^__version__ = "([^"\n]+)"$', init.read(), re.MULTILINE)
    except OSError:
        return
    if found:
        register_unexecuted("aiohttp", submodules_first=True, __version__=found[1])


_lean_aiohttp()
