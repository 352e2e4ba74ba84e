"""The event reader leaving the NEW group, through its socket's setsockopt: what it asks the kernel, and a refusal
(which no kernel here can be made to give) logged once and never asked again. The real kernel's side, DESTROY events
alone once NEW stopped, is tested in tests/kernel (test_counting_lab, test_counting_event_loss)."""

from __future__ import annotations

import errno
import socket
from typing import cast

from structlog.testing import capture_logs

from khan.conntrack.events import NETLINK_DROP_MEMBERSHIP, NFNLGRP_CONNTRACK_NEW, SOL_NETLINK, EventReader


class RecordingSocket:
    """setsockopt() is recorded, and raises `refusal` when given one."""

    def __init__(self, refusal: OSError | None = None) -> None:
        self.refusal = refusal
        self.calls: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append((level, option, value))
        if self.refusal is not None:
            raise self.refusal


class Ignored:
    def loss_began(self) -> None: ...

    def loss_ended(self, dropped: int | None) -> None: ...


def reader_on(sock: RecordingSocket) -> EventReader:
    reader = EventReader(lambda events, now: None, Ignored())
    reader._sock = cast(socket.socket, sock)
    return reader


def test_stopping_openings_drops_the_new_group_once() -> None:
    sock = RecordingSocket()
    reader = reader_on(sock)
    assert reader.may_stop_openings
    assert reader.stop_openings()
    assert reader.stop_openings()  # already off: nothing more to ask
    assert sock.calls == [(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_CONNTRACK_NEW)]
    assert (reader.openings, reader.may_stop_openings) == (False, False)


def test_a_refusal_is_logged_once_and_not_asked_again() -> None:
    sock = RecordingSocket(PermissionError(errno.EPERM, "Operation not permitted"))
    reader = reader_on(sock)
    with capture_logs() as logs:
        assert not reader.stop_openings()
        assert not reader.stop_openings()
    assert len(sock.calls) == 1
    assert [entry["event"] for entry in logs] == ["events_new_unsubscribe_failed"]
    assert logs[0]["error"] == "Operation not permitted"
    assert (reader.openings, reader.may_stop_openings) == (True, False)


def test_a_closed_reader_stops_nothing() -> None:
    reader = EventReader(lambda events, now: None, Ignored())
    assert not reader.stop_openings()
    assert reader.openings
