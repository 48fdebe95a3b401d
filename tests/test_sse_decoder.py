"""The model client's Server-Sent Events decoder: events whole, however the bytes are cut."""

from __future__ import annotations

from chambers.agent.wire import SseDecoder

STREAM = (
    b": a comment\n"
    b"event: message_start\n"
    b'data: {"a": 1}\n'
    b"\n"
    b"event: content_block_delta\r\n"
    b"data: first line\r\n"
    b"data: second line \xe2\x9c\x93\r\n"
    b"\r\n"
    b"id: 7\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EVENTS = [
    ("message_start", '{"a": 1}'),
    ("content_block_delta", "first line\nsecond line \u2713"),
    ("message", "[DONE]"),  # an event with an id and no data is no event
]


def test_a_stream_in_one_chunk() -> None:
    assert SseDecoder().feed(STREAM) == EVENTS


def test_a_stream_cut_at_every_byte_gives_the_same_events() -> None:
    decoder = SseDecoder()
    events = [event for i in range(len(STREAM)) for event in decoder.feed(STREAM[i : i + 1])]
    assert events == EVENTS  # a UTF-8 character split between chunks included


def test_an_event_waits_for_its_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: half") == []
    assert decoder.feed(b" done\n") == []
    assert decoder.feed(b"\n") == [("message", "half done")]
