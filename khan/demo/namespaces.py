"""Named network namespaces: running the commands that set them up, deleting them, and a prefix per process.

Every lab namespace is named `{prefix}-{host}`; a prefix of `{stem}{pid}` keeps two runs on one machine apart,
and names the process a left-over lab belonged to.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts the namespaces it creates


class LabError(RuntimeError):
    """The lab could not be built, used or removed; the message is one line an operator can act on."""


def run_setup(argv: Sequence[str], stdin: str = "") -> None:
    """Run one set-up command; if it fails, raise LabError with the command and the first lines it printed."""
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = "; ".join(lines[:2]) or f"exit status {result.returncode}"
        raise LabError(f"lab set-up failed: {' '.join(argv[:4])}: {reason}")


def delete_netns(names: Sequence[str]) -> list[str]:
    """`ip netns del` each name, tolerating those already gone; returns the names that are still there."""
    if names:
        lines = "".join(f"netns del {name}\n" for name in names)
        subprocess.run(["ip", "-force", "-batch", "-"], input=lines, capture_output=True, text=True, check=False)
    return [name for name in names if (NETNS_DIR / name).exists()]


def _named_netns() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_with_prefix(prefix: str) -> list[str]:
    """The namespaces named `{prefix}-*` that exist now."""
    return [name for name in _named_netns() if name.startswith(f"{prefix}-")]


def cleanup_stale(prefix: str) -> list[str]:
    """Delete namespaces named `{prefix}-*` that an earlier lab left behind; returns their names."""
    names = netns_with_prefix(prefix)
    left = delete_netns(names)
    if left:
        raise LabError(f"could not delete lab namespaces: {' '.join(left)}")
    return names


def private_prefix(stem: str) -> str:
    """A prefix no other running process uses, `{stem}{pid}`, so that two runs on one machine never meet.

    Labs of earlier `{stem}{pid}` processes that are gone (killed before their teardown) are deleted first;
    those of processes still running are theirs and stay."""
    owner = re.compile(rf"{re.escape(stem)}(\d+)-")
    orphans = {
        match.group(0)[:-1]
        for name in _named_netns()
        if (match := owner.match(name)) and not Path("/proc", match.group(1)).exists()
    }
    for orphan in sorted(orphans):
        cleanup_stale(orphan)
    return f"{stem}{os.getpid()}"
