"""Entering a named network namespace (under /run/netns) for the calling thread, through pyroute2.

setns(2) applies to one thread; sockets opened while inside keep that namespace after the thread leaves, so
the agent can serve HTTP from its own namespace and read another namespace's table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class NamespaceError(OSError):
    """The named network namespace could not be entered."""


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body inside network namespace `name`; None is the thread's own namespace."""
    if name is None:
        yield
        return
    from pyroute2 import netns

    # This thread's own namespace, to return to (pyroute2's pushns saves the process's, not the thread's).
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            netns.setns(name, flags=0)  # flags=0: never create a namespace that is not there
        except OSError as exc:
            raise NamespaceError(
                exc.errno, f"cannot enter network namespace {name!r}: {os.strerror(exc.errno or 0)}"
            ) from exc
        try:
            yield
        finally:
            netns.setns(home)
    finally:
        os.close(home)
