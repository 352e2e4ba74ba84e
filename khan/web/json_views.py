"""k8sconntrack's /transactions and /flows, encoded once per poll (off the event loop, next to /metrics): a
request is then a slice of bytes, never 10,000 records turned into JSON on the loop the probes share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from khan.attribution.labels import address_text
from khan.counting.heaviest import HeavyFlow
from khan.polling.result import PollResult

ITEM_SEPARATOR = b", "  # json.dumps' own, so the bodies read as they did when encoded per request


@dataclass(frozen=True, slots=True)
class JsonList:
    """A JSON array's bytes, and where each item ends in them: its first N items are one slice."""

    body: bytes
    ends: tuple[int, ...]  # the offset just past each item

    @classmethod
    def of(cls, records: Sequence[object]) -> JsonList:
        items = [json.dumps(record).encode() for record in records]
        ends, offset = [], 1  # past "["
        for index, item in enumerate(items):
            offset += len(item) + (len(ITEM_SEPARATOR) if index else 0)
            ends.append(offset)
        return cls(b"[" + ITEM_SEPARATOR.join(items) + b"]", tuple(ends))

    def first(self, count: int) -> bytes:
        if count >= len(self.ends):
            return self.body
        return self.body[: self.ends[count - 1]] + b"]" if count > 0 else b"[]"


@dataclass(frozen=True, slots=True)
class JsonViews:
    transactions: bytes
    flows: JsonList


EMPTY = JsonViews(b"[]", JsonList(b"[]", ()))


def render_json_views(last: PollResult | None) -> JsonViews:
    """The last successful poll's views; run in the rendering thread."""
    if last is None or last.counters is None:
        return EMPTY
    transactions = [
        {"serviceID": service, "endpointCounter": dict(sorted(counts.items()))}
        for service, counts in sorted(last.counters.endpoints.items())
    ]
    flows = [flow_record(heavy, last.finished_at) for heavy in last.counters.heaviest]
    return JsonViews(json.dumps(transactions).encode(), JsonList.of(flows))


def flow_record(heavy: HeavyFlow, timestamp: float) -> dict[str, object]:
    """One current connection in k8sconntrack's /flows shape; `value` is both directions' bytes."""
    flow = heavy.flow
    source, destination = address_text(flow.src), address_text(flow.dst)
    return {
        "uid": f"{_host_port(source, flow.sport)}->{_host_port(destination, flow.dport)}#{heavy.first_seen}",
        "source": source,
        "destination": destination,
        "value": heavy.total_bytes,
        "timestamp": int(timestamp),
    }


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
