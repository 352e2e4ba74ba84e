"""One policy for what a test needs from the machine (a command, root, the API server build): under CI=true a
missing one fails the test, since CI installs everything and a skip there would hide a broken set-up; elsewhere
the test is skipped, with the reason in the summary (`-rs` is on)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

# The commands each layer's tests run, and the Debian package (installed by `make test`) that brings each.
KERNEL_TOOLS = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack"}
PROMETHEUS_TOOLS = {"promtool": "prometheus"}
# Where `make tools` (tests/kube/install_tools.py) puts helm and kubectl 1.35; looked in before PATH, so the tests
# use that kubectl rather than Debian's 1.20.
TOOLS_BIN = Path(os.environ.get("KHAN_CACHE", Path.home() / ".cache" / "khan")) / "tools" / "bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement fails)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The command's path; missing() if it is not on PATH."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is missing: apt-get install {package} (make test does)")
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root: network namespaces, the kernel's conntrack table and the lab")


def installed_tool(name: str) -> str | None:
    """The command from `make tools` if it is there, else the one on PATH, else None."""
    cached = TOOLS_BIN / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which(name)


def require_kube_tool(name: str) -> str:
    """helm or kubectl, as `make tools` installs them; missing() without."""
    found = installed_tool(name)
    if found is None:
        missing(f"{name} is missing: run `make tools` (make test does)")
    return found
