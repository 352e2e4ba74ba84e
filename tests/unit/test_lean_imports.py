"""The agent loads aiohttp's server without its client side, yet aiohttp stays whole for whoever asks for more."""

from __future__ import annotations

import subprocess
import sys

from tests.support import paths

LOADED = """
import sys
import khan.app
print("aiohttp.client" in sys.modules, "aiohttp.connector" in sys.modules)  # client_exceptions is the server's too
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
print(web.Application.__name__, SERVER_SOFTWARE.split()[-1])
import aiohttp
print(aiohttp.ClientSession.__name__, aiohttp.TCPConnector.__name__, "ClientSession" in aiohttp.__all__)
import importlib.metadata
print(aiohttp.__version__ == importlib.metadata.version("aiohttp"))
"""


def test_the_agent_loads_no_client_side_of_aiohttp_and_aiohttp_stays_whole() -> None:
    run = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True, check=True, cwd=paths.REPO)
    import aiohttp

    assert run.stdout.split("\n")[:4] == [
        "False False",
        f"Application aiohttp/{aiohttp.__version__}",
        "ClientSession TCPConnector True",
        "True",
    ]


def test_a_package_already_imported_is_left_as_it_is() -> None:
    code = (
        "import aiohttp, sys; import khan.web; print(sys.modules['aiohttp'] is aiohttp, aiohttp.ClientSession.__name__)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=paths.REPO)
    assert run.stdout.split() == ["True", "ClientSession"]
