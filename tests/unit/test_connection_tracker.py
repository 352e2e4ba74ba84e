"""Pure: the tracker turns dumps and events into openings and byte deltas, each connection counted once whatever
order the two sources report it in."""

from __future__ import annotations

import socket

import pytest

from khan.conntrack.decode import Flow
from khan.conntrack.events import Event
from khan.counting.deltas import Deltas
from khan.counting.tracker import ConnectionTracker

CLIENT = socket.inet_aton("10.244.1.10")
SERVICE = socket.inet_aton("10.96.0.10")
BACKEND_A = socket.inet_aton("10.244.1.11")
BACKEND_B = socket.inet_aton("10.244.2.10")
NOW = 1_800_000_000


def entry(
    ct_id: int, sport: int, sent: int = 0, received: int = 0, endpoint: bytes = BACKEND_A, translated: bool = True
) -> Flow:
    dst = SERVICE if translated else endpoint
    return Flow(2, 6, CLIENT, dst, sport, 80, endpoint, CLIENT, 8080 if translated else 80, sport,
                0, 3, ct_id, 0, 0, 1, sent, 1, received)  # fmt: skip


def dump(tracker: ConnectionTracker, *flows: Flow, complete: bool = True, now: int = NOW) -> Deltas:
    tracker.begin_dump()
    tracker.observe_dump(flows, now)
    tracker.end_dump(complete)
    return tracker.take()


def new(*flows: Flow) -> list[Event]:
    return [Event(True, flow) for flow in flows]


def gone(*flows: Flow) -> list[Event]:
    return [Event(False, flow) for flow in flows]


def lose(tracker: ConnectionTracker, dropped: int | None) -> None:
    """An overflow, over: the kernel dropped events, and delivers again once the socket was read empty."""
    tracker.loss_began()
    tracker.loss_ended(dropped)


def opened_count(deltas: Deltas) -> int:
    return sum(deltas.opened.values())


def test_the_first_dump_is_only_a_baseline_then_new_entries_count_with_all_their_bytes() -> None:
    tracker = ConnectionTracker()
    assert opened_count(dump(tracker, entry(1, 40000, 500, 900))) == 0
    deltas = dump(tracker, entry(1, 40000, 700, 1000), entry(2, 40001, 300, 400))
    assert opened_count(deltas) == 1
    assert sum(deltas.sent.values()) == 200 + 300
    assert sum(deltas.received.values()) == 100 + 400


def test_a_translated_destination_is_a_transaction_of_the_endpoint_that_answered() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    flows = [entry(1, 40000, endpoint=BACKEND_A), *(entry(i, 40000 + i, endpoint=BACKEND_B) for i in (2, 3))]
    deltas = dump(tracker, *flows, entry(4, 40003, endpoint=BACKEND_B, translated=False))
    assert deltas.transactions == {(6, SERVICE, 80, BACKEND_A, 8080): 1, (6, SERVICE, 80, BACKEND_B, 8080): 2}
    assert opened_count(deltas) == 4


def test_an_identity_that_comes_back_with_lower_counters_is_a_new_connection() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(1, 40000, 5000, 5000))
    deltas = dump(tracker, entry(1, 40000, 60, 40))
    assert opened_count(deltas) == 1
    assert sum(deltas.sent.values()) == 60
    assert tracker.totals.reused == 1


def test_ids_shared_by_two_live_entries_stay_apart_by_their_ports() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    assert opened_count(dump(tracker, entry(7, 40000), entry(7, 40001))) == 2
    assert opened_count(dump(tracker, entry(7, 40000), entry(7, 40001))) == 0


def test_entries_gone_from_a_complete_dump_are_forgotten_but_an_interrupted_dump_keeps_them() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(1, 40000, 10, 10), entry(2, 40001, 10, 10))
    dump(tracker, entry(1, 40000, 10, 10), complete=False)
    assert len(tracker) == 2
    assert opened_count(dump(tracker, entry(1, 40000, 10, 10), entry(2, 40001, 10, 10))) == 0  # not counted again
    dump(tracker, entry(1, 40000, 10, 10))
    assert len(tracker) == 1
    dump(tracker, entry(1, 40000, 10, 10))  # and no DESTROY came for it in between
    assert tracker.totals.vanished == 1


def test_a_short_connection_seen_only_by_events_counts_once_with_its_final_bytes() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.observe_events(new(entry(9, 41000)), NOW)
    tracker.observe_events(gone(entry(9, 41000, 320, 180)), NOW)
    deltas = tracker.take()
    assert opened_count(deltas) == 1
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (320, 180)
    assert len(tracker) == 0


def test_a_dump_and_a_new_event_of_one_connection_count_once_in_either_order() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(1, 40000, 100, 50))
    tracker.observe_events(new(entry(1, 40000)), NOW)  # the event was queued before the dump read the entry
    tracker.observe_events(new(entry(2, 40001)), NOW)
    second = dump(tracker, entry(1, 40000, 100, 50), entry(2, 40001, 70, 30))
    assert opened_count(second) == 1  # entry 2, from its event; entry 1 only once, from the first dump
    assert sum(second.sent.values()) == 70


def test_events_during_a_dump_neither_double_count_nor_resurrect() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.begin_dump()
    tracker.observe_dump([entry(1, 40000, 100, 100)], NOW)  # read, then destroyed before the dump ends
    tracker.observe_events([*new(entry(2, 40001)), *gone(entry(1, 40000, 150, 100))], NOW)  # 2: after its place
    tracker.observe_dump([entry(3, 40002)], NOW)
    tracker.end_dump(True)
    deltas = tracker.take()
    assert opened_count(deltas) == 3
    assert sum(deltas.sent.values()) == 150  # 100 from the dump, 50 more from the DESTROY
    assert len(tracker) == 2  # 2 (kept although the dump did not read it) and 3; 1 is gone


def test_a_destroy_of_an_unknown_entry_counts_only_while_events_are_being_lost() -> None:
    tracker = ConnectionTracker()
    tracker.observe_events(gone(entry(1, 40000, 10, 10)), NOW)  # before the baseline: it may predate khan
    dump(tracker)
    tracker.observe_events(gone(entry(2, 40001, 10, 10)), NOW)  # no loss: it expired unseen (a dump evicted it)
    assert opened_count(tracker.take()) == 0
    tracker.loss_began()
    tracker.observe_events(gone(entry(3, 40002, 10, 10)), NOW)  # its NEW event was among the lost ones
    assert opened_count(tracker.take()) == 1
    assert tracker.totals.recovered == 1
    dump(tracker)  # began while events were still being dropped: the window stays open
    tracker.observe_events(gone(entry(4, 40003, 10, 10)), NOW)
    assert opened_count(tracker.take()) == 1
    tracker.loss_ended(dropped=2)
    dump(tracker)  # the resync: the loss window is closed
    tracker.observe_events(gone(entry(5, 40004, 10, 10)), NOW)
    assert opened_count(tracker.take()) == 0


def test_a_destroy_just_after_the_dump_that_missed_its_entry_settles_the_last_bytes() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(1, 40000, 100, 100))  # opened
    dump(tracker)  # expired: the dump evicts it, so it is not listed, and its DESTROY follows
    tracker.observe_events(gone(entry(1, 40000, 130, 160)), NOW)
    deltas = tracker.take()
    assert opened_count(deltas) == 0
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (30, 60)
    dump(tracker)
    assert tracker.totals.vanished == 0  # it had its DESTROY


def test_heaviest_flows_are_kept_heaviest_first_and_bounded() -> None:
    tracker = ConnectionTracker(heaviest_kept=3)
    dump(tracker, *(entry(i, 40000 + i, i * 10, i) for i in range(1, 20)))
    assert [heavy.total_bytes for heavy in tracker.heaviest] == [19 * 11, 18 * 11, 17 * 11]
    assert all(heavy.first_seen == NOW for heavy in tracker.heaviest)


