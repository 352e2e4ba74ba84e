"""Idle connections on the real kernel: connections held open and silent beside connections with traffic every half
second to the same server, under `khan agent --idle-after 3`. Only the silent ones are idle, their idle time is the
kernel's own (state timeout - the remaining timeout `conntrack -L` prints) and grows second by second, one byte
makes a connection busy again; a stalled one (its peer stopped reading: a zero window) is not idle but unknown; and
a namespace's own, changed nf_conntrack_tcp_timeout_established is read, at once when it changes. `khan snapshot`
judges as the agent does."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from khan.conntrack.namespace import entered
from tests.support.exposition import KHAN
from tests.support.kube_agent import RunningAgent
from tests.support.lab_agent import file_agent, total
from tests.support.table_fill import table_namespace

SERVER = ("10.77.0.1", 7000)
SILENT, BUSY, STALLED = "10.76.0.1", "10.76.0.2", "10.76.0.3"  # one client address each: one pair each
IDLE_AFTER = 3


class Peers:
    """A server in the namespace that reads everything, except from STALLED, and clients of each kind."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        with entered(netns):
            self.server = socket.create_server(SERVER, backlog=64)
        self.server.settimeout(0.1)
        self.sockets: list[socket.socket] = [self.server]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.busy: list[socket.socket] = []
        self.threads.append(threading.Thread(target=self._tick))
        for thread in self.threads:
            thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted, (peer, _) = self.server.accept()
                self.sockets.append(accepted)
                if peer != STALLED:
                    reader = threading.Thread(target=self._drain, args=(accepted,))
                    self.threads.append(reader)
                    reader.start()

    def _drain(self, accepted: socket.socket) -> None:
        accepted.settimeout(0.1)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                if not accepted.recv(65536):
                    return

    def _tick(self) -> None:
        while not self.stop.wait(0.5):
            for client in list(self.busy):
                client.send(b"x")

    def connect(self, source: str) -> socket.socket:
        with entered(self.netns):
            client = socket.socket()
        client.bind((source, 0))
        client.settimeout(10)
        client.connect(SERVER)
        self.sockets.append(client)
        return client

    def stall(self) -> None:
        """A connection whose server never reads: the client writes until the window is shut."""
        client = self.connect(STALLED)
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                client.send(b"s" * 65536)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for sock in self.sockets:
            sock.close()


@contextlib.contextmanager
def peers(netns: str) -> Iterator[Peers]:
    made = Peers(netns)
    try:
        yield made
    finally:
        made.close()


