"""The poll that evicts expired entries publishes their final bytes, exactly as the kernel counted them.

A dump meets entries that have expired but that the kernel's garbage collector has not reaped yet (RST-closed
connections in CLOSE, FIN-closed ones in TIME_WAIT): it kills them instead of listing them, and their DESTROY
events, which carry their final counters, go out while the dump runs, interleaved with its replies. Here the
whole agent path runs in-process on the real kernel (khan's event reader, tracker and `poll()`), with the dump
started just after the entries' timeout so that the collector has had no time to run first, and a table of
20,000 live entries around them so that the evictions fall between many reply batches. An independent
`conntrack -E` recording says what the kernel reported for each connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from khan.attribution import schema
from khan.conntrack.events import EventReader
from khan.counting.counters import CounterView, Counting
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.topology import CLUSTER_IP, SERVICE_BACKEND, SERVICE_PORT
from khan.inventory.from_file import load_inventory
from khan.inventory.index import Inventory
from khan.polling.poll import poll
from khan.polling.result import PollResult
from tests.support.conntrack_recorder import Record, Recording, recording
from tests.support.netns import run_in
from tests.support.scripted_traffic import ScriptedServer, close, connect, exchange, scripted_server
from tests.support.table_fill import fill_udp_flows

POD_A = "10.244.1.10"
EXPIRY_SECONDS = 1  # node1's CLOSE and TIME_WAIT timeouts in this test
FILLER_ENTRIES = 20_000  # live UDP entries, so that a dump takes many reply batches
ROUNDS = 4
CONNECTIONS = 150  # per round: even ones end with a RST, odd ones with FINs


@dataclass
class Agent:
    """What `khan agent` assembles, without HTTP: the counting state, the event reader, the inventory."""

    lab: Lab
    counting: Counting
    events: EventReader
    inventory: Inventory

    def poll(self) -> PollResult:
        result = poll(
            self.inventory,
            "node1",
            self.lab.netns("node1"),
            counting=self.counting,
            max_series=10_000,
            catch_up_events=self.events.catch_up,
        )
        if self.events.openings:  # as the agent does once the baseline is taken: DESTROY events alone from then on
            self.counting.tracker.stop_openings(self.events.stop_openings)
        return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.create(prefix=private_prefix("khanevict")) as lab:
        timeouts = [
            f"net.netfilter.nf_conntrack_tcp_timeout_{state}={EXPIRY_SECONDS}" for state in ("close", "time_wait")
        ]
        run_in(lab, "node1", ["sysctl", "-qw", *timeouts, "net.netfilter.nf_conntrack_udp_timeout=600"], check=True)
        for cidr in ("10.76.0.0/16", "10.77.0.0/16"):  # fill_udp_flows' addresses, local to node1 only
            run_in(lab, "node1", ["ip", "route", "add", "local", cidr, "dev", "lo"], check=True)
        fill_udp_flows(lab.netns("node1"), FILLER_ENTRIES)
        yield lab


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[Agent]:
    inventory_file = tmp_path / "inventory.yaml"
    write_inventory(inventory_file)
    counting = Counting(max_series=10_000, ttl_seconds=900)
    reader = EventReader(counting.tracker.observe_events, counting.tracker, lab.netns("node1"))
    reader.start()
    try:
        yield Agent(lab, counting, reader, load_inventory(inventory_file))
    finally:
        reader.stop()


def connection(lab: Lab, request: int, reply: int, reset: bool, source_port: int = 0) -> int:
    """One connection from pod-a to the ClusterIP, one exchange, closed; returns its source port."""
    client = connect(lab, "pod-a", (CLUSTER_IP, SERVICE_PORT), source_port)
    port: int = client.getsockname()[1]
    exchange(client, request, reply)
    close(client, reset)
    return port


def table_count(lab: Lab) -> int:
    """Entries in node1's table, expired ones included: reading the count, unlike a dump, evicts nothing."""
    with lab.inside("node1"), open("/proc/sys/net/netfilter/nf_conntrack_count") as count:
        return int(count.read())


def to_service(record: Record) -> bool:
    return record.src == POD_A and record.dst == CLUSTER_IP and record.dport == SERVICE_PORT and record.proto == 6


def served(counters: CounterView) -> tuple[int, int, int]:
    """khan's counters of pod-a -> the ClusterIP service: (opened, bytes sent, bytes received)."""
    assert counters.flow_bytes is not None, "accounting is on in the lab's nodes"
    pair = {"src_ip": POD_A, "dst_ip": CLUSTER_IP, "dst_port": str(SERVICE_PORT), "transport": "tcp"}
    opened = sum(value for labels, value in counters.opened.items() if _matches(schema.PAIR_LABELS, labels, pair))
    sent = received = 0
    for labels, value in counters.flow_bytes.items():
        if _matches(schema.FLOW_BYTES_LABELS, labels, pair):
            if labels[-1] == "sent":
                sent += value
            else:
                received += value
    return opened, sent, received


def _matches(names: tuple[str, ...], labels: tuple[str, ...], wanted: dict[str, str]) -> bool:
    return all(labels[names.index(name)] == value for name, value in wanted.items())