def test_a_slot_reused_for_the_same_tuple_counts_both_connections_in_event_order() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.observe_events(new(entry(5, 40000)), NOW)
    # A SYN reopening the TIME_WAIT entry: the kernel destroys it and creates one with the same id and tuple.
    tracker.observe_events([*gone(entry(5, 40000, 300, 200)), *new(entry(5, 40000))], NOW)
    deltas = tracker.take()
    assert opened_count(deltas) == 2
    assert len(tracker) == 1


def test_a_stale_dump_copy_of_an_entry_destroyed_and_reopened_meanwhile_changes_nothing() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(5, 40000, 100, 100))  # opened
    tracker.begin_dump()  # the dump copies entry 5 (100 bytes) into a batch ...
    tracker.observe_events([*gone(entry(5, 40000, 150, 100)), *new(entry(5, 40000))], NOW)  # ... then it reopens
    tracker.observe_dump([entry(5, 40000, 100, 100)], NOW)  # ... and only then is the batch handled
    tracker.end_dump(True)
    deltas = tracker.take()
    assert opened_count(deltas) == 1  # the reopened one
    assert sum(deltas.sent.values()) == 50  # the first one's last bytes, once
    later = dump(tracker, entry(5, 40000, 30, 20))
    assert (opened_count(later), sum(later.sent.values())) == (0, 30)


# -- the entries a dump evicts -----------------------------------------------------------------------------------
# A dump kills the expired entries it meets instead of listing them; their DESTROY events go out while it runs.
# The poll hands over every queued event before each batch and before end_dump, so the DESTROY is applied
# before, between or after the dump's batches; a reader that lagged would apply it after end_dump.

DESTROY_MOMENTS = ("before the first batch", "between batches", "after the last batch", "after end_dump")


@pytest.mark.parametrize("moment", DESTROY_MOMENTS)
def test_an_evicted_entry_counts_its_final_bytes_once_wherever_its_destroy_lands(moment: str) -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(1, 40000, 10, 10))
    tracker.observe_events(new(entry(2, 40001)), NOW)  # a short connection, known from its NEW event only
    destroyed = gone(entry(2, 40001, 1_234, 5_678))
    tracker.begin_dump()
    if moment == DESTROY_MOMENTS[0]:
        tracker.observe_events(destroyed, NOW)
    tracker.observe_dump([entry(1, 40000, 10, 10)], NOW)
    if moment == DESTROY_MOMENTS[1]:
        tracker.observe_events(destroyed, NOW)
    tracker.observe_dump([entry(3, 40002, 70, 30)], NOW)
    if moment == DESTROY_MOMENTS[2]:
        tracker.observe_events(destroyed, NOW)
    tracker.end_dump(True)
    if moment == DESTROY_MOMENTS[3]:
        tracker.observe_events(destroyed, NOW)
    deltas = tracker.take()
    assert opened_count(deltas) == 2  # 2 from its NEW, 3 from the dump
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (1_234 + 70, 5_678 + 30)
    dump(tracker, entry(1, 40000, 10, 10), entry(3, 40002, 70, 30))
    dump(tracker, entry(1, 40000, 10, 10), entry(3, 40002, 70, 30))
    assert tracker.totals.vanished == 0
    assert len(tracker) == 2


def test_an_evicted_entry_the_last_dump_had_read_adds_only_what_it_moved_since() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(1, 40000, 100, 200))  # opened, read with 100 / 200 bytes
    tracker.begin_dump()
    tracker.observe_dump([], NOW)
    tracker.observe_events(gone(entry(1, 40000, 150, 260)), NOW)  # evicted by this dump: not listed
    tracker.end_dump(True)
    deltas = tracker.take()
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (50, 60)
    assert opened_count(deltas) == 0


# -- an id reused by a new connection ----------------------------------------------------------------------------
# A SYN on a CLOSE or TIME_WAIT entry of the same tuple: the kernel sends DESTROY(old) and removes it, then makes
# the new entry, often with the same id, and sends NEW(new) a moment after inserting it. So a dump that shows
# the new entry always comes after DESTROY(old), and before or after NEW(new).


