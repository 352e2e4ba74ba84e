"""Memory bounded by the limits, not by traffic: the real agent, under --max-series 100, sees 10,000 new outside
peers a poll for sixteen polls (1,600 times its limit). What it holds stays within the bound its self-metrics
report, its RSS stops growing after warm-up, and the counters still add up to exactly what was sent (less only
the last bytes of entries khan itself reports as vanished)."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.demo.namespaces import private_prefix
from tests.support.exposition import samples, value
from tests.support.kube_agent import RunningAgent
from tests.support.lab_agent import file_agent, total
from tests.support.outside_peers import SOURCE, send_to_peers
from tests.support.table_fill import table_namespace

MAX_SERIES = 100
PEERS_PER_POLL = 10_000
POLLS = 16
WARM_UP = 8  # polls before the allocator's arenas reach their working size
UDP_IP_HEADERS = 28  # IPv4 and UDP headers around each one-byte datagram
FAMILIES = ("khan_connections_opened_total", "khan_flow_bytes_total")
GROUPS = 10  # overflow series per family here: a handful of (type, transport, seen_from, direction) groups
# Without the bounds the agent grew by 7-10 MiB a poll here (three label sets per peer, held for 15 minutes), some
# 60 MiB over the polls after warm-up. With them the last polls stay within a few MiB of warm-up's highest.
RSS_GROWTH_ALLOWED_MIB = 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def polled_after(agent: RunningAgent, moment: float) -> str:
    """The metrics once a poll that began after `moment` (unix time) has finished."""
    found: list[str] = []

    def done() -> bool:
        found[:] = [agent.metrics()]
        finished = value(found[0], "khan_last_successful_poll_timestamp_seconds")
        return finished - value(found[0], "khan_poll_duration_seconds") > moment

    agent.wait_until(done, 20, "a poll after the peers were sent")
    return found[0]


def counted(agent: RunningAgent, sent: int) -> str:
    """The metrics once every peer sent so far is counted, with its bytes: exactly, never more. The one exception
    is khan's own: an entry it reports as vanished (gone with no DESTROY seen) has its last bytes uncounted. Under
    load that happened here about once in ten runs, without a dropped event; it is the tracker's, not the bounds'."""
    found: list[str] = []
    datagram = UDP_IP_HEADERS + 1

    def exact() -> bool:
        found[:] = [agent.metrics()]
        opened = total(found[0], "khan_connections_opened_total", transport="udp")
        missing = sent * datagram - total(found[0], "khan_flow_bytes_total", transport="udp", direction="sent")
        assert opened <= sent, opened
        assert missing >= 0, missing
        vanished = value(found[0], "khan_tracked_entries_vanished_total")
        return opened == sent and missing % datagram == 0 and missing <= vanished * datagram

    try:
        agent.wait_until(exact, 20, f"{sent} peers counted with their bytes")
    except AssertionError:
        text = found[0]
        opened = total(text, "khan_connections_opened_total", transport="udp")
        moved = total(text, "khan_flow_bytes_total", transport="udp", direction="sent")
        losses = ("khan_events_dropped_total", "khan_tracked_entries_vanished_total")
        raise AssertionError((sent, opened, moved, {name: value(text, name) for name in losses})) from None
    return found[0]


@pytest.fixture
def churning(tmp_path: Path) -> Iterator[tuple[str, RunningAgent]]:
    inventory = tmp_path / "empty.yaml"
    inventory.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with table_namespace(private_prefix("khanmem") + "b") as netns:
        subprocess.run(["ip", "-n", netns, "route", "add", "local", "10.0.0.0/8", "dev", "lo"], check=True)
        for sysctl in ("nf_conntrack_acct=1", "nf_conntrack_udp_timeout=10"):  # dumped at least once, then gone
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"net.netfilter.{sysctl}"], check=True)
        with file_agent(netns, inventory, "node1", tmp_path, extra=["--max-series", str(MAX_SERIES)]) as agent:
            agent.wait_ready()
            yield netns, agent


def test_peer_churn_keeps_memory_bounded_and_totals_exact(churning: tuple[str, RunningAgent]) -> None:
    netns, agent = churning
    rss: list[float] = []
    text = ""
    for round_ in range(POLLS):
        send_to_peers(netns, round_ * PEERS_PER_POLL, PEERS_PER_POLL)
        polled_after(agent, time.time())
        sent = (round_ + 1) * PEERS_PER_POLL
        # A NEW that reaches khan while a dump is copying its entry leaves the bytes to the next look: a poll more.
        text = counted(agent, sent)
        rss.append(rss_mib(agent.process.pid))
        for family in FAMILIES:
            held = samples(text, "khan_series_label_sets")[(("family", family),)]
            assert held <= 2 * MAX_SERIES + GROUPS, (round_, family, held)
            assert len(samples(text, family)) <= MAX_SERIES, (round_, family)
        assert value(text, "khan_tracked_entries") <= value(text, "khan_conntrack_table_entries") + PEERS_PER_POLL
        # Every peer has its own series or is folded (remembered or not): the gauge still says how many.
        folded = samples(text, "khan_series_folded")[(("family", "khan_connections_opened_total"),)]
        own = [labels for labels in samples(text, "khan_connections_opened_total") if ("src_ip", SOURCE) in labels]
        assert folded + len(own) >= sent
    forgotten = samples(text, "khan_series_forgotten_total")
    assert forgotten[(("family", "khan_connections_opened_total"),)] > (POLLS - 1) * PEERS_PER_POLL
    # The median of the last polls against the highest of the last three of warm-up: one poll's spike (a scrape
    # during a poll) is not growth.
    assert statistics.median(rss[-4:]) - max(rss[WARM_UP - 3 : WARM_UP]) < RSS_GROWTH_ALLOWED_MIB, rss
