"""The event reader through an overflow, as af_netlink.c behaves: ENOBUFS comes once, the events queued before
it are still read, and the kernel delivers again only once the queue has been read empty. The socket here
replays real conntrack messages (recorded from a lab dump) in a scripted order, which no kernel can be made to
produce on demand; the tracker's side of a loss is tested in test_connection_tracker."""

from __future__ import annotations

import errno
import socket
import struct

from khan.conntrack.decode import CT_DELETE_TYPE
from khan.conntrack.events import SK_MEMINFO_DROPS, Event, EventReader
from tests.support.netlink_fixtures import message_offsets, recorded_buffers

ENOBUFS = OSError(errno.ENOBUFS, "No buffer space available")


def recorded_messages() -> list[bytes]:
    """The entry messages of the recorded lab dump, one each (as an event socket reads them)."""
    messages = []
    for buf in recorded_buffers("lab_dump.bin"):
        for offset in message_offsets(buf):
            length, kind = struct.unpack_from("=IH", buf, offset)
            if kind == 1 << 8:  # IPCTNL_MSG_CT_NEW: the shape of a NEW event
                messages.append(buf[offset : offset + length])
    return messages


def as_destroy(message: bytes) -> bytes:
    return message[:4] + struct.pack("=H", CT_DELETE_TYPE) + message[6:]


class ScriptedSocket:
    """recv_into() plays the script (bytes, or an exception to raise); then the queue is empty."""

    def __init__(self, script: list[bytes | OSError], drops: int) -> None:
        self.script = script
        self.drops = drops

    def recv_into(self, buf: bytearray) -> int:
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "empty")
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        buf[: len(step)] = step
        return len(step)

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert level == socket.SOL_SOCKET
        meminfo = [0] * 9
        meminfo[SK_MEMINFO_DROPS] = self.drops
        return struct.pack("=9I", *meminfo)


class Listener:
    """What the tracker would hear, in order: events, and the loss's beginning and end."""

    def __init__(self) -> None:
        self.heard: list[str | tuple[str, int | None]] = []

    def handle(self, events: list[Event], now: int) -> None:
        self.heard += ["new" if event.opened else "destroy" for event in events]

    def loss_began(self) -> None:
        self.heard.append("loss began")

    def loss_ended(self, dropped: int | None) -> None:
        self.heard.append(("loss ended", dropped))


def reader_on(sock: ScriptedSocket, listener: Listener) -> EventReader:
    reader = EventReader(listener.handle, listener)
    reader._sock = sock  # type: ignore[assignment]  # what start() would have opened
    return reader


def test_the_backlog_is_read_after_enobufs_and_the_loss_ends_with_the_kernels_count_once_read_empty() -> None:
    first, second, third = recorded_messages()[:3]
    sock = ScriptedSocket([first, ENOBUFS, second, as_destroy(third)], drops=40)
    listener = Listener()
    reader_on(sock, listener).catch_up()
    # The loss is known before anything queued after it is handed over, and over only once the queue is empty.
    assert listener.heard == ["loss began", "new", "new", "destroy", ("loss ended", 40)]


def test_a_batch_that_ends_exactly_at_the_empty_queue_still_reports_the_loss() -> None:
    messages = recorded_messages()
    sock = ScriptedSocket([ENOBUFS, messages[0]], drops=7)
    listener = Listener()
    reader = reader_on(sock, listener)
    reader.catch_up()
    reader.catch_up()  # nothing left: no second report
    assert listener.heard == ["loss began", "new", ("loss ended", 7)]
    assert reader.stats.overflows == 1
    assert reader.stats.dropped == 7
