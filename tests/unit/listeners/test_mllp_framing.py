"""MLLP framing and deframing (streams/listeners/mllp.py ``MllpDeframer``): no network."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.listeners.mllp import (
    HEAD_BYTES,
    Frame,
    FrameEvent,
    FrameTooLarge,
    Garbage,
    IncompleteFrame,
    MllpDeframer,
    frame,
)

MSG = b"MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260105120000+0100||ORU^R01|C1|P|2.5.1\rPID|1||P001\r"


def frames(events: list[FrameEvent]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, Frame)]


def feed_all(deframer: MllpDeframer, *chunks: bytes) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    for chunk in chunks:
        events += deframer.feed(chunk)
    return events


def test_frame_wraps_in_start_block_and_trailer() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"


def test_one_frame_in_one_read() -> None:
    assert MllpDeframer().feed(frame(MSG)) == [Frame(MSG)]


def test_a_frame_split_at_every_byte_boundary() -> None:
    data = frame(MSG)
    for cut in range(1, len(data)):
        deframer = MllpDeframer()
        assert feed_all(deframer, data[:cut], data[cut:]) == [Frame(MSG)], cut


def test_a_frame_fed_one_byte_at_a_time() -> None:
    deframer = MllpDeframer()
    data = frame(MSG) * 3
    events = feed_all(deframer, *(data[i : i + 1] for i in range(len(data))))
    assert events == [Frame(MSG)] * 3


def test_trailer_split_between_fs_and_cr() -> None:
    deframer = MllpDeframer()
    assert deframer.feed(b"\x0b" + MSG + b"\x1c") == []
    assert deframer.feed(b"\r") == [Frame(MSG)]


def test_several_frames_in_one_read_in_order() -> None:
    payloads = [MSG.replace(b"C1", f"C{n}".encode()) for n in range(5)]
    data = b"".join(frame(p) for p in payloads)
    assert MllpDeframer().feed(data) == [Frame(p) for p in payloads]


def test_stray_lf_and_whitespace_between_frames_are_tolerated() -> None:
    data = frame(MSG) + b"\n" + frame(MSG) + b"\r\n" + b"  \t" + frame(MSG) + b"\n"
    assert MllpDeframer().feed(data) == [Frame(MSG)] * 3


def test_stray_lf_split_from_its_frame() -> None:
    deframer = MllpDeframer()
    assert feed_all(deframer, frame(MSG), b"\n", frame(MSG), b"\n") == [Frame(MSG)] * 2
    assert deframer.close() == []


def test_bytes_outside_a_block_are_reported_not_answered() -> None:
    events = MllpDeframer().feed(b"hello" + frame(MSG) + b"xy")
    assert events == [Garbage(5), Frame(MSG), Garbage(2)]


def test_unframed_message_is_garbage() -> None:
    deframer = MllpDeframer()
    assert deframer.feed(MSG) == [Garbage(len(MSG.translate(None, b" \t\r\n")))]
    assert deframer.close() == []


def test_fs_without_cr_stays_in_the_message() -> None:
    assert MllpDeframer().feed(b"\x0bA\x1cB\x1c\r") == [Frame(b"A\x1cB")]


def test_empty_frame() -> None:
    assert MllpDeframer().feed(b"\x0b\x1c\r") == [Frame(b"")]


def test_new_start_block_inside_a_frame_drops_the_unfinished_one() -> None:
    events = MllpDeframer().feed(b"\x0bPARTIAL" + frame(MSG))
    assert events == [IncompleteFrame(7), Frame(MSG)]


def test_end_of_stream_inside_a_frame() -> None:
    deframer = MllpDeframer()
    assert deframer.feed(b"\x0b" + MSG[:20]) == []
    assert deframer.close() == [IncompleteFrame(20)]


def test_frame_at_the_size_limit_is_accepted() -> None:
    payload = b"M" * 2000
    assert MllpDeframer(max_frame_bytes=2000).feed(frame(payload)) == [Frame(payload)]


def test_oversize_frame_in_one_read() -> None:
    payload = b"MSH|" + b"x" * 9000
    deframer = MllpDeframer(max_frame_bytes=2000)
    events = deframer.feed(frame(payload) + frame(MSG))
    assert events == [FrameTooLarge(len(payload), payload[:HEAD_BYTES]), Frame(MSG)]


def test_oversize_frame_streamed_is_dropped_without_buffering() -> None:
    payload = b"MSH|" + bytes(range(32, 127)) * 1000  # 95,004 bytes
    data = frame(payload) + frame(MSG)
    deframer = MllpDeframer(max_frame_bytes=4096)
    events: list[FrameEvent] = []
    biggest = 0
    for start in range(0, len(data), 1000):
        events += deframer.feed(data[start : start + 1000])
        biggest = max(biggest, len(deframer._buffer))
    assert events == [FrameTooLarge(len(payload), payload[:HEAD_BYTES]), Frame(MSG)]
    assert biggest <= 4096 + 1000


def test_oversize_frame_whose_trailer_is_split() -> None:
    payload = b"y" * 5000
    data = frame(payload)
    deframer = MllpDeframer(max_frame_bytes=1024)
    events = feed_all(deframer, data[:-1], data[-1:], frame(MSG))
    assert events == [FrameTooLarge(5000, payload[:HEAD_BYTES]), Frame(MSG)]


def test_oversize_frame_cut_by_a_new_start_block() -> None:
    deframer = MllpDeframer(max_frame_bytes=1024)
    events = feed_all(deframer, b"\x0b" + b"z" * 3000, frame(MSG))
    assert events == [IncompleteFrame(3000), Frame(MSG)]


def test_oversize_frame_at_end_of_stream() -> None:
    deframer = MllpDeframer(max_frame_bytes=1024)
    assert deframer.feed(b"\x0b" + b"z" * 3000) == []
    assert deframer.close() == [IncompleteFrame(3000)]


payload_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(payload_bytes, min_size=1, max_size=6),
    separators=st.lists(st.sampled_from([b"", b"\n", b"\r\n", b" "]), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_any_split_of_any_frame_sequence_yields_the_frames(
    payloads: list[bytes], separators: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(frame(p) + s for p, s in zip(payloads, separators, strict=False))
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    deframer = MllpDeframer(max_frame_bytes=1024)
    events = feed_all(deframer, *(data[a:b] for a, b in itertools.pairwise(points)))
    assert events == [Frame(p) for p in payloads]
    assert deframer.close() == []
