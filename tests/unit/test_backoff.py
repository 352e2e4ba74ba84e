"""Backoff: each failure doubles the step up to the maximum, the delay falls between half the step and the step,
success starts over, and a server's Retry-After lengthens the delay within a bound."""

from __future__ import annotations

import pytest

from khan.inventory.backoff import INITIAL_SECONDS, MAXIMUM_RETRY_AFTER_SECONDS, MAXIMUM_SECONDS, Backoff


def fixed(fraction: float) -> Backoff:
    return Backoff(initial=1.0, maximum=16.0, random_fraction=lambda: fraction)


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_delay_with_no_jitter_is_half_the_step() -> None:
    assert delays(fixed(0.0), 5) == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_delay_with_full_jitter_is_the_whole_step() -> None:
    assert delays(fixed(1.0), 5) == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_delay_with_half_jitter_is_three_quarters_of_the_step() -> None:
    assert delays(fixed(0.5), 3) == [0.75, 1.5, 3.0]


def test_random_fraction_is_drawn_for_every_delay() -> None:
    fractions = iter([0.0, 1.0, 0.0, 1.0])
    backoff = Backoff(initial=1.0, maximum=16.0, random_fraction=lambda: next(fractions))
    assert delays(backoff, 4) == [0.5, 2.0, 2.0, 8.0]


def test_step_stops_at_the_maximum() -> None:
    assert delays(fixed(1.0), 8) == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0]
    assert delays(fixed(0.0), 8)[-3:] == [8.0, 8.0, 8.0]


def test_step_that_overshoots_the_maximum_is_cut_to_it() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0, random_fraction=lambda: 1.0)
    assert delays(backoff, 5) == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_defaults_go_from_half_a_second_to_thirty() -> None:
    backoff = Backoff(random_fraction=lambda: 1.0)
    assert backoff.next_delay() == INITIAL_SECONDS == 0.5
    later = delays(backoff, 20)
    assert max(later) == MAXIMUM_SECONDS == 30.0
    assert later[-1] == 30.0


def test_default_jitter_stays_within_the_step() -> None:
    backoff = Backoff(initial=1.0, maximum=16.0)
    for failure, delay in enumerate(delays(backoff, 10)):
        step = min(16.0, 2.0**failure)
        assert step / 2 <= delay <= step


def test_failures_count_and_reset_starts_over() -> None:
    backoff = fixed(1.0)
    assert backoff.failures == 0
    assert delays(backoff, 4) == [1.0, 2.0, 4.0, 8.0]
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.failures == 0
    assert delays(backoff, 2) == [1.0, 2.0]
    assert backoff.failures == 2


def test_reset_when_nothing_failed_is_harmless() -> None:
    backoff = fixed(1.0)
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0


def test_retry_after_lengthens_a_shorter_delay() -> None:
    backoff = fixed(1.0)
    assert backoff.next_delay(retry_after=7.0) == 7.0
    assert backoff.failures == 1
    # The step went on doubling underneath.
    assert backoff.next_delay() == 2.0


def test_retry_after_shorter_than_the_delay_changes_nothing() -> None:
    backoff = fixed(1.0)
    delays(backoff, 4)
    assert backoff.next_delay(retry_after=3.0) == 16.0


@pytest.mark.parametrize("retry_after", [None, 0.0, -5.0])
def test_retry_after_absent_zero_or_negative_is_ignored(retry_after: float | None) -> None:
    assert fixed(0.0).next_delay(retry_after=retry_after) == 0.5


def test_retry_after_is_obeyed_only_up_to_its_bound() -> None:
    assert MAXIMUM_RETRY_AFTER_SECONDS == 300.0
    assert fixed(1.0).next_delay(retry_after=3600.0) == MAXIMUM_RETRY_AFTER_SECONDS
    assert fixed(1.0).next_delay(retry_after=MAXIMUM_RETRY_AFTER_SECONDS) == MAXIMUM_RETRY_AFTER_SECONDS
    assert fixed(1.0).next_delay(retry_after=299.5) == 299.5


def test_retry_after_bound_does_not_shorten_a_longer_backoff() -> None:
    backoff = Backoff(initial=1000.0, maximum=1000.0, random_fraction=lambda: 1.0)
    assert backoff.next_delay(retry_after=3600.0) == 1000.0
