"""Pure: the /flows list keeps the K heaviest entries of a dump, heaviest first, whatever order the dump reads
them in; once trimmed, its floor turns most lighter entries away."""

from __future__ import annotations

import random

from khan.conntrack.decode import Flow
from khan.counting.heaviest import HeaviestFlows


def entry(ct_id: int, total: int) -> Flow:
    return Flow(2, 6, b"\n\0\0\1", b"\n\0\0\2", 40000, 80, b"\n\0\0\2", b"\n\0\0\1", 80, 40000,
                0, 3, ct_id, 0, 0, 1, total, 0, 0)  # fmt: skip


def run_dump(heaviest: HeaviestFlows, flows: list[Flow]) -> int:
    """Offers as the tracker's dump loop does: only entries above the floor. Returns how many were offered."""
    heaviest.begin()
    offered = 0
    floor = heaviest.floor
    for flow in flows:
        if flow.orig_bytes > floor:
            heaviest.candidates.append((flow.orig_bytes, flow))
            offered += 1
            if len(heaviest.candidates) >= heaviest.crowded:
                floor = heaviest.trim()
    heaviest.finish(lambda flow: flow.id * 10)
    return offered


def test_the_heaviest_are_kept_heaviest_first_across_many_trims() -> None:
    flows = [entry(i, i * 7) for i in range(1, 5001)]
    random.Random(13).shuffle(flows)
    heaviest = HeaviestFlows(kept=25)
    offered = run_dump(heaviest, flows)
    assert [heavy.total_bytes for heavy in heaviest.current] == [i * 7 for i in range(5000, 4975, -1)]
    assert [heavy.first_seen for heavy in heaviest.current] == [i * 10 for i in range(5000, 4975, -1)]
    assert offered < 1000  # of 5,000


def test_a_dump_smaller_than_the_kept_number_lists_every_entry_and_the_next_dump_replaces_it() -> None:
    heaviest = HeaviestFlows(kept=10)
    run_dump(heaviest, [entry(1, 5), entry(2, 50), entry(3, 0)])
    assert [heavy.flow.id for heavy in heaviest.current] == [2, 1, 3]
    run_dump(heaviest, [entry(4, 1)])
    assert [heavy.flow.id for heavy in heaviest.current] == [4]
    assert heaviest.floor == -1  # room left: every entry of the next dump is a candidate
