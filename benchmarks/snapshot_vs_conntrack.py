"""`make bench`: khan snapshot against `conntrack -L` on a full table, in a namespace made for the purpose.

Fills a private network namespace's table with 262,144 UDP flows (many client ports, a few dozen destinations,
a few ports), then alternates `conntrack -L > /dev/null` and `khan snapshot > /dev/null` inside it and reports
medians of wall time and peak RSS, checks that khan counted every entry, and times the agent's own poll
(imports excluded). Run as root. Everything it makes is removed on exit.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from khan.inventory.index import build_inventory
from khan.lab import FILL_DESTINATIONS, FILL_PORTS, FILL_SOURCES, fill_udp_flows, table_namespace
from khan.poll import poll

FLOWS = 262_144
RUNS = 7
NETNS = f"khanbench{os.getpid()}"
RESULTS = Path(__file__).parent / "results"


def in_ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def table_count() -> int:
    out = subprocess.run(in_ns("conntrack", "-C"), check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def timed(argv: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS in KiB, stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_maxrss, out


def counted(exposition: bytes) -> int:
    total = 0.0
    for line in exposition.decode().splitlines():
        if line.startswith("khan_connection{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    khan = [sys.executable, "-m", "khan", "snapshot", "--node-name", "bench", "--log-level", "error"]
    with table_namespace(NETNS):
        started = time.perf_counter()
        fill_udp_flows(NETNS, FLOWS)
        fill_seconds = time.perf_counter() - started
        entries = table_count()
        conntrack_runs, khan_runs = [], []
        khan_counted = set()
        for _ in range(RUNS):
            wall, rss, _ = timed(in_ns("sh", "-c", "exec conntrack -L > /dev/null 2>&1"))
            conntrack_runs.append((wall, rss))
            wall, rss, out = timed(in_ns(*khan))
            khan_runs.append((wall, rss))
            khan_counted.add(counted(out))
        inventory = build_inventory(())
        polls = [poll(inventory, "bench", NETNS).duration_seconds for _ in range(RUNS)]

    ct_wall = statistics.median(w for w, _ in conntrack_runs)
    khan_wall = statistics.median(w for w, _ in khan_runs)
    ct_rss = statistics.median(r for _, r in conntrack_runs) / 1024
    khan_rss = statistics.median(r for _, r in khan_runs) / 1024
    lines = [
        f"table: {entries} UDP entries ({len(FILL_SOURCES)} clients x many ports -> {len(FILL_DESTINATIONS)}"
        f" destinations x {len(FILL_PORTS)} ports), filled in {fill_seconds:.1f} s; medians of {RUNS} alternating runs",
        "",
        "| command | wall (median) | peak RSS (median) |",
        "| --- | --- | --- |",
        f"| `conntrack -L > /dev/null` | {ct_wall:.2f} s | {ct_rss:.0f} MB |",
        f"| `khan snapshot > /dev/null` | {khan_wall:.2f} s | {khan_rss:.0f} MB |",
        f"| agent poll (in process, imports excluded) | {statistics.median(polls):.2f} s | |",
        "",
        f"khan / conntrack -L wall: {khan_wall / ct_wall:.2f}x (target <= 1.5x)",
        f"connections counted by khan: {sorted(khan_counted)} (table size {entries})",
    ]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(report + "\n")
    if khan_counted != {entries}:
        raise SystemExit("khan did not count every entry of the table")


if __name__ == "__main__":
    main()
