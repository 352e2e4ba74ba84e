"""ctnetlink events: the kernel tells subscribed sockets about every new and every destroyed conntrack entry, so a
connection that opens and closes between two polls is still counted, and its final byte counters arrive with
its DESTROY event.

Once the tracker has its baseline (a complete dump), NEW events say nothing that a dump or a DESTROY will not say
in time: every connection that opened since the last dump either is still in the table at the next dump or sends
a DESTROY, with its tuple and final counters, when it leaves. The owner then unsubscribes from NEW
(`stop_openings`): half the events to receive, decode and count under churn, and the kernel stops building them.

Subscribing needs CAP_NET_ADMIN in the table's namespace; without it khan counts from dumps alone. Events are
best effort: when the socket's buffer is full the kernel drops them and the next read fails with ENOBUFS. The
reader counts that, and its owner resynchronises from a dump. The kernel's own count of dropped messages is read
from the socket (SO_MEMINFO), so the losses are exact.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from khan.conntrack.decode import CT_DELETE_TYPE, CT_ENTRY_TYPE, Flow, Template, decode_chunk
from khan.conntrack.event_shapes import EventShape, event_shape
from khan.conntrack.namespace import entered
from khan.conntrack.netlink import NETLINK_NETFILTER, ConntrackError, describe_error
from khan.logs import RateLimiter
from khan.settings import EVENT_BUFFER_BYTES  # the --event-buffer default

log = structlog.get_logger("khan.events")

NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3
EVENT_GROUPS = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
SO_RCVBUFFORCE = 33  # with CAP_NET_ADMIN: a buffer beyond net.core.rmem_max, which khan never changes
SO_MEMINFO = 55
SOL_NETLINK = 270
NETLINK_DROP_MEMBERSHIP = 2
SK_MEMINFO_DROPS = 8
RECEIVE_BYTES = 64 * 1024
BATCH_MESSAGES = 4096  # events handed over at once, at most
# After a batch that emptied the queue the reader rests this long, so that the next batch is dozens of events
# rather than one: each wake-up, read-until-empty and hand-over costs as much as several events. The queue
# meanwhile holds a few hundred events at most, far below the buffer.
COALESCE_SECONDS = 0.05


class Event(NamedTuple):
    """One event. Order matters: a reused slot gives DESTROY then NEW of one id (a SYN reopening TIME_WAIT)."""

    opened: bool  # NEW; else DESTROY
    flow: Flow


@dataclass
class EventStats:
    """Since start; written by the reader thread, read by scrapes (ints: no lock needed)."""

    new: int = 0
    destroy: int = 0
    malformed: int = 0
    overflows: int = 0
    dropped: int = 0


def _meminfo_drops(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    except OSError:
        return None
    if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
        return None
    drops: int = struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0]
    return drops


def open_event_socket(buffer_bytes: int = EVENT_BUFFER_BYTES) -> socket.socket:
    """A socket subscribed to NEW and DESTROY events of the calling thread's namespace. Raises ConntrackError."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as exc:
        raise ConntrackError(exc.errno or errno.EPROTONOSUPPORT, describe_error(exc.errno or 0)) from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)  # capped at rmem_max
        sock.bind((0, EVENT_GROUPS))
    except OSError as exc:
        sock.close()
        code = exc.errno or errno.EIO
        raise ConntrackError(code, f"cannot subscribe to conntrack events: {describe_error(code)}") from exc
    return sock


class BatchRead(NamedTuple):
    received: int  # bytes
    drained: bool  # the queue was empty at the end: what was queued when the read began has been handed over
    failed: bool  # an error was logged


Handler = Callable[[Iterable[Event], int], None]  # (events in arrival order, made as they are taken; unix seconds)


class LossListener(Protocol):
    """Told when the kernel begins dropping events, and when it delivers again."""

    def loss_began(self) -> None: ...

    def loss_ended(self, dropped: int | None) -> None:
        """`dropped`: the kernel's count of events dropped since start; None if it cannot be read."""


