"""One poll: dump the table (retrying an interrupted dump), count, read table statistics, attribute.

This is the only place that joins the conntrack reader to the snapshot code; it runs in a worker thread in the
agent and directly in `khan snapshot`.
"""

from __future__ import annotations

import time

import structlog

from khan.conntrack.namespace import entered
from khan.conntrack.netlink import DumpStats, dump_flows
from khan.conntrack.table import TableStats, read_table_stats
from khan.inventory.index import Inventory
from khan.metrics.outside import OutsidePolicy
from khan.metrics.snapshot import KEEP_OUTSIDE, PollResult, RawKey, attribute, count_flows

log = structlog.get_logger("khan.poll")


def poll(
    inventory: Inventory,
    node: str,
    netns: str | None = None,
    attempts: int = 3,
    table_stats: bool = True,
    outside: OutsidePolicy = KEEP_OUTSIDE,
) -> PollResult:
    """Read the table of `netns` (None: this thread's namespace). Raises ConntrackError or NamespaceError."""
    started = time.perf_counter()
    counts: dict[RawKey, int] = {}
    stats = DumpStats()
    table: TableStats | None = None
    with entered(netns):
        for attempt in range(1, attempts + 1):
            stats = DumpStats()
            counts = count_flows(dump_flows(stats))
            if not stats.interrupted:
                break
            log.debug("dump_interrupted", attempt=attempt, entries=stats.entries)
        if table_stats:
            table = _table_stats()
    connections = attribute(counts, inventory, node, outside)
    return PollResult(
        node=node,
        connections=PollResult.freeze(connections),
        entries=stats.entries,
        malformed=stats.malformed,
        interrupted=stats.interrupted,
        duration_seconds=time.perf_counter() - started,
        finished_at=time.time(),
        table=table,
        inventory_objects=dict(inventory.objects),
        inventory_addresses=len(inventory),
    )


def _table_stats() -> TableStats | None:
    try:
        return read_table_stats()
    except OSError as exc:  # statistics are a bonus: a kernel without them must not fail the poll
        log.warning("table_stats_unavailable", error=str(exc))
        return None
