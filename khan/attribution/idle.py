"""Pure: how long a conntrack entry has been idle, from its remaining timeout and its state's timeout.

Every packet sets an entry's timer back to its state's timeout, so for an entry whose timer was last set that way,
idle seconds = the state's timeout - the remaining timeout (the kernel rounds the remaining seconds down: an entry
used half a second ago shows 1). Only states in which a connection is open and may simply be quiet are judged:
TCP ESTABLISHED and UDP (or UDP-Lite). Opening and closing states (SYN_SENT, TIME_WAIT, CLOSE, FIN_WAIT, ...) and
other protocols are not judged at all.

Two cases leave the idle time unknown, and the entry is not counted idle:
- ABOVE_STATE_TIMEOUT: more time remains than the state's timeout gives. Something else set the timer: a timeout
  policy (nftables `ct timeout`, the CT target), `conntrack -U --timeout`, or a sysctl lowered since the entry's
  last packet.
- SHORT_TIMER: an ESTABLISHED entry with no more than nf_conntrack_tcp_timeout_unacknowledged, _max_retrans or
  _close left. The kernel sets those shorter timers while data is unacknowledged, after retransmissions, on a zero
  window or an RST it lets through without closing, so the entry may have been used a moment ago, or have been
  silent for nearly the whole timeout.
Entries with a fixed timeout (no packet resets it) or offloaded to a flowtable (sent without a timeout) are not
judged either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from khan.conntrack.decode import IPPROTO_TCP, IPS_ASSURED, IPS_FIXED_TIMEOUT, IPS_OFFLOAD
from khan.conntrack.timeouts import StateTimeouts

TCP_ESTABLISHED: Final = 3  # enum tcp_conntrack
IPPROTO_UDP: Final = 17
IPPROTO_UDPLITE: Final = 136  # shares UDP's timeouts (nf_conntrack_proto_udp.c)

# Entries whose timer no packet resets (a fixed timeout), or that the kernel sends without one (offloaded to a
# flowtable: their timeout would read as 0, fully idle, while a flowtable forwards their packets).
_UNTIMED: Final = IPS_FIXED_TIMEOUT | IPS_OFFLOAD

NEVER_JUDGED: Final = (-1, 1 << 32)  # a quiet band holding every remaining timeout (a u32)

# What `IdleRules.verdict` says besides a number of idle seconds (which is never negative).
NOT_JUDGED: Final = -1
ABOVE_STATE_TIMEOUT: Final = -2
SHORT_TIMER: Final = -3
UNKNOWN_REASONS: Final = {ABOVE_STATE_TIMEOUT: "above_state_timeout", SHORT_TIMER: "short_timer"}

# (the state's timeout, remaining seconds at or below which the timer may be a short one), or None: not judged.
NO_SHORT_TIMER: Final = -1  # no remaining time is that low
_Limits = tuple[int, int] | None


class IdleRules:
    """The state timeouts of one poll's namespace and the idle threshold (--idle-after)."""

    def __init__(self, timeouts: StateTimeouts, idle_after: int) -> None:
        self.timeouts = timeouts
        self.idle_after = idle_after
        established = timeouts.tcp_timeout_established
        short = NO_SHORT_TIMER
        if established is not None:
            # A short timer is only ever set when it is shorter than the state's (tcp_packet()).
            shorter = (
                timeouts.tcp_timeout_unacknowledged,
                timeouts.tcp_timeout_max_retrans,
                timeouts.tcp_timeout_close,
            )
            short = max((value for value in shorter if value is not None and value < established), default=short)
        self._tcp_established: _Limits = None if established is None else (established, short)
        self._udp = _plain(timeouts.udp_timeout)
        self._udp_stream = _plain(timeouts.udp_timeout_stream)
        # By protocol, (low, high): an entry with low < remaining <= high is known not to be idle, whatever its
        # state, so judging it can be skipped (most entries of a busy table); other protocols: NEVER_JUDGED.
        self.quiet_bands = {
            IPPROTO_TCP: self._quiet_band(self._tcp_established),
            IPPROTO_UDP: self._quiet_band(self._udp, self._udp_stream),
            IPPROTO_UDPLITE: self._quiet_band(self._udp, self._udp_stream),
        }

    def limits(self, proto: int, tcp_state: int, status: int) -> _Limits:
        """The limits of an entry of this protocol, TCP state and status bits."""
        if status & _UNTIMED:
            return None
        if proto == IPPROTO_TCP:
            return self._tcp_established if tcp_state == TCP_ESTABLISHED else None
        if proto in (IPPROTO_UDP, IPPROTO_UDPLITE):
            return self._udp_stream if status & IPS_ASSURED else self._udp
        return None

    def _quiet_band(self, *judged: _Limits) -> tuple[int, int]:
        """The band of the states judged in a protocol: outside each one's idle and short-timer range."""
        low, high = NEVER_JUDGED
        for limits in judged:
            if limits is not None:
                full, short = limits
                low, high = max(low, full - self.idle_after, short), min(high, full)
        return low, high

    def verdict(self, proto: int, tcp_state: int, status: int, remaining: int) -> int:
        """Idle seconds of the entry, or NOT_JUDGED, ABOVE_STATE_TIMEOUT or SHORT_TIMER."""
        limits = self.limits(proto, tcp_state, status)
        if limits is None:
            return NOT_JUDGED
        full, short = limits
        if remaining > full:
            return ABOVE_STATE_TIMEOUT
        if remaining <= short:
            return SHORT_TIMER
        return full - remaining


def _plain(timeout: int | None) -> _Limits:
    return None if timeout is None else (timeout, NO_SHORT_TIMER)


def state_timeouts(timeouts: StateTimeouts) -> Iterator[tuple[str, str, int]]:
    """(transport, state, seconds) of each judged state whose timeout is known, states named as khan_connection's
    `state` label names them."""
    for transport, state, seconds in (
        ("tcp", "ESTABLISHED", timeouts.tcp_timeout_established),
        ("udp", "UNREPLIED", timeouts.udp_timeout),
        ("udp", "REPLIED", timeouts.udp_timeout),
        ("udp", "ASSURED", timeouts.udp_timeout_stream),
    ):
        if seconds is not None:
            yield transport, state, seconds
