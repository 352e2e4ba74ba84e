"""The Kubernetes list and watch wire formats, as raw dicts: pages, events, Status errors, Retry-After; and the
typed outcomes a transport gives the reflector (`TransportError`, `ApiStatusError`, `StreamEnd`).

Pure functions over bytes, so that the reflector's decisions can be tested without a server. Nothing here
trusts the server's answer: anything of the wrong shape raises `ProtocolError` with what was wrong.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

GONE = 410  # the resourceVersion asked for is older than what the server still remembers: list again
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


class ProtocolError(Exception):
    """The server's answer is not what the list or watch protocol says it should be."""


class TransportError(Exception):
    """The request never got an HTTP answer, or its stream broke; `code` is "connection" or "timeout"."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class StreamEnd(enum.Enum):
    """How a watch stream ended without an error."""

    CLOSED = "closed"  # the server ended it (its timeoutSeconds ran out): routine
    SILENT = "silent"  # nothing arrived within the inactivity limit: presumed dead


class ApiStatusError(Exception):
    """The API refused a request: an HTTP error status, or an ERROR event inside a watch stream."""

    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ListPage:
    items: list[Mapping[str, Any]]
    resource_version: str
    continue_token: str


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    object: Mapping[str, Any]
    resource_version: str  # "" if the object carries none


def parse_list_page(body: bytes) -> ListPage:
    document = _json_object(body)
    items = document.get("items")
    if items is None:
        items = []  # an empty list may come without the key
    if not isinstance(items, list):
        raise ProtocolError("list answer: items is not a list")
    meta = document.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    resource_version = meta.get("resourceVersion")
    if not isinstance(resource_version, str) or not resource_version:
        raise ProtocolError("list answer without metadata.resourceVersion")
    continue_token = meta.get("continue") or ""
    if not isinstance(continue_token, str):
        raise ProtocolError("list answer: metadata.continue is not a string")
    return ListPage([item for item in items if isinstance(item, Mapping)], resource_version, continue_token)


def parse_event(line: bytes) -> WatchEvent:
    """One line of a watch stream. An ERROR event raises ApiStatusError with its Status code (410 for Gone)."""
    document = _json_object(line)
    event_type = document.get("type")
    obj = document.get("object")
    if event_type not in EVENT_TYPES or not isinstance(obj, Mapping):
        raise ProtocolError(f"watch event of unknown shape (type {event_type!r})")
    if event_type == "ERROR":
        code = obj.get("code")
        raise ApiStatusError(code if isinstance(code, int) else 500, _message(obj, "watch error"))
    meta = obj.get("metadata")
    resource_version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return WatchEvent(str(event_type), obj, resource_version if isinstance(resource_version, str) else "")


def status_error(code: int, reason: str, body: bytes, retry_after: str | None) -> ApiStatusError:
    """An HTTP error answer -> the error, with the Status object's message when the body holds one."""
    message = reason or "error"
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, Mapping):
        message = _message(document, message)
    return ApiStatusError(code, message, retry_after_seconds(retry_after))


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) -> seconds from now; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to isdigit() but not to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


def _json_object(data: bytes) -> Mapping[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise ProtocolError("not a JSON object")
    return document


def _message(status: Mapping[str, Any], default: str) -> str:
    message = status.get("message")
    return message if isinstance(message, str) and message else default
