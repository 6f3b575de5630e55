"""Records leave the merge in timestamp order, never ahead of a partition that is behind."""

from hypothesis import given
from hypothesis import strategies as st

from streams.web.merge import Merger
from streams.web.readmodel import Incoming, Source


def rec(source: Source, offset: int, ts: int, partition: int = 0) -> Incoming:
    return Incoming(source, partition, offset, ts, b"{}")


def test_an_infusion_fetched_late_still_comes_before_the_labs_after_it() -> None:
    merger = Merger()
    labs = [rec(Source.LABS, i, ts) for i, ts in enumerate((20, 30, 40))]
    merger.add(labs)
    clinical = (Source.CLINICAL, 0)
    # the clinical partition holds unread records: nothing may pass it
    assert merger.release({clinical: True, (Source.LABS, 0): False}, now=0, limit=10) == []
    infusion = rec(Source.CLINICAL, 0, 10)
    merger.add([infusion])
    released = merger.release({clinical: False, (Source.LABS, 0): False}, now=0, limit=10)
    assert released == [infusion, *labs]


def test_equal_timestamps_put_clinical_before_labs_before_alerts_before_acks() -> None:
    merger = Merger()
    records = [rec(source, 0, 5) for source in reversed(Source)]
    merger.add(records)
    released = merger.release({}, now=0, limit=10)
    assert [r.source for r in released] == list(Source)


def test_a_stalled_partition_blocks_only_for_the_stall_time() -> None:
    merger = Merger(stall_s=5)
    merger.add([rec(Source.LABS, 0, 1)])
    stalled = {(Source.ACKS, 0): True}
    assert merger.release(stalled, now=100, limit=10) == []
    assert merger.release(stalled, now=104, limit=10) == []
    assert len(merger.release(stalled, now=105.5, limit=10)) == 1


@given(
    st.lists(st.tuples(st.sampled_from(list(Source)), st.integers(0, 50)), max_size=40),
    st.lists(st.integers(1, 7), min_size=1, max_size=10),
)
def test_any_fetch_pattern_releases_the_same_sequence(
    spec: list[tuple[Source, int]], chunks: list[int]
) -> None:
    # per-partition offsets rise with timestamps, as the producers here send them
    per_source: dict[Source, list[int]] = {}
    for source, ts in spec:
        per_source.setdefault(source, []).append(ts)
    streams = {
        source: [rec(source, i, ts) for i, ts in enumerate(sorted(stamps))]
        for source, stamps in per_source.items()
    }
    expected = sorted((r for s in streams.values() for r in s), key=lambda r: r.order)
    merger = Merger()
    fetched = {source: 0 for source in streams}
    out: list[Incoming] = []
    step = 0
    while len(out) < len(expected):
        for source, records in streams.items():  # fetch a few of each partition
            take = chunks[step % len(chunks)]
            merger.add(records[fetched[source] : fetched[source] + take])
            fetched[source] = min(len(records), fetched[source] + take)
            step += 1
        unread = {(s, 0): fetched[s] < len(r) for s, r in streams.items()}
        out += merger.release(unread, now=0, limit=chunks[0])
    assert out == expected
