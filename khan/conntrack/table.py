"""Table statistics through pyroute2 (low volume, so its cost does not matter): entry count, limit, per-CPU
event counters; and whether byte/packet accounting is on. Read only, but for `enable_accounting`, which runs
only when the operator asks for it (--enable-accounting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
MAX_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_max")


class TableStats(NamedTuple):
    entries: int | None
    limit: int | None
    accounting: bool | None
    events: dict[str, int]  # CTA_STATS_* summed over CPUs, lower-case without the prefix ("drop", "early_drop")


def read_table_stats() -> TableStats:
    """Statistics of the conntrack table of the calling thread's network namespace. Missing pieces are None."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    entries = limit = None
    events: dict[str, int] = {}
    with NFCTSocket() as sock:
        for msg in sock.count():
            entries = _int_or_none(msg.get_attr("CTA_STATS_GLOBAL_ENTRIES"))
            limit = _int_or_none(msg.get_attr("CTA_STATS_GLOBAL_MAX_ENTRIES"))
        for msg in sock.stat():
            for name, value in msg.get("attrs", ()):
                if isinstance(value, int) and name.startswith("CTA_STATS_"):
                    key = name.removeprefix("CTA_STATS_").lower()
                    events[key] = events.get(key, 0) + value
    if limit is None:  # kernels before CTA_STATS_GLOBAL_MAX_ENTRIES
        limit = _read_int(MAX_SYSCTL)
    accounting = _read_int(ACCT_SYSCTL)
    return TableStats(entries, limit, None if accounting is None else accounting != 0, events)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def enable_accounting() -> bool:
    """Set nf_conntrack_acct=1 in the calling thread's namespace; True if it was off. Only on explicit request."""
    if _read_int(ACCT_SYSCTL) != 0:
        return False
    ACCT_SYSCTL.write_text("1\n")
    return True
