"""The worker's own stall report: records wait, no batch comes, the consumer's state is logged."""

from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from faust.types import TP
from prometheus_client import CollectorRegistry

from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import LABS, InRecord
from streams.shell import agents

LABS_TP = TP("carwatch.labs", 0)
OTHER_TP = TP("carwatch-patient_state-changelog", 0)


@dataclass
class Consumer:
    highwaters: dict[TP, int]
    flow_active: bool = True
    _paused_partitions: set[TP] = field(default_factory=lambda: {LABS_TP})

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]


@dataclass
class App:
    consumer: Consumer
    rebalancing: bool = False


def event_at(offset: int) -> Any:
    return mock.Mock(message=mock.Mock(tp=LABS_TP))


def lag_for(consumer: Consumer) -> agents.Lag:
    metrics = PipelineMetrics(CollectorRegistry())
    return agents.Lag(App(consumer), metrics, {"carwatch.labs": LABS})  # type: ignore[arg-type]


def test_waiting_records_without_a_batch_are_reported_once_per_period() -> None:
    consumer = Consumer({LABS_TP: 100, OTHER_TP: 50})
    lag = lag_for(consumer)
    lag.track([InRecord(b"P", b"{}", LABS, 0, 41, None, event_at(41))])
    assert lag.stall() is None  # a batch just came
    with mock.patch("time.monotonic", return_value=lag.last_batch + agents.STALL_SECONDS + 1):
        report = lag.stall()
        assert report is not None
        assert "58 input records wait" in report and "carwatch.labs[0]" in report
        assert (
            "'paused': ['carwatch.labs[0]']" in report
            and "changelog" not in report.split("assigned")[0]
        )
        assert lag.stall() is None  # not again in the same period


def test_no_report_when_nothing_waits_or_during_a_rebalance() -> None:
    consumer = Consumer({LABS_TP: 42})
    lag = lag_for(consumer)
    lag.track([InRecord(b"P", b"{}", LABS, 0, 41, None, event_at(41))])
    later = lag.last_batch + agents.STALL_SECONDS + 1
    with mock.patch("time.monotonic", return_value=later):
        assert lag.stall() is None  # caught up
        consumer.highwaters[LABS_TP] = 90
        lag.app.rebalancing = True  # type: ignore[attr-defined]
        assert lag.stall() is None
