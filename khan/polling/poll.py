"""One poll: dump the table (retrying an interrupted dump), count, read table statistics, attribute.

This is the only place that joins the conntrack reader to attribution and counting; it runs in a worker thread
in the agent and directly in `khan snapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from operator import add

import structlog

from khan.attribution.connections import attribute_connections, attribute_longest
from khan.attribution.dump_counts import DumpCounts
from khan.attribution.idle import IdleRules
from khan.attribution.labels import DEFAULT_POLICY, Attributor, LabelPolicy
from khan.attribution.limits import bounded, declared_limits
from khan.attribution.raw_keys import RAW_FLOW_FIELDS
from khan.attribution.schema import Labels, pair_of
from khan.conntrack.namespace import entered
from khan.conntrack.netlink import DumpStats, dump_flows
from khan.conntrack.runs import RunCounter
from khan.conntrack.table import TableStats, read_table_stats
from khan.conntrack.timeouts import read_state_timeouts
from khan.counting.counters import CONNECTION_FOLDING, OPENED_FOLDING, Counting
from khan.counting.folding import fold_as, fold_gauge
from khan.inventory.index import Inventory
from khan.polling.result import IdleView, PollResult

log = structlog.get_logger("khan.poll")


def poll(
    inventory: Inventory,
    node: str,
    netns: str | None = None,
    attempts: int = 3,
    table_stats: bool = True,
    policy: LabelPolicy = DEFAULT_POLICY,
    counting: Counting | None = None,
    max_series: int | None = None,
    catch_up_events: Callable[[], None] | None = None,
    idle_after: int | None = None,
) -> PollResult:
    """Read the table of `netns` (None: this thread's namespace). Raises ConntrackError or NamespaceError.

    With `counting`, every entry also goes through its tracker and the counters are brought up to date.
    `catch_up_events` (the event reader's, when subscribed) hands the tracker every event queued so far.
    With `idle_after`, connections idle that long are counted too, by the namespace's own state timeouts."""
    started = time.perf_counter()
    with entered(netns):
        # Read where the table is, at every poll: each namespace has its own, and a changed one counts at once.
        rules = None if idle_after is None else IdleRules(read_state_timeouts(), idle_after)
        counts, stats = _dump_consistent(attempts, counting, catch_up_events, rules)
        table = _table_stats() if table_stats else None
    names = Attributor(inventory, node, policy)
    connections = attribute_connections(counts.connections, names)
    idle = idle_view(counts, names)
    del counts  # one key per entry when every peer is new: let it go before the counters add theirs
    served, folded = (connections, 0) if max_series is None else fold_gauge(connections, max_series, CONNECTION_FOLDING)
    if idle is not None and folded:
        idle = fold_idle_as(idle, served)
    counters = None
    if counting is not None:
        accounting = table.accounting if table is not None else None
        limit = table.limit if table is not None else None
        counters = counting.update(names, connections, accounting, time.monotonic(), folded, limit)
    limits, limits_dropped = bounded(declared_limits(inventory, policy), max_series)
    return PollResult(
        node=node,
        connections=PollResult.freeze(served),
        entries=stats.entries,
        malformed=stats.malformed,
        interrupted=stats.interrupted,
        duration_seconds=time.perf_counter() - started,
        finished_at=time.time(),
        table=table,
        inventory_objects=dict(inventory.objects),
        inventory_addresses=len(inventory),
        counters=counters,
        limits=PollResult.freeze(limits),
        limits_invalid=inventory.invalid_limits,
        limits_dropped=limits_dropped,
        idle=idle,
        connections_folded=folded,
    )


def idle_view(counts: DumpCounts, names: Attributor) -> IdleView | None:
    """The idle connections of a dump's counts, attributed; None where none were judged."""
    if counts.rules is None:
        return None
    return IdleView(
        after_seconds=counts.rules.idle_after,
        timeouts=counts.rules.timeouts,
        connections=PollResult.freeze(attribute_connections(counts.idle, names)),
        longest=PollResult.freeze(attribute_longest(counts.longest_idle, names)),
        unknown=dict(counts.unknown),
    )


def fold_idle_as(idle: IdleView, served: Mapping[Labels, int]) -> IdleView:
    """The idle families folded as khan_connection was (`served`, its series once folded): a label set, or a pair,
    keeps its own series there only where it kept one here, so idle / total is right for every series, overflow
    included."""
    kept_pairs = {pair_of(labels) for labels in served}
    connections, folded = fold_as(idle.connections, served.keys(), CONNECTION_FOLDING, add)
    longest, longest_folded = fold_as(idle.longest, kept_pairs, OPENED_FOLDING, max)
    return replace(
        idle,
        connections=PollResult.freeze(connections),
        longest=PollResult.freeze(longest),
        folded=folded,
        longest_folded=longest_folded,
    )


def _dump_consistent(
    attempts: int, counting: Counting | None, catch_up_events: Callable[[], None] | None, rules: IdleRules | None
) -> tuple[DumpCounts, DumpStats]:
    """Dumps until one is consistent (the kernel did not flag NLM_F_DUMP_INTR), `attempts` at most; the last is
    kept either way."""
    for attempt in range(1, max(1, attempts) + 1):
        stats = DumpStats()
        counts = _dump(stats, counting, catch_up_events, DumpCounts(rules))
        if not stats.interrupted:
            break
        log.debug("dump_interrupted", attempt=attempt, entries=stats.entries)
    return counts, stats


def _dump(
    stats: DumpStats, counting: Counting | None, catch_up_events: Callable[[], None] | None, counts: DumpCounts
) -> DumpCounts:
    timed = counts.rules is not None
    if counting is None:  # no tracker: runs are only counted by key
        runs = RunCounter(RAW_FLOW_FIELDS, timed=timed)
        for batch in dump_flows(stats, runs, prefetch=True):
            counts.add_flows(batch)
        counts.add_runs(runs)
        return counts
    tracker = counting.tracker
    catch_up = catch_up_events or _nothing
    now = int(time.time())
    runs = RunCounter(RAW_FLOW_FIELDS, track=partial(tracker.observe_run, now=now), timed=timed)
    catch_up()  # what happened before the dump is applied as plain events
    tracker.begin_dump()
    complete = False
    try:
        # The kernel queued the events of every change a batch shows before it built the batch: applying them
        # before it is decoded keeps the kernel's order (a reused id's DESTROY before the dump's look at the new
        # entry); events newer than the batch that come in with them are the tracker's to handle.
        for batch in dump_flows(stats, runs, prefetch=True, before_batch=catch_up):
            counts.add_flows(batch)
            tracker.observe_dump(batch, now)
        complete = not stats.interrupted
    finally:
        # The entries this dump evicted (expired, not yet reaped) sent their DESTROY while it ran: their final
        # bytes belong to this poll. A failed or interrupted dump keeps every record it did not reach.
        catch_up()
        tracker.end_dump(complete)
    counts.add_runs(runs)
    return counts


def _nothing() -> None:
    return None


def _table_stats() -> TableStats | None:
    try:
        return read_table_stats()
    except OSError as exc:  # statistics are a bonus: a kernel without them must not fail the poll
        log.warning("table_stats_unavailable", error=str(exc))
        return None
