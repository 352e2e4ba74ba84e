"""The ctnetlink socket, one dump request and the receive loop over its multi-part answer.

The request is 20 bytes and is packed here rather than by pyroute2: importing pyroute2 costs ~0.2-0.5 s, which
`khan snapshot` cannot afford on its way to a full table. Each dump uses its own socket, so an abandoned dump
never leaves messages behind for the next one, and the socket lives in whatever network namespace the caller is in.
"""

from __future__ import annotations

import errno
import itertools
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from khan.conntrack.decode import NLMSG_DONE, NLMSG_ERROR, Flow, Template, decode_chunk
from khan.conntrack.runs import RunCounter

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NFNETLINK_V0 = 0
AF_UNSPEC = 0  # both IPv4 and IPv6 entries in one dump

RECEIVE_BUFFER_BYTES = 256 * 1024  # the kernel fills at most 32 KiB per dump message batch; room to spare
SOCKET_RCVBUF_BYTES = 4 * 1024 * 1024  # capped by the host's rmem_max, which khan never changes
# The kernel builds each batch of a dump inside the recv() that asks for it, so a healthy dump never waits; a
# dump whose NLMSG_DONE was lost (behind a broken message header) would wait for ever without a bound.
RECEIVE_TIMEOUT_SECONDS = 10.0
PREFETCH_BUFFERS = 3  # one being decoded, two received ahead: the kernel's work and the decoding overlap

_REQUEST = struct.Struct("=IHHII BBH")
_TIMEVAL = struct.Struct("@ll")
_LENGTH_AND_TYPE = struct.Struct("=IH")
_DONE_SIZE = 20  # nlmsghdr and the dump's errno
_sequence = itertools.count(1)


class ConntrackError(OSError):
    """The kernel refused or broke off a dump; `errno` says why."""


@dataclass
class DumpStats:
    """What one dump read besides its entries."""

    entries: int = 0
    malformed: int = 0
    other_messages: int = 0
    interrupted: bool = False  # NLM_F_DUMP_INTR: the table changed under the dump; entries may be missing


def describe_error(code: int) -> str:
    """One line an operator can act on."""
    if code in (errno.EPERM, errno.EACCES):
        return "no permission to read the conntrack table over netlink (run as root or grant CAP_NET_ADMIN)"
    if code in (errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, errno.ENOENT):
        return "the kernel has no conntrack netlink support (load nf_conntrack_netlink)"
    if code == errno.ETIMEDOUT:
        return f"the kernel sent nothing more for {RECEIVE_TIMEOUT_SECONDS:g} s and the answer had not ended"
    return f"conntrack dump failed: {os.strerror(code)}"


def open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as exc:
        raise ConntrackError(exc.errno or errno.EPROTONOSUPPORT, describe_error(exc.errno or 0)) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
        # SO_RCVTIMEO rather than settimeout(): the socket stays blocking, no poll() before each recv.
        seconds, fraction = divmod(RECEIVE_TIMEOUT_SECONDS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(int(seconds), int(fraction * 1e6)))
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def request(command: int, flags: int, sequence: int) -> bytes:
    """A ctnetlink request (IPCTNL_MSG_CT_*) for both address families: netlink header and nfgenmsg."""
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | command
    return _REQUEST.pack(_REQUEST.size, msg_type, NLM_F_REQUEST | flags, sequence, 0, AF_UNSPEC, NFNETLINK_V0, 0)


def dump_request(sequence: int) -> bytes:
    return request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, sequence)


