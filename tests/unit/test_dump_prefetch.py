"""The dump's receiving thread (netlink._prefetched) hands over every batch in order and stops at the answer's
end; where its guess of the end is wrong the decoding goes on receiving itself; errors reach the caller; a
caller that stops early leaves no thread behind. A fake socket stands in for the kernel's."""

from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from khan.conntrack import netlink
from khan.conntrack.decode import NLMSG_DONE, NLMSG_ERROR
from khan.conntrack.netlink import ConntrackError, _prefetched

DONE = struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)


def batch(number: int, size: int = 64) -> bytes:
    """Bytes that are no message khan knows: only the end of the answer matters here."""
    return bytes([number % 251]) * size


class FakeSocket:
    """recv_into() returns the scripted batches in turn; an exception in the script is raised instead."""

    def __init__(self, script: list[bytes | OSError]) -> None:
        self.script = list(script)
        self.calls = 0

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        self.calls += 1
        if not self.script:
            raise OSError(errno.EAGAIN, "nothing more")  # what the receive timeout raises
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        buf[: len(item)] = item
        return len(item)


def received(sock: FakeSocket) -> Iterator[bytes]:
    for buf, length in _prefetched(sock):  # type: ignore[arg-type]
        data = bytes(buf[:length]) if length >= 0 else b""
        yield data
        if length < 0 or data.endswith(DONE) or data[4:6] == struct.pack("=H", NLMSG_ERROR):
            return


def dump_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "khan-dump-receive"]


def settled() -> list[threading.Thread]:
    deadline = time.monotonic() + 5
    while dump_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return dump_threads()


def test_every_batch_arrives_in_order_and_the_thread_ends_at_done() -> None:
    script: list[bytes | OSError] = [batch(i) for i in range(50)] + [batch(50) + DONE]
    sock = FakeSocket(script)
    assert list(received(sock)) == [batch(i) for i in range(50)] + [batch(50) + DONE]
    assert sock.calls == 51  # nothing asked for past the end
    assert settled() == []


def test_a_batch_that_looks_like_the_end_is_followed_by_the_rest() -> None:
    script: list[bytes | OSError] = [batch(1), batch(2) + DONE[:4] + b"\x03\x00" + bytes(14), batch(3) + DONE]
    # the second batch ends in what the thread takes for NLMSG_DONE; the decoding finds more and goes on
    second = script[1]
    assert isinstance(second, bytes)
    assert not second.endswith(DONE)
    assert list(received(FakeSocket(script))) == [batch(1), second, batch(3) + DONE]
    assert settled() == []


def test_an_error_reaches_the_caller() -> None:
    sock = FakeSocket([batch(1), OSError(errno.EPERM, "no")])
    with pytest.raises(ConntrackError) as caught:
        list(received(sock))
    assert caught.value.errno == errno.EPERM
    assert settled() == []


def test_enobufs_ends_the_batches() -> None:
    assert list(received(FakeSocket([batch(1), OSError(errno.ENOBUFS, "lost")]))) == [batch(1), b""]
    assert settled() == []


def test_a_caller_that_stops_early_leaves_no_thread() -> None:
    script: list[bytes | OSError] = [batch(i) for i in range(20)] + [batch(20) + DONE]
    batches = received(FakeSocket(script))
    assert next(batches) == batch(0)
    batches.close()
    assert settled() == []


def test_buffers_are_the_dump_s_size() -> None:
    assert netlink.PREFETCH_BUFFERS >= 2
    big = bytes(netlink.RECEIVE_BUFFER_BYTES - len(DONE)) + DONE
    assert list(received(FakeSocket([big]))) == [big]
