"""The connection limit an operator declares on a Service or Pod: `khan.io/max-connections: "100"`.

Only the parsed number is kept (never the annotations themselves). A value that is not a plain positive integer
up to MAX_LIMIT is INVALID: the object is counted and named in a rate-limited warning, and otherwise ignored.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from khan.logs import RateLimiter, one_line

ANNOTATION = "khan.io/max-connections"
# More connections than any node's conntrack table holds (kube-proxy sizes it at 32,768 per core, and the kernel's
# own default ceiling is 262,144): a number beyond this is a typo, not a limit.
MAX_LIMIT = 100_000_000
INVALID = 0  # the annotation is there, but its value is not a limit
# ASCII digits only: int() would also take "+5", "1_000" and other scripts' digits, which no operator means.
_DIGITS = re.compile(r"[0-9]{1,9}")

# Each object is named at most once a minute, and all of them together at most WARNINGS_PER_MINUTE times: a relist
# of a Deployment of 500 replicas with a bad template is a few lines, not 500.
WARNING_PERIOD_SECONDS = 60.0
WARNINGS_PER_MINUTE = 10

log = structlog.get_logger("khan.inventory")


def parse_limit(value: object) -> int:
    """The annotation's value -> the limit, or INVALID. Kubernetes annotations are strings; an int is accepted for
    a hand-written inventory file's unquoted `100`. Surrounding blanks are forgiven."""
    if isinstance(value, bool):
        return INVALID
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        return INVALID
    return number if 0 < number <= MAX_LIMIT else INVALID


def declared_limit(annotations: object, kind: str, ns: str, name: str) -> int | None:
    """None when the object declares no limit; else the limit, or INVALID (with a warning naming the object)."""
    if not isinstance(annotations, Mapping) or ANNOTATION not in annotations:
        return None
    value: Any = annotations[ANNOTATION]
    limit = parse_limit(value)
    if limit == INVALID:
        _warnings.warn(kind, ns, name, value)
    return limit


class _InvalidLimitWarnings:
    """Rate-limited `connection_limit_invalid` lines. Projections run on the event loop (the API inventory) or in
    a worker thread (a file reload), hence the lock."""

    def __init__(self) -> None:
        self._per_object = RateLimiter(period=WARNING_PERIOD_SECONDS)
        self._lock = threading.Lock()
        self._window_start = -WARNING_PERIOD_SECONDS
        self._in_window = 0
        self._held = 0  # objects not named because the budget was spent

    def warn(self, kind: str, ns: str, name: str, value: object) -> None:
        with self._lock:
            allowed, _ = self._per_object.allow((kind, ns, name))
            if not allowed:
                return
            now = time.monotonic()
            if now - self._window_start >= WARNING_PERIOD_SECONDS:
                self._window_start, self._in_window = now, 0
            if self._in_window >= WARNINGS_PER_MINUTE:
                self._held += 1
                return
            self._in_window += 1
            held, self._held = self._held, 0
        log.warning(
            "connection_limit_invalid",
            kind=kind,
            namespace=ns,
            name=name,
            annotation=ANNOTATION,
            value=one_line(repr(value)),
            expected=f"a whole number from 1 to {MAX_LIMIT}",
            other_objects_not_named=held,
        )


_warnings = _InvalidLimitWarnings()