@pytest.mark.parametrize("new_event", ["before the batch", "after the batch", "after end_dump"])
def test_a_reused_id_counts_the_old_connection_by_its_destroy_and_the_new_one_once(new_event: str) -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(5, 40000, 100, 100))  # the old connection, read once
    tracker.begin_dump()
    tracker.observe_events(gone(entry(5, 40000, 130, 900)), NOW)
    if new_event == "before the batch":
        tracker.observe_events(new(entry(5, 40000)), NOW)
    tracker.observe_dump([entry(5, 40000, 400, 40)], NOW)  # the new one: more sent, less received than the old
    if new_event == "after the batch":
        tracker.observe_events(new(entry(5, 40000)), NOW)
    tracker.end_dump(True)
    if new_event == "after end_dump":
        tracker.observe_events(new(entry(5, 40000)), NOW)
    first = tracker.take()
    later = dump(tracker, entry(5, 40000, 450, 70))
    tracker.observe_events(gone(entry(5, 40000, 500, 75)), NOW)
    last = tracker.take()
    assert opened_count(first) + opened_count(later) + opened_count(last) == 1  # the new one; the old was counted
    sent = sum(sum(d.sent.values()) for d in (first, later, last))
    received = sum(sum(d.received.values()) for d in (first, later, last))
    assert (sent, received) == (30 + 500, 800 + 75)  # the old one's last bytes, then all of the new one's
    assert tracker.totals.vanished == 0


def test_a_reused_id_whose_destroy_was_lost_is_a_new_connection_and_the_old_one_vanished() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(5, 40000, 500, 500))
    deltas = dump(tracker, entry(5, 40000, 60, 40))  # lower counters: another connection
    assert opened_count(deltas) == 1
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (60, 40)
    assert (tracker.totals.reused, tracker.totals.vanished) == (1, 1)  # the old one's last bytes are unknown


# -- what lost events cost -----------------------------------------------------------------------------------------


def test_dropped_events_that_nothing_explains_bound_the_connections_missed() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(9, 40009, 10, 10))  # the baseline: 9 was made before khan listened
    tracker.observe_events(new(entry(1, 40001), entry(2, 40002)), NOW + 1)
    assert opened_count(tracker.take()) == 2
    lose(tracker, dropped=11)
    tracker.observe_events(gone(entry(3, 40003, 50, 50), entry(4, 40004, 50, 50)), NOW + 1)  # their NEW was lost
    resync = dump(tracker, entry(1, 40001, 10, 10), *(entry(i, 40000 + i, 5, 5) for i in (5, 6, 7)), now=NOW + 2)
    assert opened_count(resync) == 2 + 3  # recovered from their DESTROY, and from the dump
    assert tracker.totals.recovered == 5
    assert tracker.totals.possibly_missed == 0  # 2 and 9 are gone, but a late DESTROY may still come
    dump(tracker, entry(1, 40001, 10, 10), *(entry(i, 40000 + i, 5, 5) for i in (5, 6, 7)), now=NOW + 3)
    assert tracker.totals.vanished == 2
    # 11 dropped: 5 lost NEWs recovered, 1 lost DESTROY (2's; 9 never had events to lose), 5 unexplained:
    # at most 3 connections opened and closed unseen.
    assert tracker.totals.possibly_missed == 3
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 4)
    assert tracker.totals.possibly_missed == 3


def test_entries_made_before_khan_listened_explain_no_lost_event() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(1, 40001, 10, 10), entry(2, 40002, 10, 10), entry(3, 40003, 10, 10))
    lose(tracker, dropped=2)  # one connection opened and closed with both events lost
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 1)  # 2 and 3 end silently: they never had events
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 2)
    assert tracker.totals.vanished == 2
    assert tracker.totals.possibly_missed == 1


