"""The server's caps checked against each other: requests in flight never take every connection, so the
kubelet's probe always finds one."""

from __future__ import annotations

from structlog.testing import capture_logs

from khan.web.server import MIN_CONNECTIONS, PROBE_CONNECTIONS, request_cap


def test_a_request_cap_below_the_connection_cap_is_kept_without_a_word() -> None:
    with capture_logs() as logs:
        assert request_cap(40, 256) == 40
    assert logs == []


def test_a_request_cap_at_or_above_the_connection_cap_leaves_room_for_probes() -> None:
    for wanted in (253, 256, 1000):
        with capture_logs() as logs:
            assert request_cap(wanted, 256) == 256 - PROBE_CONNECTIONS
        assert [entry["event"] for entry in logs] == ["request_cap_lowered"]
        assert logs[0]["wanted"] == wanted


def test_the_smallest_connection_cap_still_serves_requests() -> None:
    assert request_cap(40, MIN_CONNECTIONS) == MIN_CONNECTIONS - PROBE_CONNECTIONS >= 1
    assert request_cap(1, 1) == 1  # never zero: a cap of none would answer every scrape with 503
