"""`khan agent` with a file inventory, run inside one of the lab's namespaces (so each node's agent serves on its
own loopback), stopped at the end whatever happens."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.exposition import KHAN, samples
from tests.support.kube_agent import AGENT_PORT, RunningAgent
from tests.support.kube_cluster import stop_process


@contextlib.contextmanager
def file_agent(
    netns: str, inventory: Path, node: str, workdir: Path, interval: float = 1.0, extra: Sequence[str] = ()
) -> Iterator[RunningAgent]:
    log_path = workdir / f"agent-{node}-{time.monotonic_ns()}.log"
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", node]
    argv += ["--listen", f"127.0.0.1:{AGENT_PORT}", "--interval", str(interval), "--log-format", "json", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log)
    try:
        yield RunningAgent(process, netns, log_path)
    finally:
        stop_process(process)


def total(text: str, name: str, **wanted: str) -> float:
    """The sum of a family's samples whose labels include `wanted`, leaving out the agent's own loopback HTTP."""
    found = 0.0
    for labels, value in samples(text, name).items():
        as_dict = dict(labels)
        if as_dict.get("src_ip") == "127.0.0.1":
            continue
        if all(as_dict.get(key) == expected for key, expected in wanted.items()):
            found += value
    return found