def remaining_timeouts(netns: str, source: str) -> tuple[list[int], float]:
    """What `conntrack -L` prints after the protocol for the ESTABLISHED entries from `source`, and when (the
    middle of the command's run)."""
    before = time.time()
    listed = subprocess.run(
        ["ip", "netns", "exec", netns, "conntrack", "-L", "-p", "tcp", "-s", source],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    at = (before + time.time()) / 2
    return [int(found) for found in re.findall(r"^tcp\s+6\s+(\d+)\s+ESTABLISHED", listed, re.MULTILINE)], at


def set_established_timeout(netns: str, seconds: int) -> None:
    sysctl = f"net.netfilter.nf_conntrack_tcp_timeout_established={seconds}"
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", sysctl], check=True)


class Poll:
    """One poll's exposition, with when it finished."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.finished_at = total(text, "khan_last_successful_poll_timestamp_seconds")

    def idle(self, source: str) -> float:
        return total(self.text, "khan_connection_idle", src_ip=source)

    def longest(self, source: str) -> float:
        return total(self.text, "khan_connection_idle_seconds_max", src_ip=source)

    def unknown(self, reason: str) -> float:
        return total(self.text, "khan_connection_idle_unknown", reason=reason)


def next_poll(agent: RunningAgent) -> Poll:
    """The exposition of the first poll that starts after this call."""
    polls = total(agent.metrics(), "khan_polls_total")
    found: list[Poll] = []

    def polled() -> bool:
        text = agent.metrics()
        if total(text, "khan_polls_total") >= polls + 2:
            found.append(Poll(text))
        return bool(found)

    agent.wait_until(polled, 10, "a poll that started after the call")
    return found[0]


def test_only_silent_connections_are_idle_and_their_idle_time_is_the_kernels(tmp_path: Path) -> None:
    inventory = tmp_path / "empty.yaml"
    inventory.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with table_namespace(f"khanidle{id(tmp_path) % 10_000}") as netns, peers(netns) as lab:
        silent = [lab.connect(SILENT) for _ in range(3)]
        lab.busy.extend(lab.connect(BUSY) for _ in range(2))
        lab.stall()
        extra = ["--idle-after", str(IDLE_AFTER)]
        with file_agent(netns, inventory, "node1", tmp_path, interval=1.0, extra=extra) as agent:
            agent.wait_ready()
            agent.wait_until(lambda: Poll(agent.metrics()).idle(SILENT) == 3, 15, "the silent connections idle")

            # Poll after poll: the silent three are idle, the busy two and the stalled one never are, and the
            # longest idle time follows the kernel's timers second by second.
            seen: list[tuple[float, float]] = []
            for _ in range(4):
                poll = next_poll(agent)
                assert (poll.idle(SILENT), poll.idle(BUSY), poll.idle(STALLED)) == (3, 0, 0), poll.text
                assert poll.longest(BUSY) == 0
                assert poll.longest(STALLED) == 0
                remaining, listed_at = remaining_timeouts(netns, SILENT)
                kernel_idle = 432_000 - min(remaining)
                # The kernel's idle time now, less the time since the poll, is what the poll saw (to the second).
                assert abs(poll.longest(SILENT) - (kernel_idle - (listed_at - poll.finished_at))) <= 1.5
                seen.append((poll.finished_at, poll.longest(SILENT)))
            for (before, idle_before), (after, idle_after) in itertools.pairwise(seen):
                assert abs((idle_after - idle_before) - (after - before)) <= 1.5, seen
            assert seen[-1][1] > seen[0][1]

            # A zero window sets the shorter max_retrans timer: the stalled connection's idle time is unknown.
            assert poll.unknown("short_timer") >= 1
            assert poll.unknown("above_state_timeout") == 0

            # One byte makes a silent connection busy again.
            silent[0].send(b"!")
            poll = next_poll(agent)
            assert poll.idle(SILENT) == 2, poll.text
            assert total(poll.text, "khan_connection", src_ip=SILENT, state="ESTABLISHED") == 3

        # khan snapshot judges the same way.
        argv = [*KHAN, "snapshot", "--inventory", str(inventory), "--netns", netns, "--idle-after", str(IDLE_AFTER)]
        snapshot = Poll(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        assert (snapshot.idle(SILENT), snapshot.idle(BUSY), snapshot.idle(STALLED)) == (2, 0, 0), snapshot.text
        assert snapshot.longest(SILENT) > IDLE_AFTER
        assert snapshot.unknown("short_timer") >= 1


def test_a_namespaces_own_established_timeout_is_read_and_reread(tmp_path: Path) -> None:
    inventory = tmp_path / "empty.yaml"
    inventory.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with table_namespace(f"khanidlet{id(tmp_path) % 10_000}") as netns, peers(netns) as lab:
        set_established_timeout(netns, 7200)
        silent = [lab.connect(SILENT) for _ in range(2)]
        lab.busy.append(lab.connect(BUSY))
        extra = ["--idle-after", str(IDLE_AFTER)]
        with file_agent(netns, inventory, "node1", tmp_path, interval=1.0, extra=extra) as agent:
            agent.wait_ready()
            agent.wait_until(lambda: Poll(agent.metrics()).idle(SILENT) == 2, 15, "the silent connections idle")
            poll = next_poll(agent)
            timeout = total(poll.text, "khan_conntrack_state_timeout_seconds", transport="tcp", state="ESTABLISHED")
            assert timeout == 7200
            remaining, listed_at = remaining_timeouts(netns, SILENT)
            kernel_idle = 7200 - min(remaining)
            assert abs(poll.longest(SILENT) - (kernel_idle - (listed_at - poll.finished_at))) <= 1.5
            assert poll.longest(SILENT) < 60  # judged by 432,000 s, it would be about five days

            # Lowered while the connections live: the next poll reads it. The silent ones still carry timers set
            # by the old value, above the new one, so their idle time is unknown until their next packet.
            set_established_timeout(netns, 3600)
            poll = next_poll(agent)
            timeout = total(poll.text, "khan_conntrack_state_timeout_seconds", transport="tcp", state="ESTABLISHED")
            assert timeout == 3600
            assert poll.idle(SILENT) == 0
            assert poll.unknown("above_state_timeout") >= 2, poll.text
            assert poll.idle(BUSY) == 0

            for client in silent:
                client.send(b"!")
            time.sleep(IDLE_AFTER + 1)
            poll = next_poll(agent)
            assert poll.unknown("above_state_timeout") == 0, poll.text
            assert poll.idle(SILENT) == 2
            assert poll.longest(SILENT) >= IDLE_AFTER
            assert poll.longest(SILENT) <= 3600 - min(remaining_timeouts(netns, SILENT)[0]) + 1
