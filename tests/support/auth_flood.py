"""Many clients sending credentials the agent does not know, each on a new connection as fast as it is
answered, while a legitimate scraper whose credentials are cached keeps scraping and the kubelet keeps probing."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from tests.support.protected_agent import Agent

CLIENTS = 60


@dataclass
class Flood:
    answers: collections.Counter[int] = field(default_factory=collections.Counter)  # status (0: no answer)
    busy_headers: dict[str, list[str]] = field(default_factory=dict)  # one 503's headers
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def flooding(agent: Agent, credentials: Callable[[int, int], Mapping[str, str]]) -> Iterator[Flood]:
    """CLIENTS threads; client n's i-th request carries `credentials(n, i)`."""
    flood = Flood()
    stop = threading.Event()

    def client(n: int) -> None:
        sent = 0
        while not stop.is_set():
            try:
                status, headers, _ = agent.request("/metrics", headers=credentials(n, sent), timeout=15)
            except OSError:
                status, headers = 0, {}
            with flood.lock:
                flood.answers[status] += 1
                if status == 503 and not flood.busy_headers:
                    flood.busy_headers = headers
            sent += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # every client has a request in flight
        yield flood
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


@dataclass
class Scrapes:
    statuses: list[int]
    slowest_scrape: float
    slowest_probe: float


def scrape_and_probe(agent: Agent, headers: Mapping[str, str], count: int = 20, interval: float = 0.25) -> Scrapes:
    statuses, scrape_times, probe_times = [], [], []
    for _ in range(count):
        started = time.monotonic()
        statuses.append(_status(agent, "/metrics", headers))
        scrape_times.append(time.monotonic() - started)
        started = time.monotonic()
        assert _status(agent, "/healthz", {}) == 200
        probe_times.append(time.monotonic() - started)
        time.sleep(interval)
    return Scrapes(statuses, max(scrape_times), max(probe_times))


def _status(agent: Agent, path: str, headers: Mapping[str, str]) -> int:
    """One retry for a connection this process could not make: with the flood's 60 threads in this same
    process making ~2,000 TLS connections a second, a connect or handshake of ours now and then fails on our
    side (the agent logs nothing of it), as a real scraper's would be retried at its next interval."""
    for attempt in range(2):
        try:
            return agent.status(path, headers=headers, timeout=15)
        except OSError:
            if attempt:
                return 0
    return 0
