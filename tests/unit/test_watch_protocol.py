"""The list and watch wire formats: pages and events are read as the API writes them, anything else raises
ProtocolError, and API errors carry their Status code, message and Retry-After."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from khan.inventory.watch_protocol import (
    GONE,
    ApiStatusError,
    ListPage,
    ProtocolError,
    WatchEvent,
    parse_event,
    parse_list_page,
    retry_after_seconds,
    status_error,
)


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


def pod(name: str, resource_version: str = "100") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": resource_version},
        "status": {"podIP": "10.244.1.1"},
    }


def event(event_type: str, obj: Any) -> bytes:
    return encoded({"type": event_type, "object": obj})


def gone_status(message: str = "too old resource version: 100 (200)") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
        "code": 410,
    }


# parse_list_page


def test_list_page_items_version_and_continue() -> None:
    body = encoded(
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "12345", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},
            "items": [pod("a"), pod("b")],
        }
    )
    page = parse_list_page(body)
    assert page == ListPage([pod("a"), pod("b")], "12345", "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ")
    assert [item["metadata"]["name"] for item in page.items] == ["a", "b"]


def test_last_list_page_has_no_continue_token() -> None:
    page = parse_list_page(encoded({"metadata": {"resourceVersion": "7"}, "items": [pod("a")]}))
    assert page.continue_token == ""
    page = parse_list_page(encoded({"metadata": {"resourceVersion": "7", "continue": None}, "items": []}))
    assert page.continue_token == ""


def test_list_page_without_items_is_empty() -> None:
    assert parse_list_page(encoded({"metadata": {"resourceVersion": "7"}})) == ListPage([], "7", "")
    assert parse_list_page(encoded({"metadata": {"resourceVersion": "7"}, "items": None})).items == []


def test_list_page_junk_items_are_dropped() -> None:
    body = encoded({"metadata": {"resourceVersion": "7"}, "items": [None, "pod", 5, ["a"], pod("a"), {}]})
    assert parse_list_page(body).items == [pod("a"), {}]


@pytest.mark.parametrize(
    "document",
    [
        {"metadata": {"resourceVersion": "7"}, "items": {"a": pod("a")}},
        {"metadata": {"resourceVersion": "7"}, "items": "[]"},
        {"metadata": {"resourceVersion": "7"}, "items": 0},
    ],
)
def test_list_page_with_items_not_a_list_is_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="items is not a list"):
        parse_list_page(encoded(document))


@pytest.mark.parametrize(
    "document",
    [
        {"items": []},
        {"metadata": None, "items": []},
        {"metadata": ["resourceVersion", "7"], "items": []},
        {"metadata": {}, "items": []},
        {"metadata": {"resourceVersion": ""}, "items": []},
        {"metadata": {"resourceVersion": 7}, "items": []},
    ],
)
def test_list_page_without_resource_version_is_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="resourceVersion"):
        parse_list_page(encoded(document))


def test_list_page_with_a_continue_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ProtocolError, match="continue"):
        parse_list_page(encoded({"metadata": {"resourceVersion": "7", "continue": 3}, "items": []}))


@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b'{"items": [', b"\xff\xfe"])
def test_list_page_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_list_page(body)


@pytest.mark.parametrize("body", [b"[]", b"[{}]", b'"PodList"', b"42", b"null", b"true"])
def test_list_page_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        parse_list_page(body)


# parse_event


@pytest.mark.parametrize("event_type", ["ADDED", "MODIFIED", "DELETED"])
def test_object_events(event_type: str) -> None:
    parsed = parse_event(event(event_type, pod("a", "345")))
    assert parsed == WatchEvent(event_type, pod("a", "345"), "345")


def test_bookmark_event_carries_only_a_resource_version() -> None:
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "9001"}}
    parsed = parse_event(event("BOOKMARK", bookmark))
    assert (parsed.type, parsed.resource_version) == ("BOOKMARK", "9001")
    assert parsed.object == bookmark


def test_event_line_may_end_in_a_newline() -> None:
    assert parse_event(event("ADDED", pod("a", "5")) + b"\n").resource_version == "5"


def test_event_without_a_readable_resource_version_has_none() -> None:
    assert parse_event(event("ADDED", {"kind": "Pod"})).resource_version == ""
    assert parse_event(event("ADDED", {"metadata": None})).resource_version == ""
    assert parse_event(event("ADDED", {"metadata": {"resourceVersion": 345}})).resource_version == ""


def test_error_event_gone_raises_with_its_code_and_message() -> None:
    with pytest.raises(ApiStatusError) as raised:
        parse_event(event("ERROR", gone_status()))
    assert raised.value.code == GONE == 410
    assert raised.value.message == "too old resource version: 100 (200)"
    assert raised.value.retry_after is None
    assert str(raised.value) == "410: too old resource version: 100 (200)"


def test_error_event_without_a_code_is_500() -> None:
    with pytest.raises(ApiStatusError) as raised:
        parse_event(event("ERROR", {"kind": "Status", "message": "internal error"}))
    assert (raised.value.code, raised.value.message) == (500, "internal error")

    with pytest.raises(ApiStatusError) as raised:
        parse_event(event("ERROR", {"kind": "Status", "code": "410"}))
    assert (raised.value.code, raised.value.message) == (500, "watch error")


@pytest.mark.parametrize("event_type", ["UPDATED", "added", "", None, 1])
def test_event_of_unknown_type_is_refused(event_type: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown shape"):
        parse_event(event(event_type, pod("a")))


def test_event_without_a_type_is_refused() -> None:
    with pytest.raises(ProtocolError):
        parse_event(encoded({"object": pod("a")}))


@pytest.mark.parametrize("obj", [None, "a pod", [pod("a")], 7])
def test_event_whose_object_is_not_an_object_is_refused(obj: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown shape"):
        parse_event(event("ADDED", obj))
    # Even an ERROR must carry a Status object.
    with pytest.raises(ProtocolError):
        parse_event(event("ERROR", obj))


@pytest.mark.parametrize("line", [b"", b"{", b"not json"])
def test_event_that_is_not_json_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_event(line)


def test_event_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        parse_event(b'["ADDED", {}]')


# status_error


def test_status_error_takes_the_message_from_a_status_body() -> None:
    body = encoded(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": 'pods is forbidden: User "system:anonymous" cannot list resource "pods"',
            "reason": "Forbidden",
            "code": 403,
        }
    )
    error = status_error(403, "Forbidden", body, None)
    assert isinstance(error, ApiStatusError)
    assert error.code == 403
    assert error.message == 'pods is forbidden: User "system:anonymous" cannot list resource "pods"'
    assert error.retry_after is None


def test_status_error_with_a_body_that_is_not_json_uses_the_reason() -> None:
    error = status_error(502, "Bad Gateway", b"<html>upstream down</html>", None)
    assert (error.code, error.message) == (502, "Bad Gateway")
    assert str(error) == "502: Bad Gateway"


def test_status_error_with_a_json_body_without_a_message_uses_the_reason() -> None:
    assert status_error(403, "Forbidden", b'{"kind": "Status"}', None).message == "Forbidden"
    assert status_error(403, "Forbidden", b'["message"]', None).message == "Forbidden"
    assert status_error(403, "Forbidden", b'{"message": ""}', None).message == "Forbidden"


def test_status_error_without_reason_or_body() -> None:
    assert status_error(500, "", b"", None).message == "error"


def test_status_error_reads_retry_after() -> None:
    error = status_error(429, "Too Many Requests", b'{"message": "slow down"}', "7")
    assert (error.code, error.message, error.retry_after) == (429, "slow down", 7.0)
    assert status_error(429, "Too Many Requests", b"", "soon").retry_after is None


# retry_after_seconds


@pytest.mark.parametrize("value", [None, "", "abc", "  ", "-5", "1.5", "Someday, 99 Foo 2024"])
def test_retry_after_absent_or_unreadable(value: str | None) -> None:
    assert retry_after_seconds(value) is None


def test_retry_after_in_seconds() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(" 3 ") == 3.0
    assert retry_after_seconds("0") == 0.0


def test_retry_after_as_a_future_http_date() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_seconds(header)
    assert seconds is not None
    assert 25 <= seconds <= 31


def test_retry_after_as_a_past_http_date_is_now() -> None:
    header = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(header) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
