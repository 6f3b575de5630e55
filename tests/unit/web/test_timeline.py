"""What the timeline shows: which version of a result stands, the thresholds drawn, the bands."""

from datetime import UTC, datetime, timedelta

from schemas.vocab import RuleName
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.testing import Timeline
from streams.web.charts import PANELS, threshold_lines, timeline_figure
from streams.web.db import Database, LabRow
from streams.web.format import number, result_text
from streams.web.queries import PatientKeys, patient_course
from streams.web.timeline import Version, bands, lab_points, versions
from tests.unit.web.webtools import Feed, apply_all, story


def rows(*specs: tuple[str, str | None, str, float | None]) -> list[LabRow]:
    at = datetime(2026, 1, 5, 8, tzinfo=UTC)
    return [
        LabRow(
            id=i, analyte=analyte, accession=accession, status=status, value=value, collected_at=at
        )
        for i, (analyte, accession, status, value) in enumerate(specs)
    ]


def test_a_correction_strikes_the_value_it_replaces() -> None:
    labs = rows(("igg", "A1", "final", 350), ("igg", "A1", "corrected", 450))
    assert list(versions(labs).values()) == [Version.CORRECTED, Version.CURRENT]


def test_a_cancellation_strikes_the_value_and_a_later_correction_stands() -> None:
    labs = rows(
        ("anc", "A1", "final", 80),
        ("anc", "A1", "cancelled", None),
        ("anc", "A1", "corrected", 900),
    )
    assert list(versions(labs).values()) == [
        Version.CANCELLED,
        Version.CANCELLATION,
        Version.CURRENT,
    ]


def test_a_preliminary_after_the_final_is_ignored_and_one_before_it_replaced() -> None:
    labs = rows(
        ("cd19_pct", "A1", "preliminary", 2.0),
        ("cd19_pct", "A1", "final", 0.1),
        ("cd19_pct", "A1", "preliminary", 3.0),
        ("cd19_pct", None, "final", 0.2),
    )
    assert list(versions(labs).values()) == [
        Version.REPLACED,
        Version.CURRENT,
        Version.IGNORED,
        Version.CURRENT,
    ]


def test_threshold_lines_follow_the_policy() -> None:
    site = Policy(
        bca_cd19_pct_threshold=3.0, bca_cd19_abs_threshold_per_ul=50, igg_threshold_mg_dl=500
    )
    drawn = {p.analyte: [line.value for line in threshold_lines(p, site, [])] for p in PANELS}
    assert drawn == {
        "anc": [500, 100],
        "platelets": [50, 20],
        "cd19_pct": [3.0],
        "cd19_abs": [50],
        "igg": [500],
        "ferritin": [600],  # 2 × ULN without a baseline
        "mrd": [],
    }


def test_ferritin_lines_use_the_baseline_on_or_before_day_0(db: Database, feed: Feed) -> None:
    t = Timeline("P1").infusion().ferritin(-1, 400).ferritin(8, 900)
    apply_all(db, feed.wire(t.events))
    with db.write() as session:
        course = patient_course(session, PatientKeys.load(session), "P1")
    assert course.patient is not None
    points = lab_points(course.labs, [], course.patient.infused_at, DEFAULT_POLICY.tz)
    ferritin = next(p for p in PANELS if p.analyte == "ferritin")
    assert [line.value for line in threshold_lines(ferritin, DEFAULT_POLICY, points)] == [400, 800]


def test_the_figure_has_day_0_bands_evidence_and_log_axes(db: Database, feed: Feed) -> None:
    events, alerts = story()
    apply_all(db, feed.wire(events))
    apply_all(db, feed.alerts(alerts))
    with db.write() as session:
        course = patient_course(session, PatientKeys.load(session), "P-story")
    assert course.patient is not None
    infused = course.patient.infused_at
    points = lab_points(course.labs, course.alerts, infused, DEFAULT_POLICY.tz)
    cited = [p for p in points if p.cited_by]
    assert {p.row.accession for p in cited} == {e.accession for e in alerts[0].evidence}
    drawn = bands(course.alerts)
    assert [(b.rule, b.end) for b in drawn] == [(RuleName.HYPOGAMMAGLOBULINEMIA.value, None)]
    now = infused + timedelta(days=50)
    figure = timeline_figure(points, drawn, [], infused, DEFAULT_POLICY, now).to_plotly_json()
    layout = figure["layout"]
    assert layout["yaxis"]["type"] == "log" and layout["yaxis5"]["type"] == "linear"
    texts = [a.get("text") for a in layout["annotations"]]
    assert "Day 0 (infusion)" in texts and "500 /µL" in texts and "400 mg/dL" in texts
    assert any(t and t.startswith("hypogammaglobulinemia") for t in texts)
    assert any(trace["name"] == "evidence" for trace in figure["data"])
    start, end = layout["xaxis"]["range"]
    assert start < infused.isoformat() and end > max(p.row.collected_at for p in points).isoformat()


def test_values_read_as_on_a_lab_report() -> None:
    assert number(4000) == "4,000" and number(0.1) == "0.1" and number(0.0002) == "2.0e-04"
    assert result_text("anc", 100, "<", "/uL") == "< 100 /µL"
    assert (
        result_text("mrd", None, None, "1", False, "flow", 1e-4)
        == "not detected (flow, sens. 1.0e-04)"
    )
    assert (
        result_text("mrd", 2e-4, None, "1", True, "ngs", 1e-6)
        == "detected 2.0e-04 (NGS, sens. 1.0e-06)"
    )
