"""A bounded exit for `khan agent`: once it starts stopping, the process ends within a deadline even if a worker
thread never returns.

A thread blocked in a system call (reading a FIFO that has no writer, a file on a dead network mount) or spinning
in a bug cannot be interrupted from Python, and both asyncio.run (shutting down its default executor) and the
interpreter at exit (joining every non-daemon thread) wait for it without a time limit. The deadline is a daemon
thread: when it passes, it logs one line naming what is still running and ends the process with os._exit.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

log = structlog.get_logger("khan.agent")

ABANDONED_EXIT_STATUS = 1  # stopped, but not cleanly: something was left running
_KHAN_ROOT = Path(__file__).resolve().parent.parent  # locations are given relative to it: khan/inventory/...


class ExitDeadline:
    def __init__(self, seconds: float, exit_process: Callable[[int], object] = os._exit) -> None:
        self.seconds = seconds
        self._exit = exit_process
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        """Start counting (from the start of the shutdown); a second call changes nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._expire, name="khan-exit-deadline", daemon=True)
            self._thread.start()

    def _expire(self) -> None:
        threading.Event().wait(self.seconds)
        log.error(
            "shutdown_abandoned",
            deadline_seconds=self.seconds,
            threads=still_running(),
            main_thread_in=_where(sys._current_frames().get(threading.main_thread().ident or 0)),
            exit_status=ABANDONED_EXIT_STATUS,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._exit(ABANDONED_EXIT_STATUS)


def still_running() -> list[str]:
    """The threads that keep the process from exiting (non-daemon, other than the main thread), each with the
    innermost place in khan's code it is at ("asyncio_0 in khan/inventory/from_file.py:41 load_inventory")."""
    frames = sys._current_frames()
    main = threading.main_thread()
    return [
        f"{thread.name} in {_where(frames.get(thread.ident or 0))}"
        for thread in threading.enumerate()
        if thread is not main
        and not thread.daemon
        and thread.is_alive()
        and not thread.name.endswith("(_do_shutdown)")  # asyncio's own, waiting for the others: not news
    ]


def _where(frame: FrameType | None) -> str:
    """The innermost frame in khan's own code, else the innermost frame: `path:line function`."""
    innermost = frame
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_KHAN_ROOT / "khan"):
            return f"{path.relative_to(_KHAN_ROOT)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    if innermost is None:
        return "unknown"
    return f"{Path(innermost.f_code.co_filename).name}:{innermost.f_lineno} {innermost.f_code.co_name}"
