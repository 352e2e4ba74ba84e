"""What /proc says of a process, for the benchmarks: CPU time and memory."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of every thread of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state); utime and stime are 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mib(pid: int | str, field: str = "VmRSS") -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB; pid "self" for this process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)
