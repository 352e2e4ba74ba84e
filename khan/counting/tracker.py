"""Conntrack entries seen over time -> what happened between two looks: connections opened, bytes moved.

Two sources feed one state. A dump (every poll) is the whole table: an entry not known before is new, a known
entry's counters grew by their difference. Events (ctnetlink NEW and DESTROY, when subscribed) catch what a dump
never sees, a connection opened and closed between two polls, and DESTROY carries its final counters. Both may
report the same connection; one record per live entry makes each counted once. The event reader and the poller
run in different threads, so every method takes the tracker's lock.

Order: the kernel queues an event before a dump can show the change behind it (a DESTROY goes out before the
entry leaves the table, so before a new entry can take its tuple; the entries a dump evicts because they expired
send theirs while the dump runs). The poll therefore hands over every queued event before it counts each
received batch, and again before `end_dump`. The tracker then only has to handle events that are newer than
the batch they are applied before: after a DESTROY or a NEW during a dump, its copy of that identity may be stale,
and the next look counts. A NEW goes out just after its entry is made, so a dump may count a connection first.

Openings: while NEW events come, a NEW counts its connection. Once the baseline is taken the event reader stops
them (`stop_openings`): a connection that opened since the last dump is then counted by the next dump if it is
still in the table, or else by its DESTROY, which carries its tuple and final counters. An unknown DESTROY after
the baseline is such a connection; before it, one made before khan listened (nothing of it is counted).

Identity: the kernel's conntrack id is 32 bits (a hash of the entry's address and original tuple), so among a few
hundred thousand live entries some share one; the ports are folded in to keep those apart (`sport << 48 | dport << 32
| id`: the integer of those fields' bytes as the kernel writes them, which runs.py reads without Python code). An id
that comes back for a new connection with the same tuple is told apart by the old one's DESTROY; without it (events
off, or lost) a dump sees counters going backwards, which counts as a new connection and the old one as vanished.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import compress, repeat
from operator import and_, attrgetter, eq, not_

from khan.attribution.raw_keys import pair_key
from khan.conntrack.decode import Flow
from khan.conntrack.events import Event
from khan.conntrack.runs import TrackedRun
from khan.counting.deltas import Deltas
from khan.counting.heaviest import HEAVIEST_KEPT, HeaviestFlows, HeavyFlow

# A live entry, packed in one int: the counters at the last look (reply and original direction bytes, 64 bits each
# as the kernel keeps them) and above them the unix second khan first saw it. One int of ~48 bytes, where a tuple of
# three took 64 and 32 more for each counter above 256. The counters lie as runs.py reads them, `sent << 64 |
# received`, so that a run's unchanged entries are found by comparing integers in C.
Record = int
SENT_SHIFT = 64
FIRST_SEEN_SHIFT = 128
COUNTER = (1 << SENT_SHIFT) - 1
COUNTERS = (1 << FIRST_SEEN_SHIFT) - 1  # a record's counters, as `sent << SENT_SHIFT | received`
_ABSENT: Record = -1  # no record: its counters (-1 & COUNTERS) are higher than any entry's


def record(sent: int, received: int, first_seen: int) -> Record:
    return received | sent << SENT_SHIFT | first_seen << FIRST_SEEN_SHIFT


def first_seen_of(seen: Record) -> int:
    return seen >> FIRST_SEEN_SHIFT


# A DESTROY goes out a moment before its entry leaves the table, so a dump that begins just after one may still
# copy the entry: the identities of the last DESTROYs before a dump are stale there too. A few hundred cover
# far more than that moment, even at tens of thousands of events a second.
RECENT_DESTROYS = 1024
# A NEW goes out just after its entry is made, so a dump may count a connection before its NEW arrives: the
# identities a dump counted as new are remembered until the next dump begins, so that the NEW is known for what it
# is. Beyond this many (events off, or a storm of lost ones), a late NEW would count its connection twice.
FOUND_KEPT = 100_000


@dataclass
class TrackerTotals:
    """Since start: how the state was kept, for khan's own metrics."""

    vanished: int = 0  # entries gone from the table with no DESTROY seen: their last bytes are unknown
    reused: int = 0  # ids that came back for a new connection between two looks
    recovered: int = 0  # connections whose NEW event was lost, counted anyway: found by a dump, or by their DESTROY
    # An upper bound on connections opened and closed with their events lost before any dump saw them, counted
    # nowhere; None: the kernel's count of dropped events could not be read, so there is no bound.
    possibly_missed: int | None = 0
    # Records of entries an interrupted dump did not read, dropped to keep the records within the table's limit.
    dropped: int = 0


