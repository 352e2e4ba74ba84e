"""Commands run inside a lab host's network namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from khan.demo.lab import Lab


def run_in(lab: Lab, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run` of a command inside a lab host's namespace ("node1", "pod-a", ...), via `ip netns exec`."""
    return subprocess.run(["ip", "netns", "exec", lab.netns(host), *argv], **kwargs)
