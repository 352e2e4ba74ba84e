"""The exposition of a fixed poll, byte for byte against a golden file that `promtool check metrics` accepts."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from khan.conntrack.events import EventStats
from khan.conntrack.table import TableStats
from khan.conntrack.timeouts import StateTimeouts
from khan.counting.counters import CounterView
from khan.inventory.watch_stats import WatchStats
from khan.metrics import families
from khan.metrics.collector import KhanCollector
from khan.metrics.watch_collector import WatchCollector
from khan.polling.result import Health, IdleView, PollResult
from tests.support import paths, tools

GOLDEN = paths.FIXTURES / "golden" / "exposition.prom"

POLL = PollResult(
    node="node1",
    connections={
        (
            "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
            "service", "10.96.0.10", "shop", "web-svc", "web-svc", "80", "tcp", "ESTABLISHED", "source",
        ): 3,
        (
            "node1", "external", "192.0.2.10", "", "", "",
            "pod", "10.244.1.10", "shop", "web", "pod-a", "8080", "tcp", "TIME_WAIT", "ingress",
        ): 1,
        (
            "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
            "pod", "10.244.2.10", "shop", "db", "pod-c", "53", "udp", "ASSURED", "source",
        ): 2,
    },
    entries=6,
    malformed=1,
    interrupted=False,
    duration_seconds=0.25,
    finished_at=1795000000.0,
    table=TableStats(entries=6, limit=262144, accounting=True, events={"drop": 0, "early_drop": 2}),
    inventory_objects={"Node": 2, "Pod": 3, "Service": 1},
    inventory_addresses=9,
    counters=CounterView(
        opened={
            (
                "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
                "service", "10.96.0.10", "shop", "web-svc", "web-svc", "80", "tcp", "source",
            ): 7,
        },
        flow_bytes={
            (
                "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
                "service", "10.96.0.10", "shop", "web-svc", "web-svc", "80", "tcp", "source", direction,
            ): amount
            for direction, amount in (("sent", 1200), ("received", 56000))
        },
        transactions={
            ("node1", "shop", "web-svc", "10.244.1.11", "shop", "pod-b", "8080", "tcp"): 7,
        },
        folded={"connection": 0, "opened": 0},
        expired={"opened": 2},
        tracked=6,
        vanished=1,
        recovered=30,  # of the 40 events dropped: 30 NEW, 1 DESTROY, 9 unexplained -> at most 5 connections missed
        possibly_missed=5,
        label_sets={"opened": 3, "flow_bytes": 2},
        forgotten={"opened": 1, "flow_bytes": 0},
    ),
    limits={("service", "shop", "web-svc"): 300, ("pod", "shop", "pod-c"): 100},
    limits_invalid=1,
    idle=IdleView(
        after_seconds=600,
        timeouts=StateTimeouts(432000, 300, 300, 10, 30, 120),
        connections={
            (
                "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
                "service", "10.96.0.10", "shop", "web-svc", "web-svc", "80", "tcp", "ESTABLISHED", "source",
            ): 2,
        },
        longest={
            (
                "node1", "pod", "10.244.1.10", "shop", "web", "pod-a",
                "service", "10.96.0.10", "shop", "web-svc", "web-svc", "80", "tcp", "source",
            ): 5400,
        },
        unknown={"above_state_timeout": 0, "short_timer": 1},
    ),
)  # fmt: skip
EVENTS = EventStats(new=9, destroy=3, malformed=0, overflows=1, dropped=40)
HEALTH = Health(last=POLL, polls=4, poll_errors=1, entries_read=20, entries_malformed=1, dumps_interrupted=0)


def watch_stats() -> WatchStats:
    """An API inventory a while after start: pods and nodes synced, services refused once, then listed."""
    now = [1000.0]
    stats = WatchStats(("pods", "services", "nodes"), clock=lambda: now[0])
    for resource in ("pods", "services", "nodes"):
        stats[resource].synced = True
        stats[resource].watch_starts["initial"] += 1
    stats.heard("pods")
    stats.heard("nodes")
    stats["pods"].watch_starts["expired"] += 1
    stats["services"].errors["watch", "403"] += 2
    stats["services"].watch_starts["error"] += 2
    now[0] = 1012.5
    stats.heard("services")
    now[0] = 1030.0
    return stats


def render(health: Health, watches: WatchStats | None = None, events: EventStats | None = EVENTS) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KhanCollector(lambda: health, lambda: events, 30.0))
    if watches is not None:
        registry.register(WatchCollector(watches, lambda: 4))
    return generate_latest(registry).decode().replace(platform.python_version(), "PYTHON_VERSION")


def test_exposition_matches_golden() -> None:
    assert render(HEALTH, watch_stats()) == GOLDEN.read_text()


def test_a_file_inventory_serves_no_watch_families() -> None:
    assert "khan_inventory_watch_starts_total" not in render(HEALTH)
    assert "khan_inventory_watch_starts_total" in render(HEALTH, watch_stats())


def test_golden_passes_promtool(tmp_path: Path) -> None:
    promtool = tools.require_tool("promtool", "prometheus")
    exposition = render(HEALTH, watch_stats()).replace("PYTHON_VERSION", platform.python_version())
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""  # no lint warnings either


def test_every_declared_metric_is_served() -> None:
    text = render(HEALTH, watch_stats())
    for spec in families.ALL:
        exposed = spec.name + "_info" if spec.kind == "info" else spec.name
        assert f"# TYPE {exposed} " in text or f"# TYPE {exposed.removesuffix('_total')} " in text, spec.name


def test_before_the_first_poll_only_totals_and_build_info_are_served() -> None:
    text = render(Health(), events=None)
    assert "khan_polls_total 0.0" in text
    assert "khan_build_info{" in text
    assert "khan_connection{" not in text
    assert "khan_last_successful_poll_timestamp_seconds" not in text


def test_malformed_events_count_with_malformed_dump_entries() -> None:
    malformed_events = EventStats(new=9, destroy=3, malformed=2, overflows=1, dropped=40)
    assert "khan_entries_malformed_total 3.0" in render(HEALTH, events=malformed_events)
    assert "khan_entries_malformed_total 1.0" in render(HEALTH, events=None)
