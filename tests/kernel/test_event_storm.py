"""An event storm that overflows the agent's event socket: the losses are counted (ENOBUFS and the kernel's own
drop count), a dump resynchronises the state, every connection of the storm is still counted exactly once, no
counter ever goes backwards, and the agent stays up and ready."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support.exposition import samples
from tests.support.kube_agent import RunningAgent
from tests.support.lab_agent import file_agent, total
from tests.support.lab_sockets import connect, holding_server

SHORT, LONG = 300, 20
STORM_PORT = 8090
# The smallest buffer the flag takes (the kernel doubles it): a handful of events fit, the storm's hundreds do not.
TINY_BUFFER = "4096"


@pytest.fixture
def stormed(tmp_path: Path) -> Iterator[tuple[Lab, RunningAgent]]:
    inventory = tmp_path / "inventory.yaml"
    with Lab.create(prefix=private_prefix("khanstorm")) as lab:
        start_demo_traffic(lab)
        write_inventory(inventory)
        extra = ["--event-buffer", TINY_BUFFER]
        with file_agent(lab.netns("node1"), inventory, "node1", tmp_path, interval=30, extra=extra) as agent:
            agent.wait_ready()
            yield lab, agent


def counters(agent: RunningAgent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = agent.metrics()
    except OSError:  # the agent is paused: its scrape times out, and there is nothing to compare
        return {}
    found = {}
    for name in ("khan_connections_opened_total", "khan_flow_bytes_total", "khan_service_transactions_total"):
        for labels, value in samples(text, name).items():
            found[name, labels] = value
    return found


def test_lost_events_are_counted_and_a_dump_recovers_every_connection(stormed: tuple[Lab, RunningAgent]) -> None:
    lab, agent = stormed
    watching = threading.Event()
    regressions: list[str] = []
    scrapes = [0]

    def watch() -> None:  # scrape all along: no served counter may ever go down
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while not watching.is_set():
            for key, value in counters(agent).items():
                if value < seen.get(key, 0.0):
                    regressions.append(f"{key}: {seen[key]} -> {value}")
                seen[key] = value
            scrapes[0] += 1
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        agent.pause()  # the socket fills while the agent reads nothing
        with (
            holding_server(lab, "pod-b", "10.244.1.11", STORM_PORT),
            holding_server(lab, "pod-c", "10.244.2.10", STORM_PORT),
        ):
            held = []
            for _ in range(SHORT):
                connect(lab, "pod-a", "10.244.1.11", STORM_PORT).close()
            for _ in range(LONG):
                held.append(connect(lab, "pod-a", "10.244.2.10", STORM_PORT))  # left open
            agent.resume()

            def recovered() -> bool:
                text = agent.metrics()
                short = total(text, "khan_connections_opened_total", dst_name="pod-b", dst_port=str(STORM_PORT))
                long = total(text, "khan_connections_opened_total", dst_name="pod-c", dst_port=str(STORM_PORT))
                return (short, long) == (SHORT, LONG)

            agent.wait_until(recovered, 15, f"{SHORT} + {LONG} storm connections counted after the resync")
            for sock in held:
                sock.close()
    finally:
        watching.set()
        watcher.join()
    text = agent.metrics()
    assert total(text, "khan_events_overflows_total") >= 1
    assert total(text, "khan_events_dropped_total") > 0
    assert any(line.get("event") == "resync_after_event_loss" for line in agent.log())
    assert scrapes[0] > 5
    assert regressions == []
    assert agent.get("/readyz")[0] == 200
    time.sleep(1)  # counted exactly once: nothing more arrives for the storm later
    assert total(agent.metrics(), "khan_connections_opened_total", dst_name="pod-b", dst_port=str(STORM_PORT)) == SHORT
