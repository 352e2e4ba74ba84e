"""A client that pipelines requests and never reads the answers: the real agent stops reading its connection once
32 parsed requests wait (aiohttp 3.14.1's bound, the declared floor), so its memory stays flat. With aiohttp
3.13.4, four such connections grew the agent by hundreds of megabytes."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from khan.conntrack.namespace import entered
from khan.demo.namespaces import private_prefix
from tests.support.protected_agent import PORT, Agent, private_netns, running_agent

CONNECTIONS = 4
BYTES_PER_CONNECTION = 12 * 1024 * 1024
SENDING_SECONDS = 15.0
MAX_GROWTH_BYTES = 100 * 1024 * 1024
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak), in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@contextlib.contextmanager
def connections(agent: Agent) -> Iterator[list[socket.socket]]:
    with entered(agent.netns):
        opened = [socket.create_connection(("127.0.0.1", PORT), timeout=5) for _ in range(CONNECTIONS)]
    try:
        for sock in opened:
            sock.setblocking(False)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def pipeline_without_reading(opened: list[socket.socket]) -> tuple[int, int]:
    """Send up to BYTES_PER_CONNECTION of pipelined requests on each connection for at most SENDING_SECONDS,
    never reading: (bytes the agent's side took, connections it closed)."""
    payload = memoryview(REQUEST * (BYTES_PER_CONNECTION // len(REQUEST)))
    sent = dict.fromkeys(opened, 0)
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + SENDING_SECONDS
    while time.monotonic() < deadline:
        pending = [sock for sock in opened if sent[sock] < len(payload) and sock not in closed]
        if not pending:
            break
        _, writable, _ = select.select([], pending, [], 0.5)
        for sock in writable:
            try:
                sent[sock] += sock.send(payload[sent[sock] : sent[sock] + 256 * 1024])
            except OSError:  # the agent closed it: nothing more goes in
                closed.add(sock)
    return sum(sent.values()), len(closed)


def test_pipelined_requests_never_read_keep_the_agent_small(tmp_path: Path) -> None:
    with (
        private_netns(private_prefix("khanpipe") + "-ns") as netns,
        running_agent(netns, tmp_path, [], scheme="http") as agent,
    ):
        agent.wait_ready()
        before = memory(agent.process.pid)["VmRSS"]
        with connections(agent) as opened:
            sent, closed = pipeline_without_reading(opened)
            time.sleep(1.0)  # what was sent is parsed
            after = memory(agent.process.pid)
            assert agent.status("/healthz") == 200  # others are still served
        growth = max(after["VmRSS"], after["VmHWM"]) - before
        print(
            f"pipelining: {sent / 2**20:.1f} MB taken from {CONNECTIONS} connections ({closed} closed by the agent);"
            f" agent RSS {before / 2**20:.0f} MB before, peak {after['VmHWM'] / 2**20:.0f} MB,"
            f" growth {growth / 2**20:.1f} MB"
        )
        assert growth < MAX_GROWTH_BYTES
        assert agent.status("/healthz") == 200
        assert agent.process.poll() is None
