"""An event shape checks the bytes its template checks, and the message's length and kind besides, and reads the
Flow its template reads: for every shape of the recorded lab dump, as a NEW and as a DESTROY."""

from __future__ import annotations

from khan.conntrack.decode import CT_DELETE_TYPE, CT_ENTRY_TYPE, Flow, Template, decode_chunk
from khan.conntrack.event_shapes import event_shape, matches, read
from tests.unit.test_event_reader_losses import as_destroy, recorded_messages


def templates_of(messages: list[bytes]) -> dict[int, list[Template]]:
    templates: dict[int, list[Template]] = {}
    for message in messages:
        decode_chunk(message, len(message), [], templates)
    return templates


def test_each_shape_accepts_what_its_template_reads_and_reads_the_same_flow() -> None:
    messages = recorded_messages()
    templates = templates_of(messages)
    checked = 0
    for message in messages:
        for kind, bytes_ in ((CT_ENTRY_TYPE, message), (CT_DELETE_TYPE, as_destroy(message))):
            flows: list[Flow] = []
            destroyed: list[Flow] = []
            decode_chunk(bytes_, len(bytes_), flows, templates, destroyed)
            shapes = [event_shape(template, kind) for template in templates[len(bytes_)]]
            found = [read(shape, bytes_) for shape in shapes if matches(shape, bytes_)]
            assert found[:1] == flows + destroyed
            assert all(shape.opened == (kind == CT_ENTRY_TYPE) for shape in shapes)
            checked += 1
    assert checked == 2 * len(messages) >= 10


def test_a_changed_header_byte_or_the_other_kind_is_not_accepted() -> None:
    messages = recorded_messages()
    templates = templates_of(messages)
    message = messages[0]
    shape = next(s for t in templates[len(message)] if matches(s := event_shape(t, CT_ENTRY_TYPE), message))
    assert not matches(shape, as_destroy(message))  # a DESTROY is another shape
    for offset in (0, 4, 16, 20):  # the length, the type, nfgenmsg's family, the first attribute's header
        changed = bytearray(message)
        changed[offset] ^= 1
        assert not matches(shape, changed)
