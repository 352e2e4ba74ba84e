"""khan's counters against the kernel's own account, per pair, over every way a connection ends.

`khan agent` reads node1's table (polling twice a second, events on) while an independent `conntrack -E`
recording of the same table writes down every NEW and DESTROY event with the kernel's final counters. The
traffic mixes FIN and RST closes to a ClusterIP service, the same 5-tuple reused at once (so ids come back),
long transfers that span many polls, one-way and answered UDP that expires, and a connection held open across
agent restarts. Timeouts are short, so most closed entries expire and the agent's own dumps evict them, and
20,000 live entries make every dump long enough to overlap the traffic. At the end of each agent's life every
test connection but the held one is gone from the table; summed over the lives, opened connections and bytes
per pair equal the kernel's, and nothing was lost, vanished or missed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.topology import CLUSTER_IP, SERVICE_BACKEND, SERVICE_PORT
from tests.support.conntrack_recorder import Record, Recording, recording
from tests.support.exposition import samples
from tests.support.host_agent import host_agent, total
from tests.support.netns import run_in
from tests.support.scripted_traffic import close, connect, exchange, scripted_server, udp_datagram, udp_responder
from tests.support.table_fill import fill_udp_flows

POD_A, POD_C = "10.244.1.10", "10.244.2.10"
TCP_C, UDP_C = (POD_C, 5440), (POD_C, 5441)  # pod-c sits behind node1's route to node2: node1 tracks them
TARGETS = {(CLUSTER_IP, SERVICE_PORT, 6), (*TCP_C, 6), (*UDP_C, 17)}
SHORT_TIMEOUTS = {
    **{f"tcp_timeout_{state}": 1 for state in ("close", "time_wait", "fin_wait", "close_wait", "last_ack")},
    "udp_timeout": 2,
    "udp_timeout_stream": 3,
}
FILLER_ENTRIES = 20_000
INTERVAL = "0.5"
LIVES = 4  # the agent starts afresh for each
TRAFFIC_SECONDS = 4.0
REUSED_PORT = 24000  # and the next: below the ephemeral range, so that no other client takes them
Pair = tuple[str, str, str, str]  # src_ip, dst_ip, dst_port, transport
TRANSPORTS = {6: "tcp", 17: "udp"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    inventory = tmp_path_factory.mktemp("differential") / "inventory.yaml"
    write_inventory(inventory)
    with Lab.create(prefix=private_prefix("khandiff")) as lab:
        sysctls = [f"net.netfilter.nf_conntrack_{name}={value}" for name, value in SHORT_TIMEOUTS.items()]
        run_in(lab, "node1", ["sysctl", "-qw", *sysctls], check=True)
        for cidr in ("10.76.0.0/16", "10.77.0.0/16"):  # the filler's addresses, local to node1 only
            run_in(lab, "node1", ["ip", "route", "add", "local", cidr, "dev", "lo"], check=True)
        # The filler is unreplied UDP: it must outlive the test, not expire with the test's UDP.
        run_in(lab, "node1", ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"], check=True)
        fill_udp_flows(lab.netns("node1"), FILLER_ENTRIES)
        run_in(
            lab,
            "node1",
            ["sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={SHORT_TIMEOUTS['udp_timeout']}"],
            check=True,
        )
        yield lab, inventory


# -- khan's account -----------------------------------------------------------------------------------------------


def counters(text: str) -> dict[str, Counter[Pair]]:
    """khan's opened, sent and received counters of the test's pairs."""
    found: dict[str, Counter[Pair]] = {"opened": Counter(), "sent": Counter(), "received": Counter()}
    for name, kind in (("khan_connections_opened_total", None), ("khan_flow_bytes_total", "direction")):
        for labels, value in samples(text, name).items():
            series = dict(labels)
            pair = (series["src_ip"], series["dst_ip"], series["dst_port"], series["transport"])
            if pair[0] == POD_A and any(pair[1:] == (ip, str(port), TRANSPORTS[proto]) for ip, port, proto in TARGETS):
                found["opened" if kind is None else series[kind]][pair] += int(value)
    return found


# -- the kernel's account ------------------------------------------------------------------------------------------


def ours(record: Record) -> bool:
    return record.src == POD_A and (record.dst, record.dport, record.proto) in TARGETS


def kernel_counters(witness: Recording) -> dict[str, Counter[Pair]]:
    found: dict[str, Counter[Pair]] = {"opened": Counter(), "sent": Counter(), "received": Counter()}
    for record in witness.records(ours):
        pair = (record.src, record.dst, str(record.dport), TRANSPORTS[record.proto])
        if record.kind == "NEW":
            found["opened"][pair] += 1
        else:
            found["sent"][pair] += record.sent
            found["received"][pair] += record.received
    return found


def open_entries(witness: Recording) -> Counter[tuple[int, str, int, str, int, int]]:
    """Entries with a NEW and no DESTROY yet, by tuple and id (a reused id opens again after its DESTROY)."""
    balance: Counter[tuple[int, str, int, str, int, int]] = Counter()
    for record in witness.records(ours):
        key = (record.proto, record.src, record.sport, record.dst, record.dport, record.ct_id)
        balance[key] += 1 if record.kind == "NEW" else -1
    return +balance


# -- traffic -------------------------------------------------------------------------------------------------------


def repeat(stop: threading.Event, errors: list[str], step: Callable[[int], None]) -> threading.Thread:
    def run() -> None:
        index = 0
        while not stop.is_set():
            try:
                step(index)
            except Exception as exc:  # reported by the test, which must not hang on a dead worker
                errors.append(repr(exc))
                return
            index += 1

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def traffic(lab: Lab, life: int, stop: threading.Event, errors: list[str]) -> list[threading.Thread]:
    service = (CLUSTER_IP, SERVICE_PORT)

    def short(index: int, reset: bool) -> None:
        client = connect(lab, "pod-a", service)
        exchange(client, 80 + index % 300, 400 + 17 * (index % 200))
        close(client, reset)
        time.sleep(0.01)

    def reused(port: int, index: int) -> None:
        client = connect(lab, "pod-a", service, source_port=port)
        exchange(client, 64 + index % 100, 900 + index % 50)
        close(client, reset=True)

    def long_transfer(index: int) -> None:
        client = connect(lab, "pod-a", TCP_C)
        for round_ in range(10):  # about 2 s: four polls
            exchange(client, 20_000 + 1_000 * round_, 60_000 - 3_000 * round_)
            if stop.wait(0.2):
                break
        close(client, reset=index % 2 == 1)

    def udp(index: int) -> None:
        udp_datagram(lab, "pod-a", UDP_C, 40 + index % 100, None if index % 3 else 300 + index % 50)
        time.sleep(0.02)

    steps: list[Callable[[int], None]] = [
        lambda index: short(index, reset=False),
        lambda index: short(index, reset=True),
        lambda index: reused(REUSED_PORT + 10 * life, index),
        lambda index: reused(REUSED_PORT + 1 + 10 * life, index),
        long_transfer,
        udp,
    ]
    return [repeat(stop, errors, step) for step in steps]


def test_opened_and_bytes_per_pair_equal_the_kernels_across_closes_reuse_and_restarts(
    lab: tuple[Lab, Path], tmp_path: Path
) -> None:
    lab_, inventory = lab
    khan_total: dict[str, Counter[Pair]] = {"opened": Counter(), "sent": Counter(), "received": Counter()}
    errors: list[str] = []
    with (
        scripted_server(lab_, "pod-b", SERVICE_BACKEND) as service_backend,
        scripted_server(lab_, "pod-c", TCP_C) as pod_c,
        udp_responder(lab_, "pod-c", UDP_C),
        recording(lab_.netns("node1")) as witness,
        contextlib.ExitStack() as held,
    ):
        kept = None  # a connection held open from one life to the next
        for life in range(LIVES):
            with host_agent(lab_, inventory, tmp_path / f"agent-{life}.log", INTERVAL) as agent:
                if kept is not None:  # idle across the restart; now it moves again under the new agent
                    exchange(kept, 5_000 + life, 7_000 + life)
                stop = threading.Event()
                workers = traffic(lab_, life, stop, errors)
                try:
                    if life < LIVES - 1:
                        if kept is not None:
                            close(kept, reset=life % 2 == 0)
                        kept = held.enter_context(connect(lab_, "pod-a", TCP_C))
                        exchange(kept, 3_000 + life, 11_000 + life)
                    elif kept is not None:
                        close(kept, reset=False)
                        kept = None
                    stop.wait(TRAFFIC_SECONDS)
                finally:
                    stop.set()
                    for worker in workers:
                        worker.join()
                assert errors == []

                # Every test entry but the held one expires; the agent's dumps (or the collector) remove it.
                deadline = time.monotonic() + 20
                while len(open_entries(witness)) > (kept is not None) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(open_entries(witness)) == (kept is not None), open_entries(witness)
                text = agent.poll_after(time.time() + 0.1)
            for kind, values in counters(text).items():
                khan_total[kind].update(values)
            for name in ("khan_tracked_entries_vanished_total", "khan_events_dropped_total"):
                assert total(text, name) == 0, (life, name)
            assert total(text, "khan_connections_possibly_missed_total") == 0
        assert service_backend.errors == pod_c.errors == []
        kernel = kernel_counters(witness)
    assert sum(kernel["opened"].values()) > 1000
    for kind in ("opened", "sent", "received"):
        assert khan_total[kind] == kernel[kind], kind
