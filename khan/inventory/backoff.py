"""Exponential backoff with jitter for retrying the Kubernetes API, honouring the server's Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable

# Half a second doubles to 30 s: an API server back from a restart is found within seconds, and a long outage
# costs each agent two requests a minute (a thousand nodes: ~33 requests a second, well inside an API server).
INITIAL_SECONDS = 0.5
MAXIMUM_SECONDS = 30.0
# A server asking for more than this is obeyed only this far: an agent must not go blind for longer.
MAXIMUM_RETRY_AFTER_SECONDS = 300.0


class Backoff:
    def __init__(
        self,
        initial: float = INITIAL_SECONDS,
        maximum: float = MAXIMUM_SECONDS,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._random = random_fraction
        self._failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt after one more failure: half the step fixed, half random, so a
        thousand agents that lost the API together do not come back together."""
        step = min(self._maximum, self._initial * 2.0**self._failures)
        self._failures += 1
        delay = step / 2 + step / 2 * self._random()
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, MAXIMUM_RETRY_AFTER_SECONDS))
        return delay

    def reset(self) -> None:
        """Success: the next failure starts again from the initial step."""
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures
