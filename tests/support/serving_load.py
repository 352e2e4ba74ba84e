"""Load on the agent's HTTP server, for tests/e2e/test_serving.py and benchmarks/serving.py: a private table with
10,000 distinct connection series, the real `khan agent` reading it, scrapers in processes of their own (so
their work never slows the probe's timing), and a probe that times /healthz the way the kubelet asks it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.test_agent_http import free_port, get
from tests.support.exposition import KHAN
from tests.support.kube_cluster import stop_process
from tests.support.table_fill import FILL_PORTS, fill_udp_flows

# 10 sources x 125 destinations x 8 ports: every flow is its own (src_ip, dst_ip, dst_port) series.
SOURCES = tuple(f"10.76.0.{i}" for i in range(1, 11))
DESTINATIONS = tuple(f"10.77.0.{i}" for i in range(1, 126))
SERIES = len(SOURCES) * len(DESTINATIONS) * len(FILL_PORTS)
EMPTY_INVENTORY = '{"apiVersion": "v1", "kind": "List", "items": []}\n'


def fill_distinct_series(netns: str) -> None:
    fill_udp_flows(netns, SERIES, sources=SOURCES, destinations=DESTINATIONS)


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def tail(self) -> str:
        return "\n".join(self.lines()[-20:])


@contextlib.contextmanager
def agent(
    netns: str,
    workdir: Path,
    extra: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
    name: str = "agent",
) -> Iterator[Agent]:
    """`khan agent` reading `netns` from the host's namespace, serving on loopback, stderr (JSON) to a file."""
    inventory = workdir / "inventory.json"
    inventory.write_text(EMPTY_INVENTORY)
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", "node1", "--netns", netns]
    argv += ["--listen", f"127.0.0.1:{port}", "--interval", "1", "--log-format", "json", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, preexec_fn=preexec_fn)
    running = Agent(process, port, log)
    try:
        wait_ready(running)
        yield running
    finally:
        stop_process(process)


def wait_ready(running: Agent, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert running.process.poll() is None, running.tail()
        with contextlib.suppress(OSError):
            if get(running.base + "/readyz")[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"agent not ready in time\n{running.tail()}")


def wait_for_series(running: Agent, at_least: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    found = 0
    while time.monotonic() < deadline:
        _, text = get(running.base + "/metrics")
        found = sum(1 for line in text.splitlines() if line.startswith("khan_connection{"))
        if found >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"{found} khan_connection series after {seconds} s, wanted {at_least}\n{running.tail()}")


def probe(port: int, path: str = "/healthz", timeout: float = 2.0) -> float:
    """Seconds for one request on a new connection, as the kubelet makes it; `timeout` if it did not answer."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            return timeout
    except OSError:
        return timeout
    finally:
        connection.close()
    return time.perf_counter() - started


def time_probes(port: int, seconds: float, every: float = 0.05) -> list[float]:
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times.append(probe(port))
        time.sleep(every)
    return times


# One scraper: GETs a path (/metrics) back to back until its deadline, then prints each scrape's seconds and bytes.
SCRAPER = """
import http.client, json, sys, time
port, seconds, encoding, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
results = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Accept-Encoding": encoding} if encoding else {})
        response = connection.getresponse()
        body = response.read()
        results.append((response.status, time.perf_counter() - started, len(body)))
    except OSError as exc:
        results.append((0, time.perf_counter() - started, 0))
    finally:
        connection.close()
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Scrape:
    status: int
    seconds: float
    size: int


@contextlib.contextmanager
def scrapers(
    port: int, count: int, seconds: float, encoding: str = "", path: str = "/metrics"
) -> Iterator[list[Scrape]]:
    """`count` scraper processes for `seconds`; the list is filled with their scrapes when the block ends."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRAPER, str(port), str(seconds), encoding, path],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        for _ in range(count)
    ]
    done: list[Scrape] = []
    try:
        yield done
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 60)
            done.extend(Scrape(*row) for row in json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def open_idle_connections(port: int, count: int, seconds: float = 15) -> list[socket.socket]:
    """`count` connections that send nothing, opened all at once (the kernel retries a SYN the full accept queue
    dropped, for all of them in parallel); returns once each has connected, or been refused or reset."""
    sockets = []
    with selectors.DefaultSelector() as selector:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + seconds
        pending = count
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                selector.unregister(key.fileobj)
                pending -= 1
    assert pending == 0, f"{pending} of {count} connections neither connected nor failed in {seconds} s"
    return sockets


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
