"""What judging idle connections adds to counting a dump by key, at its worst, no kernel needed.

A poll counts runs of same-shaped entries by raw key in C-level calls (runs.py); idle judging makes the key's
remaining timeout part of what is counted, so the Python work after the dump runs once per distinct (key,
timeout) instead of once per distinct key. The worst case is a table of few pairs whose entries all differ in
their remaining timeout: TCP ESTABLISHED entries with timeouts spread over the whole 432,000 s here. Two tables of
--entries entries (recorded TCP messages re-encoded, in ~32 KiB buffers as the kernel batches a dump):
- few pairs: 100 raw keys (10 sources x 10 ports), every entry's timeout random in 1..432,000;
- every peer new: every entry its own raw key (the timeout adds no distinct key there).
Each is counted both ways, alternately: untimed (RunCounter and add_to, as before idle judging) and timed
(RunCounter(timed=True) and DumpCounts with rules, --idle-after 600, a tenth of the entries idle). Reported: the
median CPU ms per table of --runs runs, and the ratio; the kernel's dump itself, which a real poll waits for
too, is not in either.

    .venv/bin/python benchmarks/idle_tally.py [--entries 262144] [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from khan.attribution.connections import count_flows
from khan.attribution.dump_counts import DumpCounts
from khan.attribution.idle import IdleRules
from khan.attribution.raw_keys import RAW_FLOW_FIELDS, RawKey
from khan.conntrack.decode import Flow, Template, decode_chunk
from khan.conntrack.runs import RunCounter
from khan.conntrack.timeouts import StateTimeouts
from tests.support.ct_messages import encoded

BATCH_BYTES = 32 * 1024
ESTABLISHED = 3
TIMEOUTS = StateTimeouts(432_000, 300, 300, 10, 30, 120)
SERVER = socket.inet_aton("10.96.0.20")


def table(entries: int, distinct_keys: bool, seed: int = 5) -> list[bytes]:
    """Dump buffers of TCP ESTABLISHED entries, a tenth of them idle at least 600 s."""
    rng = random.Random(seed)
    buffers: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for i in range(entries):
        source = (10 << 24 | 1 << 16 | (i if distinct_keys else i % 10)).to_bytes(4, "big")
        port = 5432 if distinct_keys else 5000 + i // 10 % 10
        remaining = rng.randrange(1, 431_400) if i % 10 == 0 else rng.randrange(431_401, 432_001)
        flow = Flow(2, 6, source, SERVER, 30000 + i % 30000, port, SERVER, source, port, 30000 + i % 30000,
                    14, ESTABLISHED, i + 1, 0, 0, 3, 200, 2, 300, remaining)  # fmt: skip
        message = encoded(flow)
        if size + len(message) > BATCH_BYTES:
            buffers.append(b"".join(current))
            current, size = [], 0
        current.append(message)
        size += len(message)
    return [*buffers, b"".join(current)]


def untimed(buffers: list[bytes]) -> int:
    runs = RunCounter(RAW_FLOW_FIELDS)
    templates: dict[int, list[Template]] = {}
    counts: dict[RawKey, int] = {}
    for buf in buffers:
        flows: list[Flow] = []
        decode_chunk(buf, len(buf), flows, templates, take_run=runs.take)
        count_flows((flows,), counts)
    return sum(runs.add_to(counts).values())


def timed(buffers: list[bytes]) -> int:
    runs = RunCounter(RAW_FLOW_FIELDS, timed=True)
    templates: dict[int, list[Template]] = {}
    counts = DumpCounts(IdleRules(TIMEOUTS, 600))
    for buf in buffers:
        flows: list[Flow] = []
        decode_chunk(buf, len(buf), flows, templates, take_run=runs.take)
        counts.add_flows(flows)
    counts.add_runs(runs)
    if sum(counts.idle.values()) * 10 < len(buffers):  # a tenth of the entries: far more than one per buffer
        raise SystemExit("the idle entries were not found")
    return sum(counts.connections.values())


def cpu_ms(work: Callable[[list[bytes]], int], buffers: list[bytes], entries: int) -> float:
    started = time.process_time()
    if work(buffers) != entries:
        raise SystemExit(f"{work.__name__} did not count every entry")
    return (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=262_144)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{args.entries} TCP ESTABLISHED entries; median CPU ms of {args.runs} alternating runs")
    print("| table | untimed (before) | timed, idle judged | ratio |")
    print("| --- | --- | --- | --- |")
    for name, distinct in (("few pairs (100 keys), every timeout distinct", False), ("every peer new", True)):
        buffers = table(args.entries, distinct)
        before: list[float] = []
        after: list[float] = []
        for run in range(args.runs):
            for work in (untimed, timed) if run % 2 else (timed, untimed):
                (before if work is untimed else after).append(cpu_ms(work, buffers, args.entries))
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {name} | {b:.0f} ms | {a:.0f} ms | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
