"""The fault harness's verdict: lost, spurious and surviving duplicate alert events, order."""

import json
from typing import Any

from bench.faults.harness import FaultReport, compare, whole_specimens


def event(
    event_id: str, patient: str = "P1", action: str = "raised", **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "alert_id": f"a-{patient}",
        "patient_id": patient,
        "rule": "bca_loss",
        "action": action,
        "severity": "critical",
        "event_time": f"2026-01-0{len(event_id)}T08:00:00Z",
        "decided_at": "2026-12-01T00:00:00Z",
        **extra,
    }


def verdict(expected: list[dict[str, Any]], produced: list[dict[str, Any]]) -> FaultReport:
    report = FaultReport()
    compare(expected, produced, report)
    return report


def test_re_deliveries_are_dropped_and_the_wall_clock_ignored() -> None:
    expected = [event("e1"), event("e22", action="resolved")]
    produced = [expected[0], {**expected[0], "decided_at": "x"}, {**expected[1], "decided_at": "y"}]
    report = verdict(expected, produced)
    assert report.ok and report.redelivered == 1


def test_a_missing_event_is_lost_and_an_unknown_one_spurious() -> None:
    expected = [event("e1"), event("e22", action="resolved")]
    report = verdict(expected, [expected[0], event("e333", patient="P2")])
    assert len(report.lost) == 1 and len(report.spurious) == 1 and not report.ok


def test_the_same_event_under_another_id_is_a_surviving_duplicate() -> None:
    expected = [event("e1")]
    report = verdict(expected, [expected[0], {**expected[0], "event_id": "e1-again"}])
    assert report.duplicates and not report.spurious and not report.ok


def test_an_expected_id_with_another_decision_is_spurious() -> None:
    expected = [event("e1")]
    report = verdict(expected, [{**expected[0], "severity": "warning"}])
    assert report.spurious and not report.lost


def test_other_words_for_the_same_decision_are_counted_not_failed() -> None:
    expected = [event("e1", summary="ANC 80 and platelets 30 /nL")]
    report = verdict(expected, [{**expected[0], "summary": "ANC 80"}])
    assert report.ok and report.texts_differ == 1


def test_a_patient_s_events_out_of_order_are_reported() -> None:
    expected = [event("e1"), event("e22", action="resolved")]
    report = verdict(expected, list(reversed(expected)))
    assert report.out_of_order == ["P1"] and not report.ok


def lab(patient: str, collected: str) -> bytes:
    return json.dumps({"patient_id": patient, "collected_at": collected}).encode()


def test_a_slice_never_cuts_a_specimen_in_two() -> None:
    lines = [
        lab("P1", "2026-01-01T08:00:00Z"),
        lab("P1", "2026-01-02T08:00:00Z"),
        lab("P1", "2026-01-02T08:00:00Z"),
        lab("P2", "2026-01-02T08:00:00Z"),
        lab("P2", "2026-01-02T08:00:00Z"),
    ]
    assert whole_specimens(lines, 1) == 1
    assert whole_specimens(lines, 2) == 3  # P1's second specimen stays whole
    assert whole_specimens(lines, 3) == 3
    assert whole_specimens(lines, 4) == 5  # another patient's specimen at the same time
    assert whole_specimens(lines, 9) == 5
