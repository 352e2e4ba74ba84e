"""`make bench`: khan snapshot against `conntrack -L` on a full table, in a namespace made for the purpose.

Fills a private network namespace's table with 262,144 UDP flows (many client ports, a few dozen destinations,
a few ports), then alternates `conntrack -L > /dev/null` and `khan snapshot > /dev/null` inside it and reports
medians of wall time and peak RSS, checks that khan counted every entry, and times the agent's own poll
(imports excluded): plain, and with counters and aggregation on as the agent runs them (a Counting tracker,
--aggregate workload, --max-series 10000; the first such poll is the tracker's baseline, later ones are timed),
and that poll again with events subscribed, as the agent polls by default: it hands over the queued events
before each batch of the dump (a quiet table: what the catch-up itself costs), timed alternately with the first.
Also reports what the tracker's state of a full table costs in memory (RSS growth, and tracemalloc of one fresh
tracker). Run as root. Everything it makes is removed on exit.

`khan snapshot` also runs with `--idle-after 1`, where every entry of the table is idle (the idle tallies' worst
case). With `--baseline TREE` (another checkout of khan, such as `git worktree add /tmp/base <commit>`), that
tree's `khan snapshot` is timed too, alternately with the others on the same table: a change's cost measured in
one run.

khan's own modules are byte-compiled first, as installing khan (the image's `pip install .`) compiles them: the
editable install of `make deps`, under PYTHONDONTWRITEBYTECODE, would otherwise compile them from source on
every run, about 0.1 s that an installed khan never spends.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.table_fill

import khan
from benchmarks.proc_stats import status_mib
from khan.attribution.labels import LabelPolicy
from khan.conntrack.events import EventReader
from khan.counting.counters import Counting
from khan.inventory.index import Inventory, build_inventory
from khan.polling.poll import poll
from tests.support.table_fill import FILL_DESTINATIONS, FILL_PORTS, FILL_SOURCES, fill_udp_flows, table_namespace

FLOWS = 262_144
RUNS = 7
NETNS = f"khanbench{os.getpid()}"
RESULTS = Path(__file__).parent / "results"
MAX_SERIES = 10_000  # the agent's defaults
TTL_SECONDS = 900
WORKLOAD = LabelPolicy(aggregate="workload")


def in_ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def table_count() -> int:
    out = subprocess.run(in_ns("conntrack", "-C"), check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS in KiB, stdout. `python -m khan` runs the khan of `cwd` (the first of sys.path)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=cwd)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_maxrss, out


def counted(exposition: bytes, family: str = "khan_connection") -> int:
    total = 0.0
    for line in exposition.decode().splitlines():
        if line.startswith(family + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def idle(exposition: bytes) -> int:
    return counted(exposition, "khan_connection_idle")


@dataclass
class CountingPolls:
    baseline_seconds: float  # the first poll: every entry is new to the tracker and becomes its baseline
    steady_seconds: list[float]
    tracked: int  # live entries in the tracker after the last poll
    opened: int  # connections counted as opened in steady state: the table does not change, so 0
    series: int  # khan_connection series served (aggregated)
    rss_growth_mb: float  # VmRSS after the polls, tracker alive, minus before it existed
    maxrss_growth_mb: float  # the process's peak RSS, after minus before
    held_mb: float  # tracemalloc, a fresh tracker after its baseline poll: what its state keeps
    peak_mb: float  # tracemalloc peak during that poll


def poll_counting(
    inventory: Inventory, counting: Counting, catch_up: Callable[[], None] | None = None
) -> tuple[float, int, int]:
    """One agent poll with counters on: (seconds, connections opened in the counters, series served)."""
    result = poll(
        inventory, "bench", NETNS, policy=WORKLOAD, counting=counting, max_series=MAX_SERIES, catch_up_events=catch_up
    )
    opened = sum(result.counters.opened.values()) if result.counters is not None else 0
    return result.duration_seconds, opened, len(result.connections)


def counting_polls(inventory: Inventory) -> CountingPolls:
    gc.collect()
    rss_before = status_mib("self")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counting = Counting(max_series=MAX_SERIES, ttl_seconds=TTL_SECONDS)
    baseline, _, _ = poll_counting(inventory, counting)
    steady = []
    opened = series = 0
    for _ in range(RUNS):
        seconds, opened, series = poll_counting(inventory, counting)
        steady.append(seconds)
    gc.collect()
    rss_growth = status_mib("self") - rss_before
    maxrss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - maxrss_before
    tracked = len(counting.tracker)
    del counting
    gc.collect()
    # tracemalloc slows allocation-heavy code several times over: a separate, untimed poll of a fresh tracker.
    tracemalloc.start()
    fresh = Counting(max_series=MAX_SERIES, ttl_seconds=TTL_SECONDS)
    start, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    poll_counting(inventory, fresh)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del fresh
    return CountingPolls(
        baseline_seconds=baseline,
        steady_seconds=steady,
        tracked=tracked,
        opened=opened,
        series=series,
        rss_growth_mb=rss_growth,
        maxrss_growth_mb=maxrss_growth,
        held_mb=(held - start) / 1e6,
        peak_mb=(peak - start) / 1e6,
    )


def events_polls(inventory: Inventory) -> tuple[list[float], list[float]]:
    """Steady polls with counters on, without and with events (and their catch-up), alternately."""
    plain = Counting(max_series=MAX_SERIES, ttl_seconds=TTL_SECONDS)
    subscribed = Counting(max_series=MAX_SERIES, ttl_seconds=TTL_SECONDS)
    reader = EventReader(subscribed.tracker.observe_events, subscribed.tracker, NETNS)
    reader.start()
    try:
        poll_counting(inventory, plain)
        poll_counting(inventory, subscribed, reader.catch_up)
        without, with_events = [], []
        for run in range(RUNS):  # which goes first alternates too: the second of two polls runs on a warmer cache
            if run % 2:
                with_events.append(poll_counting(inventory, subscribed, reader.catch_up)[0])
            without.append(poll_counting(inventory, plain)[0])
            if not run % 2:
                with_events.append(poll_counting(inventory, subscribed, reader.catch_up)[0])
    finally:
        reader.stop()
    return without, with_events


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of khan whose snapshot is timed alongside")
    baseline = parser.parse_args().baseline
    here = Path(khan.__file__).parent.parent
    for tree in (here, baseline) if baseline else (here,):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "khan")], check=True)
    snapshot = [sys.executable, "-m", "khan", "snapshot", "--node-name", "bench", "--log-level", "error"]
    with table_namespace(NETNS):
        started = time.perf_counter()
        fill_udp_flows(NETNS, FLOWS)
        fill_seconds = time.perf_counter() - started
        entries = table_count()
        conntrack_runs, khan_runs, all_idle_runs, baseline_runs = [], [], [], []
        khan_counted = set()
        for _ in range(RUNS):
            wall, rss, _ = timed(in_ns("sh", "-c", "exec conntrack -L > /dev/null 2>&1"))
            conntrack_runs.append((wall, rss))
            wall, rss, out = timed(in_ns(*snapshot), cwd=here)
            khan_runs.append((wall, rss))
            khan_counted.add(counted(out))
            wall, rss, out = timed(in_ns(*snapshot, "--idle-after", "1"), cwd=here)
            all_idle_runs.append((wall, rss))
            idle_counted = idle(out)
            if baseline:
                wall, rss, _ = timed(in_ns(*snapshot), cwd=baseline)
                baseline_runs.append((wall, rss))
        inventory = build_inventory(())
        polls = [poll(inventory, "bench", NETNS).duration_seconds for _ in range(RUNS)]
        counted_polls = counting_polls(inventory)
        without_events, with_events = events_polls(inventory)

    ct_wall = statistics.median(w for w, _ in conntrack_runs)
    khan_wall = statistics.median(w for w, _ in khan_runs)
    ct_rss = statistics.median(r for _, r in conntrack_runs) / 1024
    khan_rss = statistics.median(r for _, r in khan_runs) / 1024
    all_idle_wall = statistics.median(w for w, _ in all_idle_runs)
    all_idle_rss = statistics.median(r for _, r in all_idle_runs) / 1024
    poll_wall = statistics.median(polls)
    counting_wall = statistics.median(counted_polls.steady_seconds)
    lines = [
        f"table: {entries} UDP entries ({len(FILL_SOURCES)} clients x many ports -> {len(FILL_DESTINATIONS)}"
        f" destinations x {len(FILL_PORTS)} ports), filled in {fill_seconds:.1f} s; medians of {RUNS} alternating runs",
        "",
        "| command | wall (median) | peak RSS (median) |",
        "| --- | --- | --- |",
        f"| `conntrack -L > /dev/null` | {ct_wall:.2f} s | {ct_rss:.0f} MB |",
        f"| `khan snapshot > /dev/null` | {khan_wall:.2f} s | {khan_rss:.0f} MB |",
        f"| `khan snapshot --idle-after 1 > /dev/null` (every entry idle: {idle_counted} counted)"
        f" | {all_idle_wall:.2f} s | {all_idle_rss:.0f} MB |",
        *(
            [
                f"| `khan snapshot` of {baseline} | {statistics.median(w for w, _ in baseline_runs):.2f} s"
                f" | {statistics.median(r for _, r in baseline_runs) / 1024:.0f} MB |"
            ]
            if baseline
            else []
        ),
        f"| agent poll (in process, imports excluded) | {poll_wall:.2f} s | |",
        f"| agent poll, counters on (--aggregate workload, --max-series {MAX_SERIES}), steady state"
        f" | {counting_wall:.2f} s | |",
        f"| agent poll, counters on, first poll (the tracker's baseline; one run)"
        f" | {counted_polls.baseline_seconds:.2f} s | |",
        "",
        f"khan / conntrack -L wall: {khan_wall / ct_wall:.2f}x (target <= 1.0x, aim 0.9x);"
        f" every entry idle: {all_idle_wall / ct_wall:.2f}x"
        + (
            f"; the baseline's: {statistics.median(w for w, _ in baseline_runs) / ct_wall:.2f}x"
            f" (this tree / the baseline: {khan_wall / statistics.median(w for w, _ in baseline_runs):.3f}x)"
            if baseline
            else ""
        ),
        f"connections counted by khan: {sorted(khan_counted)} (table size {entries})",
        f"agent poll with counters on / conntrack -L wall: {counting_wall / ct_wall:.2f}x (in process, imports"
        f" excluded; target <= 1.0x, aim 0.75x); / plain agent poll: {counting_wall / poll_wall:.2f}x;"
        f" steady-state polls: {', '.join(f'{p:.2f}' for p in counted_polls.steady_seconds)} s",
        f"counters on: tracker holds {counted_polls.tracked} live entries; {counted_polls.opened} counted as opened"
        f" after the baseline (expected 0: the table does not change); {counted_polls.series} khan_connection series",
        f"events on (catch-up before every batch of the dump): {statistics.median(with_events):.3f} s against"
        f" {statistics.median(without_events):.3f} s without, alternating, medians of {RUNS}"
        f" ({statistics.median(with_events) / statistics.median(without_events):.3f}x)",
        f"tracker memory: agent RSS +{counted_polls.rss_growth_mb:.0f} MB once it tracks the full table (peak RSS"
        f" +{counted_polls.maxrss_growth_mb:.0f} MB); tracemalloc of a fresh tracker: {counted_polls.held_mb:.1f} MB"
        f" held after its first poll, {counted_polls.peak_mb:.1f} MB peak during it",
    ]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(report + "\n")
    if khan_counted != {entries}:
        raise SystemExit("khan did not count every entry of the table")
    if idle_counted != entries:
        raise SystemExit(f"--idle-after 1 counted {idle_counted} idle entries of {entries}")
    if counted_polls.tracked != entries or counted_polls.opened != 0:
        raise SystemExit("the tracker did not hold the table as it is")


if __name__ == "__main__":
    main()