class EventReader:
    """A thread that reads events and hands them to `handle` in batches. Never raises out of the thread: an error
    is logged and reading goes on.

    `catch_up()` lets a poll read what is queued from its own thread, between two dump batches: the kernel sends a
    DESTROY before its entry leaves the table (and the entries a dump evicts send theirs while it runs), so a poll
    that catches up before counting each batch sees events and dump in the kernel's order. One lock covers
    reading and handing over, whoever reads, so events reach `handle` in the order the kernel sent them.

    Losses: once the socket overflows, the kernel reports ENOBUFS once and then drops every event until the
    queue has been read empty. `losses` hears of it at the ENOBUFS; the events queued before the overflow are
    still read and handed over; once the queue is empty (the kernel delivers again) `losses` gets the kernel's
    final count of dropped events."""

    def __init__(
        self,
        handle: Handler,
        losses: LossListener,
        netns: str | None = None,
        buffer_bytes: int = EVENT_BUFFER_BYTES,
    ) -> None:
        self.stats = EventStats()
        self._buffer_bytes = buffer_bytes
        self._handle = handle
        self._losses = losses
        self._netns = netns
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._drops_at_start = 0
        self._reading = threading.Lock()
        self._buf = bytearray(RECEIVE_BYTES)
        self._templates: dict[int, list[Template]] = {}
        self._shapes: dict[int, list[EventShape]] = {}  # by message length, as compiled from `_templates`
        self._decode_failed = False
        self._queue_bytes = buffer_bytes  # the socket's buffer as the kernel sized it (set at start)
        self._overflow_pending = False  # ENOBUFS seen, the queue not yet read empty: the kernel is still dropping
        self._errors = RateLimiter(period=60.0)  # a poll catches up before every batch: an error would repeat
        self.openings = True  # subscribed to NEW events (until stop_openings)
        self._openings_kept = False  # the kernel refused to stop them: not asked again

    def start(self) -> None:
        """Subscribe (in the reader's namespace) and start reading. Raises ConntrackError if not permitted."""
        with entered(self._netns):
            self._sock = open_event_socket(self._buffer_bytes)
        self._sock.setblocking(False)
        drops = _meminfo_drops(self._sock)
        if drops is None:
            log.warning("events_drop_count_unavailable", effect="khan_connections_possibly_missed_total is not served")
        self._drops_at_start = drops or 0
        self._queue_bytes = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._thread = threading.Thread(target=self._run, name="khan-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        locked = self._reading.acquire(timeout=timeout)  # not while a batch is read or handed over, if it can wait
        try:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        finally:
            if locked:
                self._reading.release()

    @property
    def may_stop_openings(self) -> bool:
        """NEW events come, and the kernel has not refused to stop them."""
        return self.openings and not self._openings_kept

    def stop_openings(self) -> bool:
        """Unsubscribe from NEW events; DESTROY events go on. NEW events already queued are still handed over, in
        order. Whether NEW events are off; False if the socket is closed, or if the kernel refused (logged once,
        and not asked again): NEW events then go on, and are counted as before."""
        with self._reading:
            if self._sock is None or not self.may_stop_openings:
                return not self.openings
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_CONNTRACK_NEW)
            except OSError as exc:
                self._openings_kept = True
                log.warning("events_new_unsubscribe_failed", error=os.strerror(exc.errno or 0), effect="they go on")
                return False
            self.openings = False
            return True

    def catch_up(self) -> None:
        """Hand over every event queued so far, from the calling thread. Stops once the queue is empty, or after
        reading as many bytes as the socket's buffer holds (more than can have been queued when it was called),
        so that a storm cannot hold the caller for ever."""
        with self._reading:
            read = 0
            while self._sock is not None and read < self._queue_bytes:
                batch = self._read_batch()
                read += batch.received
                if batch.drained or batch.failed:
                    return

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        while not self._stopping.is_set():
            # Poll for data, unless a loss waits to be reported: the queue may be empty already after a full batch.
            if not self._overflow_pending and not readable.poll(250):  # milliseconds: how soon stop() is noticed
                continue
            with self._reading:
                if self._sock is None:
                    return
                batch = self._read_batch()
            if batch.failed:
                self._stopping.wait(1.0)  # an error that repeats must not spin
            elif batch.drained:
                self._stopping.wait(COALESCE_SECONDS)

    def _read_batch(self) -> BatchRead:
        """Read up to a batch, hand it over, report a loss once the queue is empty; the caller holds `_reading`.
        Never raises: a bug or an odd kernel must not end event counting, nor fail the poll that caught up."""
        sock = self._sock
        assert sock is not None
        reads: list[bytearray] = []
        received = 0
        drained = failed = False
        try:
            received, drained = self._receive(sock, reads)
        except Exception as exc:
            self._log_error("event_read_failed", exc)
            failed = True
        if reads:
            events = self._decoded(reads)
            try:
                self._handle(events, int(time.time()))
            except Exception as exc:
                self._log_error("event_handling_failed", exc)
            finally:
                events.close()  # its counts are kept, also when the handler stopped early
            failed = failed or self._decode_failed
            self._decode_failed = False
        if drained and self._overflow_pending:
            self._overflow_pending = False
            drops = _meminfo_drops(sock)
            stats = self.stats
            if drops is not None:
                stats.dropped = drops - self._drops_at_start
            try:
                self._losses.loss_ended(None if drops is None else stats.dropped)
            except Exception as exc:
                self._log_error("event_loss_handling_failed", exc)
        return BatchRead(received, drained, failed)

    def _log_error(self, event: str, exc: Exception) -> None:
        allowed, held = self._errors.allow(event)
        if allowed:
            log.exception(event, error=repr(exc), suppressed_since_last=held)

    def _receive(self, sock: socket.socket, reads: list[bytearray]) -> tuple[int, bool]:
        """Read what is queued, up to a batch of messages, each read kept as it came. Returns (bytes read, whether
        the queue is empty). The kernel sends one message per event, so this runs once per event: once per
        connection under churn (its DESTROY) once NEW events have stopped. Decoding waits for the handler
        (`_decoded`): a read's bytes are not objects the garbage collector walks, where a batch of Flows was (an
        agent under churn spent 14% of its CPU in it)."""
        buf = self._buf
        recv_into = sock.recv_into
        keep = reads.append
        received = 0
        for _ in range(BATCH_MESSAGES):
            try:
                length = recv_into(buf)
            except BlockingIOError:
                return received, True
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Reported once per overflow; what was queued before it is still there to read.
                self.stats.overflows += 1
                self._overflow_pending = True
                try:
                    self._losses.loss_began()
                except Exception as exc:
                    self._log_error("event_loss_handling_failed", exc)
                continue
            received += length
            keep(buf[:length])
        return received, False

    def _decoded(self, reads: list[bytearray]) -> Generator[Event, None, None]:
        """The events of `reads` in the stream's order, each made as the handler asks for it (and gone before the
        next: none piles up for the garbage collector). A read that is one message of a shape seen before is
        decoded here: one masked compare checks its header, kind and shape, one unpack reads it (event_shapes.py).
        Anything else goes through decode_chunk. Counts what it hands over; a read it cannot decode is logged and
        skipped."""
        known, templates = self._shapes.get, self._templates
        as_int = int.from_bytes
        new = tuple.__new__  # Event and Flow without their Python-level constructors
        opened: list[Flow] = []
        destroyed: list[Flow] = []
        news = handed = 0
        try:
            for read in reads:
                bits = as_int(read, "little")
                for mask, expected, unpack, flow_fields, defaults, is_new in known(len(read), ()):
                    if bits & mask == expected:
                        news += is_new
                        handed += 1
                        yield new(Event, (is_new, new(Flow, flow_fields(unpack(read) + defaults))))
                        break
                else:
                    try:
                        result = decode_chunk(read, len(read), opened, templates, destroyed)
                        self._learn(len(read))
                    except Exception as exc:
                        self._log_error("event_read_failed", exc)
                        self._decode_failed = True
                        opened.clear()
                        destroyed.clear()
                        continue
                    if result.malformed:
                        self.stats.malformed += result.malformed
                        allowed, held = self._errors.allow("events_malformed")
                        if allowed:
                            log.warning("events_malformed", skipped=result.malformed, suppressed_since_last=held)
                    # One event per message, one message per read: emptying both lists each time keeps the
                    # stream's order.
                    news += len(opened)
                    handed += len(opened) + len(destroyed)
                    for flow in opened:
                        yield new(Event, (True, flow))
                    for flow in destroyed:
                        yield new(Event, (False, flow))
                    opened.clear()
                    destroyed.clear()
        finally:
            self.stats.new += news
            self.stats.destroy += handed - news

    def _learn(self, length: int) -> None:
        """The shapes of reads `length` long, once decode_chunk has compiled one more template for messages that
        long: a DESTROY and a NEW of each, DESTROY first (after the baseline it is the only kind that comes)."""
        templates = self._templates.get(length, [])
        if 2 * len(templates) == len(self._shapes.get(length, ())):
            return
        shapes = []
        for template in templates:
            for kind in (CT_DELETE_TYPE, CT_ENTRY_TYPE):
                try:
                    shapes.append(event_shape(template, kind))
                except ValueError as exc:  # decode_chunk still reads such messages: only slower
                    self._log_error("event_shape_failed", exc)
        self._shapes[length] = shapes
