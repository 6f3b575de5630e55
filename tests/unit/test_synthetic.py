"""The demo feed's synthetic cohort tells the stories its module promises: every rule alerts and
every course event takes effect, read as NDJSON and replayed through the worker's engine."""

import io
import json
from collections import Counter
from datetime import UTC, datetime

from schemas.vocab import AlertAction, Outcome, RuleName
from streams import synthetic
from streams.core.policy import DEFAULT_POLICY
from streams.ingest.files import read_items
from streams.ingest.hl7.oru import Hl7Config
from streams.pipeline.replay import Replay

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def replay_cohort() -> tuple[list, Replay]:
    alerts: list = []
    engine = Replay(DEFAULT_POLICY, alerts.append, lambda item, rejection: None)
    records = synthetic.cohort(len(synthetic.TRAJECTORIES) * 2, NOW, prefix="T")
    ndjson = io.BytesIO("".join(json.dumps(r) + "\n" for r in records).encode())
    engine.feed(read_items(ndjson, "ndjson", "cohort", DEFAULT_POLICY, Hl7Config()))
    engine.finish(NOW)
    return alerts, engine


def test_every_rule_alerts_in_the_demo_cohort():
    alerts, engine = replay_cohort()
    assert engine.counts.outcomes[Outcome.REJECTED] == 0
    assert {a.rule for a in alerts if a.action is AlertAction.RAISED} == set(RuleName)


def test_course_events_resolve_alerts_and_end_follow_up():
    alerts, engine = replay_cohort()
    resolved = [a.summary for a in alerts if a.action is AlertAction.RESOLVED]
    assert any("HCT performed on day 80" in s for s in resolved)
    assert any("relapse recorded on day 70 (cd19_negative)" in s for s in resolved)
    assert any("follow-up ended on day 50 (transfer)" in s for s in resolved)
    assert engine.counts.outcomes[Outcome.NOT_MONITORED] == 2
    assert Counter(a.action for a in alerts)[AlertAction.RETRACTED] == 0
