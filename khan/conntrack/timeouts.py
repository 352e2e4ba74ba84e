"""The state timeouts of the calling thread's network namespace, as its sysctls say: what a conntrack entry's timer
is set back to on every packet, from which its remaining timeout tells how long it has been idle. Read only.

Each namespace has its own values (net.netfilter is per namespace), so they are read where the table is dumped,
at every poll: a changed sysctl is seen by the next one.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

SYSCTL_DIRECTORY = Path("/proc/sys/net/netfilter")


class StateTimeouts(NamedTuple):
    """Seconds, as the sysctls nf_conntrack_<name> hold them; None where one could not be read."""

    tcp_timeout_established: int | None
    # An ESTABLISHED entry's timer is set to these instead while data is unacknowledged, after too many
    # retransmissions or on a zero window, or on an RST that leaves it ESTABLISHED (nf_conntrack_proto_tcp.c),
    # when they are the shorter.
    tcp_timeout_unacknowledged: int | None
    tcp_timeout_max_retrans: int | None
    tcp_timeout_close: int | None  # also set by an in-window RST the entry stays ESTABLISHED through
    udp_timeout: int | None  # unreplied, or replied within its first two seconds
    udp_timeout_stream: int | None  # ASSURED: replied, and still used after two seconds


def read_state_timeouts(directory: Path = SYSCTL_DIRECTORY) -> StateTimeouts:
    """The sysctls of this thread's namespace (their directory resolves by the reader's namespace when opened)."""
    return StateTimeouts(*(_read_seconds(directory / f"nf_conntrack_{name}") for name in StateTimeouts._fields))


def _read_seconds(path: Path) -> int | None:
    try:
        value = int(path.read_bytes().strip())
    except (OSError, ValueError):  # no conntrack module, a sysctl this kernel lacks, or not a number
        return None
    return value if value >= 0 else None