_DUMP_FIELDS = attrgetter("id", "sport", "dport", "orig_bytes", "reply_bytes")  # one C call per entry
_IDENTITY_FIELDS = attrgetter("id", "sport", "dport")
_UNKNOWN: Record = 0  # a heavy flow's record when the dump kept none (it was destroyed meanwhile)


def identity(flow: Flow) -> int:
    return flow.sport << 48 | flow.dport << 32 | flow.id


class ConnectionTracker:
    """Live entries by identity, and the deltas not yet taken. Counting starts from zero at the first dump:
    what that dump finds had opened before khan started and is only its baseline."""

    def __init__(self, heaviest_kept: int = HEAVIEST_KEPT) -> None:
        self.lock = threading.Lock()
        self.totals = TrackerTotals()
        self._live: dict[int, Record] = {}
        # Entries the last complete dump did not find. A DESTROY may still come for one (an expired entry the dump
        # skipped, reaped later by the collector): it settles the last bytes here instead of counting as unknown.
        self._vanished: dict[int, Record] = {}
        self._baseline_done = False
        self._openings_from_events = True  # NEW events come; see `stop_openings`
        # Events were lost and no complete dump has begun since the loss ended: a DESTROY of an unknown entry may
        # then be a connection whose NEW was lost. Otherwise it is one that predates khan.
        self._lossy = False
        self._loss_ongoing = False  # the kernel drops every event until the socket is read empty
        self._loss_during_dump = False  # the dump under way began, or went on, while events were lost
        # What lost events cost is settled once every explanation of them is in: after the first complete dump
        # that begins after the last loss ended (it finds the open connections whose NEW was lost) and the
        # complete dump after it (it confirms which entries left without a DESTROY).
        self._dropped: int | None = 0  # the kernel's count of dropped events when the last loss ended
        self._settle_after_next_dump = False
        self._silently_gone = 0  # entries made while khan listened that left without a DESTROY: one lost each
        self._baseline_second = 0  # records first seen after it were made while khan listened
        # Connections the last dump counted as new, whose NEW may still come; those it recovered during a loss
        # (a NEW that comes was not lost: it explains no dropped event).
        self._found_by_dump: set[int] = set()
        self._recovered_by_dump: set[int] = set()
        self._late_news = 0
        self._deltas = Deltas()
        # While a dump runs: the records it has read, and what events did meanwhile (identities opened or
        # destroyed since it began, or destroyed just before: a copy of them in its batches may be stale).
        self._dumping: dict[int, Record] | None = None
        self._added_during: set[int] = set()
        self._changed_during: set[int] = set()
        self._recent_gone: deque[int] = deque(maxlen=RECENT_DESTROYS)  # the last DESTROYs between two dumps
        self._heaviest = HeaviestFlows(heaviest_kept)
        # The table's limit (nf_conntrack_max), as the last poll read it: the records never outnumber it. None: unknown.
        self.limit: int | None = None

    def __len__(self) -> int:
        return len(self._live)

    @property
    def heaviest(self) -> list[HeavyFlow]:
        """The heaviest current connections of the last dump, heaviest first."""
        return self._heaviest.current

    @property
    def baseline_done(self) -> bool:
        """A complete dump has been read: every entry made before khan listened is known."""
        return self._baseline_done

    def stop_openings(self, unsubscribe: Callable[[], bool]) -> bool:
        """Stop NEW events once the baseline is taken: `unsubscribe` (the event reader's) ends them and says whether
        it could. From then on an unknown DESTROY is a connection opened since the last dump, counted with its final
        bytes, and a dump that finds a new entry is not recovering a lost NEW. The tracker is told before the kernel
        (and told back if it refused), so that no DESTROY is misread meanwhile; NEW events already queued are
        handled as before, told apart from what the last dump found."""
        if not self._baseline_done:
            return False
        with self.lock:
            self._openings_from_events = False
        if unsubscribe():
            return True
        with self.lock:
            self._openings_from_events = True
        return False

    def take(self) -> Deltas:
        """The deltas since the last take; the tracker starts a new set."""
        with self.lock:
            deltas, self._deltas = self._deltas, Deltas()
        return deltas

    # Dumps.

    def begin_dump(self) -> None:
        with self.lock:
            self._dumping = {}
            self._added_during = set()
            self._changed_during = set(self._recent_gone)
            self._recent_gone.clear()
            self._heaviest.begin()
            self._loss_during_dump = self._loss_ongoing
            self._found_by_dump = set()
            self._recovered_by_dump = set()

    def loss_began(self) -> None:
        """The kernel began dropping events (ENOBUFS): what dumps find and DESTROYs say may be all there is."""
        with self.lock:
            self._lossy = True
            self._loss_ongoing = True
            if self._dumping is not None:
                self._loss_during_dump = True

    def loss_ended(self, dropped: int | None) -> None:
        """The socket was read empty, so the kernel delivers again; the caller resynchronises with a dump.
        `dropped`: the kernel's count of events dropped since start (None if it cannot be read)."""
        with self.lock:
            self._lossy = True
            self._loss_ongoing = False
            if self._dumping is not None:  # it began, or went on, during the loss
                self._loss_during_dump = True
            self._dropped = dropped

    def observe_dump(self, batch: Iterable[Flow], now: int) -> None:
        """The entries of one received batch of the dump under way that were not read in runs."""
        with self.lock:
            self._observe_flows(batch, now)

    def observe_run(self, run: TrackedRun, now: int) -> None:
        """A run of one shape in a batch of the dump under way (runs.py). Most entries of a table are idle between
        two looks: those, whose counters are what their record holds, are carried over in C-level calls, and only
        the others (new, grown, gone backwards, or touched by events meanwhile) go through `_observe_flows`."""
        with self.lock:
            dumping = self._dumping
            if dumping is None:
                raise RuntimeError("observe_run() outside begin_dump()/end_dump()")
            live = self._live
            idents, totals, count = run.identities, run.totals, len(run)
            seens = list(map(live.pop, idents, repeat(_ABSENT)))
            same = list(map(eq, map(and_, seens, repeat(COUNTERS)), run.counters))
            changed = self._changed_during
            if changed and not changed.isdisjoint(idents):
                for index in compress(range(count), map(changed.__contains__, idents)):
                    same[index] = False  # stale copies: _observe_flows knows what to do with them
            heaviest = self._heaviest
            for index in compress(range(count), map(and_, same, map(heaviest.floor.__lt__, totals))):
                heaviest.candidates.append((totals[index], run.stored(index)))
                if len(heaviest.candidates) >= heaviest.crowded:
                    heaviest.trim()
            if all(same):
                dumping.update(zip(idents, seens, strict=True))
                return
            dumping.update(zip(compress(idents, same), compress(seens, same), strict=True))
            rest = list(compress(range(count), map(not_, same)))
            for index in rest:  # back where _observe_flows looks for them
                if seens[index] != _ABSENT:
                    live[idents[index]] = seens[index]
            self._observe_flows([run.flow(index) for index in rest], now)

    def _observe_flows(self, batch: Iterable[Flow], now: int) -> None:
        """Entries of the dump under way, one by one. This runs once per entry: keep it lean."""
        dumping = self._dumping
        if dumping is None:
            raise RuntimeError("observe_dump() outside begin_dump()/end_dump()")
        live_pop = self._live.pop
        changed = self._changed_during
        counting = self._baseline_done
        # A dump's new entry may be followed by its NEW, or have lost it, only while NEW events come.
        openings = self._openings_from_events
        lossy = self._lossy and openings
        found = self._found_by_dump if openings else None
        deltas = self._deltas
        count_opened = deltas.count_opened
        sent_deltas, received_deltas = deltas.sent, deltas.received
        heaviest = self._heaviest
        candidates, floor, crowded = heaviest.candidates, heaviest.floor, heaviest.crowded
        fields = _DUMP_FIELDS
        stamp = now << FIRST_SEEN_SHIFT  # a new record's first second
        counter, both = COUNTER, COUNTERS  # the hot loop shifts by a literal 64: SENT_SHIFT
        if not counting:
            self._baseline_second = now
        for flow in batch:
            ct_id, sport, dport, sent, received = fields(flow)
            ident = sport << 48 | dport << 32 | ct_id
            if sent + received > floor:  # one of the heaviest so far (for /flows), inlined: see HeaviestFlows
                candidates.append((sent + received, flow))
                if len(candidates) >= crowded:
                    floor = heaviest.trim()
            if ident in changed:
                self._stale_copy(ident)
                continue
            seen = live_pop(ident, None)
            counters = sent << 64 | received
            if seen is None:
                if ident in dumping:  # read twice
                    continue
                dumping[ident] = counters | stamp
                if counting:
                    count_opened(flow, sent, received)
                    if found is not None and len(found) < FOUND_KEPT:
                        found.add(ident)
                    if lossy:  # its NEW event was among the lost ones (or is still to come)
                        self.totals.recovered += 1
                        self._recovered_by_dump.add(ident)
                continue
            if seen & both == counters:  # most entries: idle since the last look
                dumping[ident] = seen
                continue
            sent_before, received_before = seen >> 64 & counter, seen & counter
            if sent < sent_before or received < received_before:
                self._reused_unseen(flow, ident, seen, now)
            else:
                dumping[ident] = seen >> FIRST_SEEN_SHIFT << FIRST_SEEN_SHIFT | counters
                pair = pair_key(flow)
                if sent != sent_before:
                    sent_deltas[pair] = sent_deltas.get(pair, 0) + sent - sent_before
                if received != received_before:
                    received_deltas[pair] = received_deltas.get(pair, 0) + received - received_before

    def _stale_copy(self, ident: int) -> None:
        """Destroyed or opened again since (or just before) the dump copied it: the copy may be the old connection's,
        stale, or the new one's. What events said stands; the next look counts."""
        assert self._dumping is not None
        seen = self._live.pop(ident, None)
        if seen is not None:  # the reopened connection's NEW came first
            self._dumping.setdefault(ident, seen)

    def _reused_unseen(self, flow: Flow, ident: int, seen: Record, now: int) -> None:
        """A dump found an identity's counters gone backwards: a new connection, and no DESTROY for the old one."""
        assert self._dumping is not None
        self.totals.reused += 1
        self.totals.vanished += 1
        if first_seen_of(seen) > self._baseline_second:
            self._silently_gone += 1
        self._dumping[ident] = record(flow.orig_bytes, flow.reply_bytes, now)
        self._deltas.count_opened(flow, flow.orig_bytes, flow.reply_bytes)
        if self._openings_from_events and len(self._found_by_dump) < FOUND_KEPT:
            self._found_by_dump.add(ident)

    def end_dump(self, complete: bool) -> None:
        """`complete`: the dump was consistent, so what it did not read has left the table. An interrupted dump
        may have skipped entries: their records stay, so that they are not counted again as new."""
        with self.lock:
            dumping = self._dumping
            if dumping is None:
                return
            live = self._live
            for ident in self._added_during:  # opened (by an event) after the dump passed their place
                held = live.pop(ident, None)
                if held is not None:
                    dumping.setdefault(ident, held)
            if complete:
                gone = self._vanished  # not in the last complete dump, and no DESTROY came for them since
                self.totals.vanished += len(gone)
                # First seen after the baseline second: a record above the baseline second's highest (one C call each).
                self._silently_gone += sum(map(record(COUNTER, COUNTER, self._baseline_second).__lt__, gone.values()))
                # A copy: `live` had every record the dump found popped, but a dict keeps its table at the size it
                # had (40 bytes an entry of a full table, held for nothing until the next dump).
                self._vanished = dict(live)
                if self._lossy:
                    if not self._loss_during_dump:
                        self._lossy = False
                        self._settle_after_next_dump = True
                elif self._settle_after_next_dump:
                    self._settle_after_next_dump = False
                    self._settle_loss()
            else:
                self._keep_unread(live, dumping)
            self._live = dumping
            self._dumping = None
            self._added_during = set()
            self._changed_during = set()
            # Only a complete dump is a baseline: a retry would count as new what the interrupted one missed.
            self._baseline_done = self._baseline_done or complete
            kept = dumping.get
            self._heaviest.finish(lambda flow: kept(identity(flow), _UNKNOWN) >> FIRST_SEEN_SHIFT)

    def _keep_unread(self, live: dict[int, Record], dumping: dict[int, Record]) -> None:
        """After an interrupted dump: the records it did not read stay, as far as the table could hold them. Some
        of them have left (their DESTROY lost, or events off); beyond the table's limit the last of them go, so that
        repeated interrupted dumps cannot pile them up. One still in the table is counted again as new."""
        room = len(live) if self.limit is None else max(0, self.limit - len(dumping))
        for ident, record in itertools.islice(live.items(), room):
            dumping.setdefault(ident, record)
        dropped = len(live) - min(room, len(live))
        self.totals.vanished += dropped
        self.totals.dropped += dropped

    def _settle_loss(self) -> None:
        """Every event the kernel dropped was a NEW or a DESTROY. A lost NEW shows as a recovered connection, a
        lost DESTROY as an entry made while khan listened that left without one (entries made before it listened
        never send events: they explain nothing). The drops that neither explains are connections opened and
        closed unseen: one event each once NEW events stopped, a pair while they still come (the agent could not
        stop them), then rounded up. Computed over every drop since start, so it never goes down."""
        totals = self.totals
        if self._dropped is None or totals.possibly_missed is None:
            totals.possibly_missed = None
            return
        unexplained = self._dropped - (totals.recovered - self._late_news) - self._silently_gone
        # While NEW events come, a connection missed lost two; once they stopped, only its DESTROY (a bound either
        # way: counting every drop as a connection covers pairs lost before, such as NEWs before the baseline).
        missed = (unexplained + 1) // 2 if self._openings_from_events else unexplained
        totals.possibly_missed = max(totals.possibly_missed, missed)

    # Events.

    def observe_events(self, events: Iterable[Event], now: int) -> None:
        """In arrival order: NEW events count openings (they carry no counters); DESTROY events settle an
        entry's last bytes, or count a connection no dump saw (see the module's Openings). This runs once per
        event: the common cases, a NEW of an identity not held and a DESTROY, stay in this loop; the rest go to
        `_on_new`."""
        with self.lock:
            live, vanished = self._live, self._vanished
            during = self._dumping is not None  # a dump is under way: its records so far, and what events changed
            dumping = self._dumping if self._dumping is not None else {}
            added, changed = self._added_during, self._changed_during
            deltas = self._deltas
            count_opened, add_bytes = deltas.count_opened, deltas.add_bytes
            stamp = now << FIRST_SEEN_SHIFT
            ident_fields = _IDENTITY_FIELDS
            # An unknown DESTROY is a connection to count: one opened since the last dump once NEW events stopped,
            # one whose NEW was lost while they came. Before the baseline, one made before khan listened.
            unknown_counts = self._baseline_done and (self._lossy or not self._openings_from_events)
            recovering = self._openings_from_events
            for opened, flow in events:
                ct_id, sport, dport = ident_fields(flow)
                ident = sport << 48 | dport << 32 | ct_id
                if opened:
                    if ident in live or ident in dumping:
                        self._on_new(flow, ident, now)
                        continue
                    live[ident] = stamp
                    if during:
                        added.add(ident)
                        changed.add(ident)  # a batch copied before the NEW may hold an older entry's counters
                    count_opened(flow, 0, 0)
                    continue
                seen = live.pop(ident, None)
                if seen is None:  # records are ints, 0 among them: `is None`, never `or`
                    seen = vanished.pop(ident, None)
                if during:
                    changed.add(ident)
                    copied = dumping.pop(ident, None)
                    if copied is not None:
                        seen = copied
                else:
                    self._recent_gone.append(ident)
                sent, received = flow.orig_bytes, flow.reply_bytes
                if seen is None:
                    if unknown_counts:
                        if recovering:  # its NEW event was among the lost ones
                            self.totals.recovered += 1
                        count_opened(flow, sent, received)
                    continue
                sent_before, received_before = seen >> SENT_SHIFT & COUNTER, seen & COUNTER
                if sent >= sent_before and received >= received_before:
                    add_bytes(pair_key(flow), sent - sent_before, received - received_before)
                else:
                    self._reused_destroyed(flow, seen)

    def _reused_destroyed(self, flow: Flow, seen: Record) -> None:
        """A DESTROY whose counters are lower than its record's: the identity came back for a new connection, whose
        NEW khan did not see (stopped, or lost), after the old one left without a DESTROY (it was made before khan
        listened, or its DESTROY was lost). The new one is counted here, with its final bytes."""
        self.totals.reused += 1
        self.totals.vanished += 1
        if first_seen_of(seen) > self._baseline_second:
            self._silently_gone += 1
        if self._openings_from_events:  # its NEW was among the lost ones
            self.totals.recovered += 1
        self._deltas.count_opened(flow, flow.orig_bytes, flow.reply_bytes)

    def _on_new(self, flow: Flow, ident: int, now: int) -> None:
        """A NEW of an identity held already (in the records, or in the dump under way)."""
        dumping = self._dumping
        holder = self._live if ident in self._live else dumping if dumping is not None and ident in dumping else None
        if holder is not None:
            if ident in self._found_by_dump:  # a dump counted it just before its NEW came: one connection
                self._found_by_dump.discard(ident)
                if ident in self._recovered_by_dump:  # so its NEW was not lost
                    self._recovered_by_dump.discard(ident)
                    self._late_news += 1
                return
            # An older connection with this identity ended without a DESTROY khan saw (made before khan listened,
            # or its DESTROY was lost): its last bytes are unknown, and this is a new one.
            held = holder.pop(ident)
            self.totals.vanished += 1
            if first_seen_of(held) > self._baseline_second:
                self._silently_gone += 1
        self._live[ident] = record(0, 0, now)
        if dumping is not None:
            self._added_during.add(ident)
            self._changed_during.add(ident)  # a batch copied before the NEW may hold an older entry's counters
        self._deltas.count_opened(flow, 0, 0)