def dump_flows(
    stats: DumpStats,
    runs: RunCounter | None = None,
    prefetch: bool = False,
    before_batch: Callable[[], None] | None = None,
) -> Iterator[list[Flow]]:
    """Dump the current namespace's table; yields the entries of each received buffer as one batch.

    With `runs`, entries in runs of one shape are counted there by key instead (see runs.py): the caller adds
    them to its counts once the dump has ended. With `prefetch`, a thread receives the next batches while this
    one decodes (see _prefetched). `before_batch` runs before each received batch is decoded (a tracker's
    catch-up with events: the kernel queued the event of every change a batch shows before it built the batch,
    so however far ahead batches were received, those events are in by then).

    An interrupted dump (NLM_F_DUMP_INTR, or ENOBUFS: entries were lost) sets `stats.interrupted` for the
    caller to retry. Raises ConntrackError when the kernel answers with an error.
    """
    templates: dict[int, list[Template]] = {}
    take_run = runs.take if runs is not None else None
    with open_socket() as sock:
        sock.sendall(dump_request(next(_sequence)))
        for buf, length in _prefetched(sock) if prefetch else _received(sock, bytearray(RECEIVE_BUFFER_BYTES)):
            if length < 0:  # ENOBUFS: the kernel dropped part of the dump, as good as interrupted
                stats.interrupted = True
                return
            if before_batch is not None:
                before_batch()
            flows: list[Flow] = []
            result = decode_chunk(buf, length, flows, templates, take_run=take_run)
            stats.entries += len(flows) + result.counted
            stats.malformed += result.malformed
            stats.other_messages += result.other
            stats.interrupted = stats.interrupted or result.interrupted
            if flows:
                yield flows
            if result.error:
                raise ConntrackError(result.error, describe_error(result.error))
            if result.done:
                return


def _receive(sock: socket.socket, buf: bytearray) -> int:
    """One batch of the dump into `buf`: its length, -1 for ENOBUFS. Raises ConntrackError."""
    try:
        length = sock.recv_into(buf, 0, socket.MSG_TRUNC)
    except OSError as exc:
        if exc.errno == errno.ENOBUFS:
            return -1
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # RECEIVE_TIMEOUT_SECONDS passed
            raise ConntrackError(errno.ETIMEDOUT, describe_error(errno.ETIMEDOUT)) from exc
        raise ConntrackError(exc.errno or errno.EIO, describe_error(exc.errno or errno.EIO)) from exc
    # A batch larger than the buffer was cut short: decode_chunk counts its cut message as malformed.
    return min(length, len(buf))


def _received(sock: socket.socket, buf: bytearray) -> Iterator[tuple[bytearray, int]]:
    """Each batch, received into the one buffer when the previous one has been decoded."""
    while True:
        yield buf, _receive(sock, buf)


def _prefetched(sock: socket.socket) -> Iterator[tuple[bytearray, int]]:
    """Each batch, received by a thread up to PREFETCH_BUFFERS - 1 batches ahead of the decoding.

    The kernel builds each batch inside the recv() that asks for the one before it (about 0.3 ms of a core per
    32 KiB batch), and recv() releases the interpreter lock: the kernel's work and the decoding overlap, on two
    cores. The thread stops after a batch that ends in NLMSG_DONE or begins with NLMSG_ERROR (the answer's
    end, as the kernel writes it), or on ENOBUFS or an error; should the decoding find the dump not over by
    then, it goes on receiving itself. The decoding alone decides what the bytes mean."""
    free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    filled: queue.SimpleQueue[tuple[bytearray, int] | ConntrackError | None] = queue.SimpleQueue()
    for _ in range(PREFETCH_BUFFERS):
        free.put(bytearray(RECEIVE_BUFFER_BYTES))

    def receive() -> None:
        try:
            while (buf := free.get()) is not None:
                length = _receive(sock, buf)
                filled.put((buf, length))
                if length < 0 or _answer_ended(buf, length):
                    break
        except ConntrackError as exc:
            filled.put(exc)
        finally:
            filled.put(None)

    threading.Thread(target=receive, name="khan-dump-receive", daemon=True).start()
    last = None
    try:
        while (item := filled.get()) is not None:
            if isinstance(item, ConntrackError):
                raise item
            yield item
            last = item[0]
            free.put(last)
        # The thread has ended: its socket is this thread's again.
        yield from _received(sock, last or bytearray(RECEIVE_BUFFER_BYTES))
    finally:
        free.put(None)  # a thread still waiting for a buffer (the decoding stopped early) ends


def _answer_ended(buf: bytearray, length: int) -> bool:
    """Whether a batch holds the end of the answer: the kernel puts NLMSG_DONE last in its batch, and an error
    answers alone."""
    if length >= _DONE_SIZE and _LENGTH_AND_TYPE.unpack_from(buf, length - _DONE_SIZE) == (_DONE_SIZE, NLMSG_DONE):
        return True
    return length >= _LENGTH_AND_TYPE.size and _LENGTH_AND_TYPE.unpack_from(buf, 0)[1] == NLMSG_ERROR
