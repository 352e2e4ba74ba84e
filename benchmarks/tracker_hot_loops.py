"""The tracker's hot loops, no kernel needed: CPU nanoseconds per dump entry (observe_dump over a table of
262,144 Flows built in Python, in batches of 256 like a netlink buffer) and per event (observe_events), and
tracemalloc bytes per tracked record.

Dump cases: `baseline` (the first dump: every entry new, not counted), `idle` (the same table again: most of a
real one), `grew` (every entry's counters grew), `churn` (an all-new table: every entry counted as opened).
Events: a NEW for each of 262,144 fresh connections, then their DESTROYs with bytes. The counters are in no order,
so the /flows floor turns most entries away, as on a real table.

With `--before PATH` (an older khan/counting/tracker.py, e.g. from `git worktree add /tmp/base 9f542cb`) both run
in this process, alternating which goes first each round (the second of a pair runs a few % slower), with the
garbage collector paused while timed; medians over the rounds.

    .venv/bin/python benchmarks/tracker_hot_loops.py [--rounds 7] [--before /tmp/base/khan/counting/tracker.py]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from khan.conntrack.decode import Flow  # noqa: E402
from khan.counting import tracker as current  # noqa: E402

ENTRIES = 262_144
BATCH = 256
CASES = ("baseline", "idle", "grew", "churn", "events")
Batches = list[list[Any]]


def flows(first_id: int, sent: int, received: int) -> list[Flow]:
    """ENTRIES flows from id `first_id`: 5,000 clients, 300 destinations, a third of them translated."""
    out = []
    for i in range(ENTRIES):
        j = i + first_id
        src = (10 << 24 | j % 5000).to_bytes(4, "big")
        dst = (172 << 24 | 16 << 16 | j % 300).to_bytes(4, "big")
        endpoint = (172 << 24 | 17 << 16 | j % 300).to_bytes(4, "big") if j % 3 == 0 else dst
        size = 3 * (i * 40503 % 65536)  # in no order
        sport, dport = 30000 + j % 30000, 80 + j % 50
        out.append(Flow(2, 6, src, dst, sport, dport, endpoint, src, dport, sport,
                        0, 3, j, 0, 0, 1, sent + size, 1, received + size))  # fmt: skip
    return out


def batches(items: list[Any]) -> Batches:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def dump(tracker: Any, table: Batches, now: int) -> None:
    tracker.begin_dump()
    for batch in table:
        tracker.observe_dump(batch, now)
    tracker.end_dump(True)


def cpu_ns(run: Callable[[], None], count: int) -> float:
    gc.collect()
    gc.disable()
    started = time.process_time()
    run()
    elapsed = time.process_time() - started
    gc.enable()
    return elapsed / count * 1e9


def one_round(module: ModuleType, tables: dict[str, Batches]) -> dict[str, float]:
    tracker = module.ConnectionTracker()
    result = {
        "baseline": cpu_ns(lambda: dump(tracker, tables["first"], 1), ENTRIES),
        "idle": cpu_ns(lambda: dump(tracker, tables["first"], 2), ENTRIES),
        "grew": cpu_ns(lambda: dump(tracker, tables["grown"], 3), ENTRIES),
        "churn": cpu_ns(lambda: dump(tracker, tables["other"], 4), ENTRIES),
    }
    tracker.take()

    def feed() -> None:
        for batch in tables["events"]:
            tracker.observe_events(batch, 5)

    result["events"] = cpu_ns(feed, 2 * ENTRIES)
    return result


def bytes_per_record(module: ModuleType, tables: dict[str, Batches]) -> float:
    """A table whose counters grew: every record its own tuple (the flows' ints are shared, built before)."""
    gc.collect()
    tracemalloc.start()
    tracker = module.ConnectionTracker()
    dump(tracker, tables["first"], 1)
    dump(tracker, tables["grown"], 3)
    tracker.take()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return held / len(tracker)


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracker_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", help="an older khan/counting/tracker.py to compare with")
    args = parser.parse_args()
    versions = {"after": current} if args.before is None else {"before": load(args.before), "after": current}
    closed = flows(2 * ENTRIES, 700, 900)
    tables = {
        "first": batches(flows(0, 1000, 2000)),
        "grown": batches(flows(0, 5000, 9000)),
        "other": batches(flows(ENTRIES, 1000, 2000)),
        "events": batches([(True, flow) for flow in flows(2 * ENTRIES, 0, 0)] + [(False, f) for f in closed]),
    }
    figures: dict[str, dict[str, list[float]]] = {name: {case: [] for case in CASES} for name in versions}
    for round_ in range(args.rounds):
        order = list(versions.items())
        for name, module in order if round_ % 2 == 0 else reversed(order):
            for case, value in one_round(module, tables).items():
                figures[name][case].append(value)
    memory = {name: bytes_per_record(module, tables) for name, module in versions.items()}
    print(f"# {ENTRIES:,} entries, {args.rounds} rounds; CPU ns per entry (events: per event), medians")
    print("| case | " + " | ".join(versions) + (" | change |" if len(versions) == 2 else " |"))
    print("| --- | " + " | ".join("---:" for _ in versions) + (" | ---: |" if len(versions) == 2 else " |"))
    rows = {case: [statistics.median(figures[name][case]) for name in versions] for case in CASES}
    rows["bytes per record"] = list(memory.values())
    for case, values in rows.items():
        change = f" | {(values[-1] - values[0]) / values[0] * 100:+.1f} %" if len(values) == 2 else ""
        print(f"| {case} | " + " | ".join(f"{value:.1f}" for value in values) + change + " |")


if __name__ == "__main__":
    main()
