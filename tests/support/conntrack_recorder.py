"""An independent witness: the `conntrack` tool's own event stream (`conntrack -E -o extended,id,timestamp`) of
one lab namespace, parsed into records. It shares no code with khan (libnetfilter_conntrack decodes the
messages), so the tests compare khan's counters with what the kernel itself reported about every connection."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from khan.conntrack.namespace import entered
from tests.support.kube_cluster import stop_process

RECORDER_BUFFER_BYTES = 64 * 1024 * 1024  # far beyond any test's burst: the witness itself must lose nothing
SO_RCVBUFFORCE = 33  # SOL_SOCKET: a buffer beyond net.core.rmem_max (root)
SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS = 270, 9
PIDFD_GETFD = 438  # the syscall's number on every architecture (Linux 5.6+)
_EVENT = re.compile(r"^\[(\d+\.\d+)\]\s+\[(NEW|DESTROY)\]\s+ipv[46]\s+\d+\s+(\w+)\s+(\d+)\s")
_ADDRESSES = re.compile(r"\bsrc=(\S+) dst=(\S+)")
_PORTS = re.compile(r"\bsport=(\d+) dport=(\d+)")
_BYTES = re.compile(r"\bbytes=(\d+)")
_ID = re.compile(r"\bid=(\d+)")


@dataclass(frozen=True)
class Record:
    """One event as the conntrack tool printed it."""

    kind: str  # "NEW" or "DESTROY"
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str  # the endpoint that answered (the destination, unless it was translated)
    sent: int  # DESTROY only: the final counters; 0 on NEW
    received: int
    ct_id: int
    at: float  # unix time at which the tool received it: never before the kernel sent it


def parse(line: str) -> Record | None:
    """A line of `conntrack -E -o extended,id,timestamp`; None for anything else (the tool's own notices)."""
    event = _EVENT.match(line)
    if event is None:
        return None
    addresses = _ADDRESSES.findall(line)
    ports = _PORTS.findall(line)
    octets = [int(value) for value in _BYTES.findall(line)]
    ct_id = _ID.search(line)
    if len(addresses) < 2 or ct_id is None:
        raise AssertionError(f"unexpected conntrack output: {line!r}")
    sport, dport = (int(port) for port in ports[0]) if ports else (0, 0)
    sent, received = (octets[0], octets[1]) if len(octets) >= 2 else (0, 0)
    return Record(
        event.group(2),
        int(event.group(4)),
        addresses[0][0],
        addresses[0][1],
        sport,
        dport,
        addresses[1][0],
        sent,
        received,
        int(ct_id.group(1)),
        float(event.group(1)),
    )


class Recording:
    """The records so far; a thread keeps reading the tool's output."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._records: list[Record] = []
        self._notices: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = parse(line)
            with self._lock:
                if record is None:
                    self._notices.append(line.strip())
                else:
                    self._records.append(record)

    def finish(self) -> None:
        """Read to the end of the output of a tool that has exited."""
        self._reader.join(timeout=10)
        assert not self._reader.is_alive(), "the witness's output was not read to its end"

    def records(self, keep: Callable[[Record], bool] = lambda _: True) -> list[Record]:
        with self._lock:
            return [record for record in self._records if keep(record)]

    def wait_for(self, keep: Callable[[Record], bool], count: int, seconds: float = 10) -> list[Record]:
        """At least `count` records that `keep` selects, waiting for them; fails if they do not come."""
        deadline = time.monotonic() + seconds
        while True:
            found = self.records(keep)
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(found) >= count, f"the witness saw {len(found)} of {count} events; notices: {self.notices()}"
        return found

    def notices(self) -> list[str]:
        """What the tool said besides events (for instance that it lost some: then it is no witness)."""
        with self._lock:
            return list(self._notices)


def _enlarge_event_socket(pid: int) -> int:
    """Give the tool's event socket the recorder's buffer; returns the size the kernel set.

    conntrack 1.4.7 (Debian bookworm's) applies `-b` to its request socket, not to the one it reads events from,
    which keeps net.core.rmem_default (208 KiB here: ~160 events of ~1.3 KB). A dump that evicts a few hundred
    expired entries sends their DESTROY events in one burst; when the tool is not scheduled in that instant the
    kernel drops the excess (ENOBUFS). So the socket is resized from here, through a duplicate of the tool's
    descriptor (pidfd_getfd): one socket, two descriptors, and ours is closed at once."""
    with open(f"/proc/{pid}/comm") as comm:
        assert comm.read().strip() == "conntrack", "`ip netns exec` and `stdbuf` exec the tool in their own process"
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    sizes = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = libc.syscall(PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                code = ctypes.get_errno()
                raise OSError(code, f"pidfd_getfd: {os.strerror(code)}")
            with socket.socket(fileno=fd) as sock:
                if sock.family != socket.AF_NETLINK:
                    continue
                groups = int.from_bytes(sock.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 4), "little")
                if groups == 0:  # the request socket
                    continue
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECORDER_BUFFER_BYTES)
                sizes.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    finally:
        os.close(pidfd)
    assert len(sizes) == 1, f"conntrack -E holds {len(sizes)} subscribed sockets"
    return sizes[0]


MARKER_PORT = 9  # discard: nothing listens, the datagram still makes an entry (and its NEW event)


def _mark(netns: str) -> int:
    """One datagram inside the namespace from a fresh source port, a new entry whose NEW event shows that the
    recording runs; returns the port."""
    with entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(b"mark", ("127.0.0.1", MARKER_PORT))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def recording(netns: str) -> Iterator[Recording]:
    """Record NEW and DESTROY events of a named namespace's table until the block ends. Returns once the tool
    is subscribed (a marker datagram's NEW event came through); stops it, whatever happens."""
    argv = ["ip", "netns", "exec", netns, "stdbuf", "-oL", "conntrack", "-E", "-e", "NEW,DESTROY"]
    argv += ["-o", "extended,id,timestamp", "-b", str(RECORDER_BUFFER_BYTES)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    witness = Recording(process)
    try:
        markers: set[int] = set()
        deadline = time.monotonic() + 10
        while not witness.records(lambda record: record.dport == MARKER_PORT and record.sport in markers):
            assert process.poll() is None, f"conntrack -E exited: {witness.notices()}"
            assert time.monotonic() < deadline, f"conntrack -E recorded nothing: {witness.notices()}"
            markers.add(_mark(netns))  # a new entry each time: one made before the subscription has no event
            time.sleep(0.05)
        buffer = _enlarge_event_socket(process.pid)
        assert buffer >= RECORDER_BUFFER_BYTES, f"the witness's event socket has {buffer} bytes of buffer"
        # The markers go at once. With nf_conntrack_events=2 (the default since Linux 5.19) an entry made while
        # nobody listened never sends events, so a marker made before the subscription would later leave the
        # table silently, and an agent started meanwhile would count it as vanished.
        delete = ["conntrack", "-D", "-p", "udp", "--orig-src", "127.0.0.1", "--orig-port-dst", str(MARKER_PORT)]
        deleted = subprocess.run(["ip", "netns", "exec", netns, *delete], capture_output=True, text=True, check=False)
        assert deleted.returncode == 0, deleted.stderr
        yield witness
    finally:
        stop_process(process)
        witness.finish()
    # Only once the tool is gone is every line it wrote read; a witness that lost events is none.
    lost = [notice for notice in witness.notices() if "ENOBUFS" in notice]
    assert not lost, lost
