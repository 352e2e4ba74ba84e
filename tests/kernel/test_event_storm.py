"""An event storm that overflows the agent's event socket: the losses are counted (ENOBUFS and the kernel's own
drop count), a dump resynchronises the state, every connection of the storm is still counted exactly once, no
counter ever goes backwards, and the agent stays up and ready.

With its baseline taken the agent hears DESTROY events alone, so the storm is one of DESTROYs: connections a dump
has counted are reset while the agent is paused, their entries expire (node1's CLOSE timeout is 1 s) and another
program's dump evicts them, hundreds of DESTROYs into a socket that holds a handful. Connections opened meanwhile
send nothing (no NEW events); a dump finds them."""

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
from tests.support.netns import run_in
from tests.support.scripted_traffic import close

SHORT, LONG = 300, 20
STORM_PORT = 8090
# The smallest buffer the flag takes (the kernel doubles it): a handful of events fit, the storm's hundreds do not.
TINY_BUFFER = "4096"
INTERVAL = 5  # a dump counts the connections to reset; the resync dump comes at once after the loss either way


@pytest.fixture
def stormed(tmp_path: Path) -> Iterator[tuple[Lab, RunningAgent]]:
    inventory = tmp_path / "inventory.yaml"
    with Lab.create(prefix=private_prefix("khanstorm")) as lab:
        start_demo_traffic(lab)
        write_inventory(inventory)
        run_in(lab, "node1", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_close=1"], check=True)
        extra = ["--event-buffer", TINY_BUFFER]
        with file_agent(lab.netns("node1"), inventory, "node1", tmp_path, interval=INTERVAL, extra=extra) as agent:
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

    def opened(dst_name: str) -> float:
        return total(agent.metrics(), "khan_connections_opened_total", dst_name=dst_name, dst_port=str(STORM_PORT))

    watcher = threading.Thread(target=watch)
    watcher.start()
    held = []
    try:
        with (
            holding_server(lab, "pod-b", "10.244.1.11", STORM_PORT),
            holding_server(lab, "pod-c", "10.244.2.10", STORM_PORT),
        ):
            short = [connect(lab, "pod-a", "10.244.1.11", STORM_PORT) for _ in range(SHORT)]
            agent.wait_until(lambda: opened("pod-b") == SHORT, 3 * INTERVAL, f"{SHORT} connections found by a dump")
            before = agent.metrics()
            agent.pause()  # the socket fills while the agent reads nothing
            for sock in short:
                close(sock, reset=True)
            for _ in range(LONG):
                held.append(connect(lab, "pod-a", "10.244.2.10", STORM_PORT))  # left open
            time.sleep(1.3)  # the reset entries expire; a dump by another program evicts them: the DESTROYs go out
            run_in(lab, "node1", ["conntrack", "-L"], capture_output=True, check=True)
            agent.resume()

            def recovered() -> bool:
                text = agent.metrics()
                # Each reset connection either sent a DESTROY the agent read, or is an entry the dumps after the
                # loss confirm gone without one (other lab traffic only adds to both).
                settled = sum(
                    total(text, name, **labels) - total(before, name, **labels)
                    for name, labels in (
                        ("khan_events_total", {"type": "destroy"}),
                        ("khan_tracked_entries_vanished_total", {}),
                    )
                )
                return (opened("pod-b"), opened("pod-c")) == (SHORT, LONG) and settled >= SHORT

            what = f"{SHORT} + {LONG} storm connections counted, the {SHORT} reset ones settled, after the resync"
            agent.wait_until(recovered, 20, what)
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
