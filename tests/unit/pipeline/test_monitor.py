"""The framework-free monitor: a batch of records in, alerts, dead letters and states out."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from prometheus_client import CollectorRegistry

from streams import synthetic
from streams.core.policy import DEFAULT_POLICY
from streams.metrics import PipelineMetrics
from streams.pipeline import monitor as monitor_module
from streams.pipeline.monitor import CLINICAL_TOPIC, LABS, InRecord, Monitor
from streams.pipeline.state_codec import decode_state, encode_state
from streams.pipeline.store import DictStore, PatientStates, unpack


def new_monitor() -> Monitor:
    return Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))


def records_of(pid: str, records: list[dict[str, Any]], first_offset: int = 0) -> list[InRecord]:
    """Wire records as the worker would see them on partition 0, in order."""
    return [
        InRecord(
            pid.encode(),
            json.dumps(r).encode(),
            CLINICAL_TOPIC if synthetic.topic_of(r) == "clinical" else LABS,
            0,
            offset,
            100.0 + offset,
        )
        for offset, r in enumerate(records, start=first_offset)
    ]


def patient_id() -> str:
    return f"MON-{uuid.uuid4().hex[:8]}"


def test_a_batch_merges_the_two_topics_by_timestamp() -> None:
    """Records of one patient from both topics in one batch: infusion first (earlier stamp)."""
    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    infusion, labs = records[0], records[1:]
    batch = [
        InRecord(pid.encode(), json.dumps(r).encode(), LABS, 0, i, 100.0 + i)
        for i, r in enumerate(labs, start=1)
    ]
    # the clinical record arrives last in the batch but was sent first
    batch.append(InRecord(pid.encode(), json.dumps(infusion).encode(), CLINICAL_TOPIC, 0, 0, 100.0))
    out = new_monitor().process(batch, PatientStates(DictStore()))
    assert out.outcomes["not_enrolled"] == 0
    assert out.outcomes["accepted"] == len(records)
    assert [a.rule.value for a in out.alert_events] == ["mrd_positive", "hct_consolidation"]


def test_states_are_persisted_only_after_the_alerts_they_record() -> None:
    """A state saying "announced" must never reach the store before its alert is sent."""
    pid = patient_id()
    store = DictStore()
    states = PatientStates(store)
    out = new_monitor().process(
        records_of(pid, synthetic.patient("mrd_positive", pid, datetime.now(UTC))), states
    )
    assert out.alerts and store.data == {}  # nothing persisted while the alerts are unsent
    out.persist(states)
    state = unpack(store.data[pid.encode()])
    assert {a.rule.value for a in state.alerts.values()} == {"mrd_positive", "hct_consolidation"}


def test_a_state_is_decoded_once_while_cached_and_encoded_once_per_batch() -> None:
    pid = patient_id()
    records = synthetic.patient("igg_decline", pid, datetime.now(UTC))
    store = DictStore()
    states = PatientStates(store)
    monitor = new_monitor()
    first = monitor.process(records_of(pid, records[:2]), states)
    first.persist(states)
    with (
        mock.patch("streams.pipeline.store.decode_state", wraps=decode_state) as dec,
        mock.patch("streams.pipeline.store.encode_state", wraps=encode_state) as enc,
    ):
        for offset, record in enumerate(records[2:], start=2):
            out = monitor.process(records_of(pid, [record], offset), states)
            out.persist(states)
        assert dec.call_count == 0  # the cached state is used
        assert enc.call_count == len(records) - 2  # one write per batch that touched it
        batch = records_of(pid, records[2:], 2)  # a re-delivery of several records at once
        monitor.process(batch, states).persist(states)
        assert enc.call_count == len(records) - 1
    assert unpack(store.data[pid.encode()]) == states.get(pid.encode(), 0, None)


def test_forgotten_partitions_are_read_again_from_the_store() -> None:
    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    store = DictStore()
    states = PatientStates(store)
    new_monitor().process(records_of(pid, records), states).persist(states)
    cached = states.get(pid.encode(), 0, None)
    states.forget([1])
    assert states.get(pid.encode(), 0, None) is cached
    states.forget([0])
    fresh = states.get(pid.encode(), 0, None)
    assert fresh is not cached and fresh == cached


def test_the_cache_keeps_at_most_its_capacity() -> None:
    store = DictStore()
    states = PatientStates(store, capacity=3)
    monitor = new_monitor()
    now = datetime.now(UTC)
    pids = [patient_id() for _ in range(5)]
    for pid in pids:
        monitor.process(records_of(pid, synthetic.patient("iec_hs", pid, now)), states).persist(
            states
        )
    assert len(states) == 3 and len(store.data) == 5
    assert all(states.get(p.encode(), 0, None) is not None for p in pids)  # read back


def test_an_engine_error_dead_letters_only_the_poison_record() -> None:
    pid = patient_id()
    records = synthetic.patient("igg_decline", pid, datetime.now(UTC))
    poison = records[2]["accession"]
    real = monitor_module.apply_all

    def flaky(state: Any, events: Any, policy: Any) -> Any:
        if any(getattr(e, "accession", None) == poison for e in events):
            state.enrollment = None  # fail half-way, as a real bug would
            raise RuntimeError("boom")
        return real(state, events, policy)

    store = DictStore()
    states = PatientStates(store)
    monitor = new_monitor()
    monitor.process(records_of(pid, records[:1]), states).persist(states)
    with mock.patch.object(monitor_module, "apply_all", flaky):
        out = monitor.process(records_of(pid, records[1:], 1), states)
    assert out.outcomes["rejected"] == 1
    assert [letter.location for letter in out.dead_letters] == [f"{LABS}[0]@2"]
    assert out.outcomes["accepted"] == len(records) - 2
    # the retry started from the stored state, not from the half-updated one
    assert out.outcomes["not_enrolled"] == 0
    out.persist(states)
    assert unpack(store.data[pid.encode()]).enrollment is not None


def test_a_tick_without_news_leaves_the_state_as_stored() -> None:
    pid = patient_id()
    records = synthetic.patient("maintained_bca", pid, datetime.now(UTC))
    store = DictStore()
    states = PatientStates(store)
    monitor = new_monitor()
    monitor.process(records_of(pid, records), states).persist(states)
    stored = store.data[pid.encode()]
    out = monitor.tick(datetime.now(UTC), [(pid.encode(), 0, None)], states)
    assert out.alert_events == [] and out.states == []
    assert states.get(pid.encode(), 0, None) == unpack(stored)


def test_a_tick_with_news_returns_the_state_to_write() -> None:
    pid = patient_id()
    now = datetime.now(UTC)
    records = synthetic.patient("monitoring_gap", pid, now)
    states = PatientStates(DictStore())
    monitor = new_monitor()
    monitor.process(records_of(pid, records), states).persist(states)
    out = monitor.tick(now + timedelta(days=1), [(pid.encode(), 0, None)], states)
    assert {a.rule.value for a in out.alert_events} == {"monitoring_gap"}
    assert [key for key, *_ in out.states] == [pid.encode()]
    assert monitor.index.open_alerts(None)


def test_a_state_this_release_cannot_read_dead_letters_the_records_and_is_kept() -> None:
    """A first-release (format 1) state is never replaced by a fresh one: that would forget the
    history and raise its alerts again. Its records wait in the dead-letter topic."""
    pid = patient_id()
    records = synthetic.patient("igg_decline", pid, datetime.now(UTC))
    old = json.dumps({"f": 1, "p": pid}).encode()
    store = DictStore()
    store.data[pid.encode()] = old
    states = PatientStates(store)
    monitor = new_monitor()
    out = monitor.process(records_of(pid, records), states)
    assert out.outcomes["rejected"] == len(records) and not out.alert_events
    assert {letter.reason.value for letter in out.dead_letters} == {"state_unreadable"}
    assert "cannot be read" in out.dead_letters[0].details[0].message
    out.persist(states)
    assert store.data[pid.encode()] == old
    assert monitor.tick(datetime.now(UTC), [(pid.encode(), 0, None)], states).states == []


class CountingStore(DictStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: bytes, origin: Any) -> bytes | None:
        self.reads += 1
        return super().get(key, origin)


def test_a_patient_the_store_lacks_is_asked_for_once_until_enrolled_or_forgotten() -> None:
    pid = patient_id()
    records = synthetic.patient("igg_decline", pid, datetime.now(UTC))
    infusion, labs = records[0], records[1:]
    store = CountingStore()
    states = PatientStates(store)
    monitor = new_monitor()
    for offset, record in enumerate(labs[:3], start=1):  # results before the infusion arrives
        out = monitor.process(records_of(pid, [record], offset), states)
        assert out.outcomes["not_enrolled"] == 1
    assert store.reads == 1
    monitor.process(records_of(pid, [infusion]), states).persist(states)
    states.forget()  # the enrolment is read back from the store, not taken for absent
    out = monitor.process(records_of(pid, labs[3:4], 4), states)
    assert out.outcomes["not_enrolled"] == 0 and store.reads == 2


def test_an_absence_is_forgotten_with_its_partition_and_bounded() -> None:
    store = CountingStore()
    states = PatientStates(store, absent_capacity=2)
    assert states.get(b"A", 0, None) is None and states.get(b"A", 0, None) is None
    assert store.reads == 1
    states.forget([1])
    assert states.get(b"A", 0, None) is None and store.reads == 1
    states.forget([0])  # another worker may enrol A while it owns partition 0: ask again
    assert states.get(b"A", 0, None) is None and store.reads == 2
    for key in (b"B", b"C", b"D"):  # B, the oldest absence, is dropped at the third
        states.get(key, 0, None)
    reads = store.reads
    states.get(b"B", 0, None)
    states.get(b"D", 0, None)
    assert store.reads == reads + 1
