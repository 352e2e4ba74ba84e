"""The ctnetlink socket, one dump request and the receive loop over its multi-part answer.

The request is 20 bytes and is packed here rather than by pyroute2: importing pyroute2 costs ~0.2-0.5 s, which
`khan snapshot` cannot afford on its way to a full table. Each dump uses its own socket, so an abandoned dump
never leaves messages behind for the next one, and the socket lives in whatever network namespace the caller is in.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from khan.conntrack.decode import Flow, Template, decode_chunk
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

_REQUEST = struct.Struct("=IHHII BBH")
_TIMEVAL = struct.Struct("@ll")
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


def dump_flows(stats: DumpStats, runs: RunCounter | None = None) -> Iterator[list[Flow]]:
    """Dump the current namespace's table; yields the entries of each received buffer as one batch.

    With `runs`, entries in runs of one shape are counted there by key instead (see runs.py): the caller adds
    them to its counts once the dump has ended.

    An interrupted dump (NLM_F_DUMP_INTR, or ENOBUFS: entries were lost) sets `stats.interrupted` for the
    caller to retry. Raises ConntrackError when the kernel answers with an error.
    """
    buf = bytearray(RECEIVE_BUFFER_BYTES)
    templates: dict[int, list[Template]] = {}
    take_run = runs.take if runs is not None else None
    with open_socket() as sock:
        sock.sendall(dump_request(next(_sequence)))
        while True:
            try:
                length = sock.recv_into(buf, 0, socket.MSG_TRUNC)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped part of the dump: as good as interrupted
                    stats.interrupted = True
                    return
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # RECEIVE_TIMEOUT_SECONDS passed
                    raise ConntrackError(errno.ETIMEDOUT, describe_error(errno.ETIMEDOUT)) from exc
                raise ConntrackError(exc.errno or errno.EIO, describe_error(exc.errno or errno.EIO)) from exc
            # A batch larger than the buffer was cut short: decode_chunk counts its cut message as malformed.
            length = min(length, len(buf))
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
