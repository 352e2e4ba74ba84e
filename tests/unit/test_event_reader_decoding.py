"""The event reader decodes a read holding one entry of a known shape itself, without decode_chunk: whatever the
reads hold (shapes seen before or not, NEW and DESTROY, two messages in one read, a cut or lying header), it
hands over exactly the events decode_chunk finds, in the stream's order, and counts the same malformed ones."""

from __future__ import annotations

import struct

from khan.conntrack.decode import Flow, decode_chunk
from khan.conntrack.events import Event, EventReader
from tests.unit.test_event_reader_losses import Listener, ScriptedSocket, as_destroy, recorded_messages


def expected_events(reads: list[bytes]) -> tuple[list[tuple[bool, Flow]], int]:
    """What decode_chunk makes of each read on its own: (events in order, malformed)."""
    events: list[tuple[bool, Flow]] = []
    malformed = 0
    templates: dict[int, list[object]] = {}
    for read in reads:
        opened: list[Flow] = []
        destroyed: list[Flow] = []
        result = decode_chunk(read, len(read), opened, templates, destroyed)  # type: ignore[arg-type]
        malformed += result.malformed
        events += [(True, flow) for flow in opened] + [(False, flow) for flow in destroyed]
    return events, malformed


class Recorder(Listener):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def handle(self, events: list[Event], now: int) -> None:
        self.events += events


def test_every_read_gives_what_decode_chunk_gives_in_order() -> None:
    messages = recorded_messages()
    cut = messages[1][: len(messages[1]) - 4]  # shorter than its header says
    lying = struct.pack("=I", 8) + messages[2][4:]  # a length below the header's own
    unknown_kind = messages[0][:4] + struct.pack("=H", (1 << 8) | 7) + messages[0][6:]
    reads = (
        messages
        + [as_destroy(message) for message in messages]
        + messages[::-1]
        + [messages[0] + messages[1], cut, lying, unknown_kind, as_destroy(messages[3]) + messages[4]]
        + messages[:5]
    )
    expected, malformed = expected_events(reads)
    recorder = Recorder()
    reader = EventReader(recorder.handle, recorder)
    reader._sock = ScriptedSocket(list(reads), drops=0)  # type: ignore[assignment]  # what start() would have opened
    reader.catch_up()
    assert [tuple(event) for event in recorder.events] == expected
    assert all(type(event) is Event and type(event.flow) is Flow for event in recorder.events)
    assert reader.stats.malformed == malformed > 0
    assert reader.stats.new == sum(opened for opened, _ in expected)
    assert reader.stats.destroy == len(expected) - reader.stats.new