def test_a_loss_during_a_dump_is_settled_only_after_two_later_ones() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.begin_dump()
    lose(tracker, dropped=4)
    tracker.observe_dump([entry(1, 40000, 5, 5)], NOW + 1)
    tracker.end_dump(True)  # it may have passed the lost entries' places before the loss: not a resync
    lose(tracker, dropped=6)
    dump(tracker, entry(1, 40000, 5, 5), now=NOW + 2)  # the resync
    assert tracker.totals.recovered == 1
    assert tracker.totals.possibly_missed == 0
    dump(tracker, entry(1, 40000, 5, 5), now=NOW + 3)  # confirms what left without a DESTROY: nothing
    assert tracker.totals.possibly_missed == 3  # (6 - 1) / 2, rounded up
    lose(tracker, dropped=6)  # an overflow with no new drops changes nothing
    dump(tracker, entry(1, 40000, 5, 5), now=NOW + 4)
    dump(tracker, entry(1, 40000, 5, 5), now=NOW + 5)
    assert tracker.totals.possibly_missed == 3


def test_a_dump_that_begins_while_the_kernel_still_drops_events_is_no_resync() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.loss_began()  # the socket is being read empty; meanwhile every event is dropped
    dump(tracker, now=NOW + 1)
    tracker.loss_ended(dropped=4)  # 2 connections opened and closed during it
    # Delivered again at once: the DESTROY of a connection whose NEW fell in the loss still counts.
    tracker.observe_events(gone(entry(3, 40003, 70, 30)), NOW + 1)
    assert opened_count(tracker.take()) == 1
    dump(tracker, now=NOW + 2)
    dump(tracker, now=NOW + 3)
    assert tracker.totals.possibly_missed == 2  # (4 - 1) / 2, rounded up: the bound holds


def test_a_connection_found_by_the_resync_before_its_new_arrived_explains_no_lost_event() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    lose(tracker, dropped=2)  # one connection opened and closed with both events lost
    tracker.begin_dump()
    tracker.observe_dump([entry(7, 40007), entry(8, 40008)], NOW + 1)
    tracker.observe_events(new(entry(7, 40007), entry(8, 40008)), NOW + 1)  # sent just after their entries
    tracker.end_dump(True)
    deltas = dump(tracker, entry(7, 40007), entry(8, 40008), now=NOW + 2)  # takes the resync's counts too
    assert opened_count(deltas) == 2  # each once, although found by the dump and announced by a NEW
    assert tracker.totals.possibly_missed == 1  # the lost pair is not explained away by 7 and 8


# -- an older connection that ended unseen, its identity taken again ----------------------------------------------
# Entries made before khan listened never send events, and a DESTROY may be lost: khan still holds the old record
# when a new connection with the same tuple, and often the same id, sends its NEW.


def test_a_new_connection_behind_a_record_older_than_khan_counts_and_the_old_one_vanished() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(5, 40005, 300, 300))  # older than khan: it will end without a DESTROY
    tracker.observe_events(new(entry(5, 40005)), NOW + 1)
    first = dump(tracker, entry(5, 40005, 900, 900), now=NOW + 2)  # more than the old one ever had
    assert opened_count(first) == 1
    assert (sum(first.sent.values()), sum(first.received.values())) == (900, 900)
    assert tracker.totals.vanished == 1
    tracker.loss_began()
    tracker.loss_ended(dropped=0)
    dump(tracker, entry(5, 40005, 900, 900), now=NOW + 3)
    dump(tracker, entry(5, 40005, 900, 900), now=NOW + 4)
    assert tracker.totals.possibly_missed == 0  # the old one never had events: it explains no lost one


def test_a_new_connection_behind_a_record_whose_destroy_was_lost_counts_once() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    tracker.observe_events(new(entry(5, 40005)), NOW + 1)  # A
    lose(tracker, dropped=1)  # A's DESTROY; B takes the same tuple and id
    tracker.observe_events(new(entry(5, 40005)), NOW + 1)  # B's NEW: khan still holds A's record
    deltas = dump(tracker, entry(5, 40005, 900, 900), now=NOW + 2)
    dump(tracker, entry(5, 40005, 900, 900), now=NOW + 3)
    assert opened_count(deltas) == 2
    assert sum(deltas.sent.values()) == 900  # all B's; A's last bytes are what the lost DESTROY took
    assert tracker.totals.vanished == 1
    assert tracker.totals.possibly_missed == 0  # the one drop is explained by A's silent end