def witnessed(witness: Recording) -> tuple[int, int, int]:
    """The kernel's own figures for the same pair: NEW events, and the final counters of the DESTROY events."""
    records = witness.records(to_service)
    destroyed = [record for record in records if record.kind == "DESTROY"]
    opened = sum(1 for record in records if record.kind == "NEW")
    return opened, sum(record.sent for record in destroyed), sum(record.received for record in destroyed)


def wait_finished(backend: ScriptedServer, count: int) -> None:
    deadline = time.monotonic() + 10
    while backend.finished < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.finished == count, backend.errors


def test_the_poll_that_evicts_expired_entries_publishes_their_exact_bytes(lab: Lab, agent: Agent) -> None:
    evicting_rounds = 0
    with scripted_server(lab, "pod-b", SERVICE_BACKEND) as backend, recording(lab.netns("node1")) as witness:
        agent.poll()  # the baseline
        for round_ in range(ROUNDS):
            round_began = time.time()
            ports = set()
            for index in range(CONNECTIONS):
                request, reply = 100 + 37 * index + round_, 50 + 211 * index
                ports.add(connection(lab, request, reply, reset=index % 2 == 0))
            wait_finished(backend, (round_ + 1) * CONNECTIONS)
            time.sleep(EXPIRY_SECONDS + 0.3)  # expired, and (on a quiet table) not reaped yet

            before = table_count(lab)
            polled_at = time.time()
            result = agent.poll()
            evicted = before - table_count(lab)

            def destroyed(record: Record, ports: set[int] = ports, began: float = round_began) -> bool:
                return to_service(record) and record.kind == "DESTROY" and record.sport in ports and record.at > began

            ends = witness.wait_for(destroyed, CONNECTIONS)  # every DESTROY the kernel sent for this round
            # Still in the table when the poll began, gone after it, every DESTROY sent during it: the interleaving
            # of DESTROYs with the dump's replies that this test is about (whether the dump itself or the collector,
            # in the same instant, removed them).
            if evicted >= CONNECTIONS and all(record.at >= polled_at for record in ends):
                evicting_rounds += 1

            assert result.counters is not None
            assert served(result.counters) == witnessed(witness), f"round {round_}, {evicted} evicted meanwhile"
            assert result.counters.vanished == 0
            assert result.counters.possibly_missed == 0
        assert backend.errors == []
    assert agent.events.stats.dropped == 0
    # The eviction path is the point of this test: the collector beat the dump in at most one round.
    assert evicting_rounds >= ROUNDS - 1, f"the dump evicted the expired entries in {evicting_rounds}/{ROUNDS} rounds"


REUSING_PORTS = (24001, 24002, 24003, 24004)  # below the ephemeral range: no other client takes them
POLLS_DURING_REUSE = 20


def reuse_port(lab: Lab, port: int, stop: threading.Event, done: list[int]) -> None:
    """The same 5-tuple again and again: each SYN finds the previous connection's CLOSE entry, which the kernel
    destroys before it makes the new one, often in the same memory and so with the same conntrack id."""
    index = 0
    while not stop.is_set():
        connection(lab, 64 + index % 500, 1000 + 13 * (index % 700), reset=True, source_port=port)
        index += 1
    done.append(index)


def test_a_reused_id_read_by_a_dump_between_its_destroy_and_new_counts_both_connections_exactly(
    lab: Lab, agent: Agent
) -> None:
    stop_polls, stop_clients = threading.Event(), threading.Event()
    polls = [0]
    done: list[int] = []

    def poll_all_along() -> None:  # dumps back to back, so that some read a new connection the instant it opens
        while not stop_polls.is_set():
            agent.poll()
            polls[0] += 1

    with scripted_server(lab, "pod-b", SERVICE_BACKEND) as backend, recording(lab.netns("node1")) as witness:
        agent.poll()  # the baseline
        poller = threading.Thread(target=poll_all_along)
        clients = [threading.Thread(target=reuse_port, args=(lab, port, stop_clients, done)) for port in REUSING_PORTS]
        poller.start()
        try:
            for client in clients:
                client.start()
            deadline = time.monotonic() + 30
            while polls[0] < POLLS_DURING_REUSE and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop_clients.set()
            for client in clients:
                client.join()
            stop_polls.set()
            poller.join()
        total = sum(done)
        time.sleep(EXPIRY_SECONDS + 0.3)
        result = agent.poll()  # evicts the last connection of each port
        witness.wait_for(lambda record: to_service(record) and record.kind == "DESTROY", total)
        assert result.counters is not None
        assert served(result.counters) == witnessed(witness)
        assert served(result.counters)[0] == total
        assert result.counters.vanished == 0
        assert backend.errors == []
    assert polls[0] >= POLLS_DURING_REUSE
    # The race needs ids that come back; the kernel gives them most of the time.
    records = witness.records(to_service)
    destroyed_ids = {(record.sport, record.ct_id) for record in records if record.kind == "DESTROY"}
    reused = sum(1 for record in records if record.kind == "NEW" and (record.sport, record.ct_id) in destroyed_ids)
    assert reused > total // 4, f"only {reused} of {total} connections took their predecessor's id"
