"""The allocator setting the agent makes at start: a large block freed goes back to the system, also after a
larger one was freed before (which, by glibc's default, would move the next large blocks into the heap)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import paths

BLOCK_MIB = 16  # below glibc's highest dynamic threshold (32 MiB on 64-bit), as a full table's dicts are
# In a fresh interpreter: free one large block (glibc then raises its mmap threshold above that size), allocate
# and touch another as large, free it, and print how much of it stayed in the RSS (MiB).
SCRIPT = f"""
import sys
from khan.allocator import return_large_blocks
if sys.argv[1] == "tuned":
    assert return_large_blocks()
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
block = bytearray({BLOCK_MIB} << 20)
del block
before = rss()
block = bytearray({BLOCK_MIB} << 20)
del block
print(rss() - before)
"""


def kept_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=paths.REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return float(done.stdout)


def test_a_freed_large_block_leaves_the_rss_once_the_threshold_is_fixed() -> None:
    assert kept_mib("default") > BLOCK_MIB / 2  # glibc's default: the second block came from the heap, and stays
    assert kept_mib("tuned") < 4