def test_a_batch_copied_before_a_new_is_not_the_new_connections_growth() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(5, 40005, 300, 300))  # older than khan
    tracker.begin_dump()  # a batch copies it (300 bytes); it ends silently; a new connection takes its tuple
    tracker.observe_events(new(entry(5, 40005)), NOW + 1)
    tracker.observe_dump([entry(5, 40005, 300, 300)], NOW + 1)  # the stale copy
    tracker.end_dump(True)
    first = tracker.take()
    later = dump(tracker, entry(5, 40005, 40, 20), now=NOW + 2)
    assert opened_count(first) + opened_count(later) == 1
    assert sum(first.sent.values()) + sum(later.sent.values()) == 40


def test_an_interrupted_first_dump_is_no_baseline() -> None:
    tracker = ConnectionTracker()
    tracker.begin_dump()
    tracker.observe_dump([entry(1, 40001, 10, 10)], NOW)
    tracker.end_dump(False)
    retry = dump(tracker, entry(1, 40001, 10, 10), entry(2, 40002, 10, 10), now=NOW + 1)
    assert opened_count(retry) == 0  # 2 was there before khan too: the retry was still the baseline
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 5)  # 2 ends silently (it never had events)
    lose(tracker, dropped=2)
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 6)
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 7)
    assert tracker.totals.possibly_missed == 1


def test_without_the_kernels_drop_count_no_bound_is_served() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    lose(tracker, dropped=2)
    lose(tracker, dropped=None)
    for second in range(3):
        dump(tracker, now=NOW + 1 + second)
    assert tracker.totals.possibly_missed is None


# -- a DESTROY just before a dump begins ---------------------------------------------------------------------------
# The kernel sends a DESTROY a moment before the entry leaves the table: a dump that begins in that moment still
# copies it. Its copy must not count as a new connection.


def test_a_dump_copy_of_an_entry_destroyed_just_before_the_dump_is_stale() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(5, 40000, 100, 100))
    tracker.observe_events(gone(entry(5, 40000, 130, 900)), NOW)
    deltas = dump(tracker, entry(5, 40000, 130, 900))  # still in the table for a moment
    assert opened_count(deltas) == 0
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (30, 800)
    dump(tracker)
    dump(tracker)
    assert tracker.totals.vanished == 0


def test_a_reopened_entry_read_by_a_dump_just_after_the_reopening_counts_once_with_all_its_bytes() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    dump(tracker, entry(5, 40000, 100, 100))
    tracker.observe_events([*gone(entry(5, 40000, 130, 900)), *new(entry(5, 40000))], NOW)
    first = dump(tracker, entry(5, 40000, 40, 20))  # the new connection, or the old one's stale copy: unknowable
    later = dump(tracker, entry(5, 40000, 50, 30))
    assert opened_count(first) + opened_count(later) == 1
    assert sum(first.sent.values()) + sum(later.sent.values()) == 30 + 50
    assert sum(first.received.values()) + sum(later.received.values()) == 800 + 30
    assert tracker.totals.vanished == 0


# Once the baseline is taken the agent stops NEW events (tracker.stop_openings): DESTROY events alone.


def unsubscribed() -> bool:
    return True


def refused() -> bool:
    return False


def test_new_events_stop_only_after_a_baseline_and_stay_on_if_the_kernel_refuses() -> None:
    tracker = ConnectionTracker()
    calls: list[str] = []
    assert not tracker.stop_openings(lambda: calls.append("asked") or True)  # no baseline yet
    assert calls == []
    dump(tracker, incomplete := entry(1, 40001, 10, 10), complete=False)
    assert not tracker.stop_openings(unsubscribed)  # an interrupted dump is no baseline
    dump(tracker, incomplete)
    assert not tracker.stop_openings(refused)
    tracker.observe_events(gone(entry(2, 40002, 10, 10)), NOW)  # NEW events still come: it expired unseen
    assert opened_count(tracker.take()) == 0
    assert tracker.stop_openings(unsubscribed)


