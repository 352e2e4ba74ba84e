"""/flows' first N records are a slice of the bytes encoded once per poll, and read exactly as json.dumps of
those records did."""

from __future__ import annotations

import json

from khan.web.json_views import JsonList


def test_every_prefix_is_the_json_of_the_first_records() -> None:
    records = [{"uid": f"10.0.0.{i}:80->10.0.1.1:443#{i}", "value": i * 1000, "note": 'é"'} for i in range(25)]
    encoded = JsonList.of(records)
    assert encoded.body == json.dumps(records).encode()
    for count in (1, 2, 10, 24, 25, 100, 10_000):
        assert encoded.first(count) == json.dumps(records[:count]).encode()
        assert json.loads(encoded.first(count)) == records[:count]


def test_no_records() -> None:
    assert JsonList.of([]).first(100) == b"[]"