def test_without_new_events_a_destroy_no_dump_saw_counts_its_connection_once_with_all_its_bytes() -> None:
    tracker = ConnectionTracker()
    tracker.observe_events(gone(entry(9, 40009, 10, 10)), NOW)  # before the baseline: it may predate khan
    dump(tracker, entry(1, 40001, 10, 10))
    assert tracker.stop_openings(unsubscribed)
    tracker.observe_events(gone(entry(2, 40002, 300, 700), entry(1, 40001, 15, 30)), NOW + 1)
    deltas = tracker.take()
    assert opened_count(deltas) == 1  # 2, opened and closed between two dumps; 1 was the baseline's
    assert sum(deltas.transactions.values()) == 1
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (300 + 5, 700 + 20)
    assert tracker.totals.recovered == 0  # no NEW was lost: none was subscribed
    assert opened_count(dump(tracker, now=NOW + 2)) == 0
    assert tracker.totals.vanished == 0


def test_without_new_events_a_connection_still_open_is_counted_by_the_next_dump_then_settled_by_its_destroy() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    assert tracker.stop_openings(unsubscribed)
    assert opened_count(dump(tracker, entry(3, 40003, 40, 60), now=NOW + 1)) == 1
    tracker.observe_events(gone(entry(3, 40003, 100, 160)), NOW + 2)
    deltas = tracker.take()
    assert opened_count(deltas) == 0
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (60, 100)


def test_without_new_events_a_destroy_during_a_dump_counts_once_whether_or_not_the_dump_copied_it() -> None:
    tracker = ConnectionTracker()
    dump(tracker)
    assert tracker.stop_openings(unsubscribed)
    tracker.begin_dump()
    tracker.observe_dump([entry(4, 40004, 20, 20)], NOW + 1)  # copied, then destroyed
    tracker.observe_events(gone(entry(4, 40004, 50, 50), entry(5, 40005, 70, 70)), NOW + 1)
    tracker.observe_dump([entry(5, 40005, 70, 70)], NOW + 1)  # a stale copy: its DESTROY went out before
    tracker.end_dump(True)
    deltas = tracker.take()
    assert opened_count(deltas) == 2
    assert sum(deltas.sent.values()) == 50 + 70
    assert opened_count(dump(tracker, now=NOW + 2)) == 0


def test_without_new_events_a_destroy_with_lower_counters_than_its_record_is_a_new_connection() -> None:
    """The record is of a connection older than khan (no events), whose tuple and id came back for a new one."""
    tracker = ConnectionTracker()
    dump(tracker, entry(6, 40006, 5_000, 9_000))
    assert tracker.stop_openings(unsubscribed)
    tracker.observe_events(gone(entry(6, 40006, 80, 120)), NOW + 1)
    deltas = tracker.take()
    assert opened_count(deltas) == 1
    assert (sum(deltas.sent.values()), sum(deltas.received.values())) == (80, 120)
    assert (tracker.totals.reused, tracker.totals.vanished) == (1, 1)


def test_without_new_events_each_lost_destroy_that_nothing_explains_is_one_connection_missed() -> None:
    tracker = ConnectionTracker()
    dump(tracker, entry(1, 40001, 10, 10))
    assert tracker.stop_openings(unsubscribed)
    dump(tracker, entry(1, 40001, 10, 10), entry(2, 40002, 10, 10), now=NOW + 1)  # 2: made while khan listened
    lose(tracker, dropped=4)  # 2's DESTROY, and three connections never dumped
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 2)
    dump(tracker, entry(1, 40001, 10, 10), now=NOW + 3)
    assert tracker.totals.vanished == 1
    assert tracker.totals.possibly_missed == 3
