"""The Grafana dashboard and the alert rules only select series their jobs' processes export.

Dashboard: structure (unique panel ids, grid inside 24 columns without overlaps, every query on
the provisioned datasource uid), the panels issues #5 and #14 ask for, and every metric, job and
label in every ``expr``. Rules: every selector names its job, and that job's metric set
(streams/metrics.py, a fresh ``CollectorRegistry``; counters are exposed as ``_total``,
histograms as ``_bucket``/``_sum``/``_count``) has the metric and its labels. The same check
against what a real Prometheus scraped from the real processes is
tests/integration/test_exported_series.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql
import pytest
import yaml

from streams.metrics import ALLOWED_LABEL_VALUES

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy/grafana/dashboards/carwatch.json"
DATASOURCES = REPO / "deploy/grafana/provisioning/datasources/prometheus.yml"
PROVIDERS = REPO / "deploy/grafana/provisioning/dashboards/carwatch.yml"
RULES = REPO / "deploy/prometheus/rules/carwatch.rules.yml"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    config = yaml.safe_load(DATASOURCES.read_text())
    sources = [d for d in config["datasources"] if d["type"] == "prometheus"]
    assert len(sources) == 1, "exactly one provisioned Prometheus datasource"
    return str(sources[0]["uid"])


@pytest.fixture(scope="module")
def exported() -> promql.Exported:
    return promql.Exported.from_metric_sets()


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level panels and panels nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in data_panels(dashboard) for t in p["targets"]]


def normalize(expr: str) -> str:
    return re.sub(r"\s+", " ", expr)


# ---------------------------------------------------------------- provisioning


def test_datasource_provisioning(datasource_uid: str) -> None:
    config = yaml.safe_load(DATASOURCES.read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["access"] == "proxy"
    assert source["url"].startswith("http")
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", datasource_uid)


def test_dashboard_provider_points_at_a_folder() -> None:
    config = yaml.safe_load(PROVIDERS.read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# ---------------------------------------------------------------- dashboard structure


def test_dashboard_top_level(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "carwatch-pipeline"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards carry no id"
    assert data_panels(dashboard), "the dashboard has panels"


def test_panel_ids_unique_and_titles_unique(dashboard: dict[str, Any]) -> None:
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    titles = [p["title"] for p in data_panels(dashboard)]
    assert len(titles) == len(set(titles)), f"duplicate panel titles: {titles}"


def test_grid_fits_and_does_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24, panel["title"]
        assert g["y"] >= 0 and g["h"] >= 1, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_query_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource_uid: str
) -> None:
    for panel in data_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource_uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == datasource_uid, var["name"]


def test_template_variables_used_are_defined(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
    for title, expr in exprs(dashboard):
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
            assert name in defined | builtin, f"{title}: ${name} is not a dashboard variable"


# Issue #5: the panels the dashboard must have, as (description, predicate on one expr).
REQUIRED = [
    (
        "ingest rate by analyte",
        lambda e: "rate(carwatch_results_total" in e and re.search(r"by \(analyte\)", e),
    ),
    (
        "rejects by reason",
        lambda e: "carwatch_rejected_total" in e and re.search(r"by \((job, )?reason\)", e),
    ),
    (
        "clinical alert events by rule and severity",
        lambda e: "carwatch_alert_events_total" in e and re.search(r"by \(rule, severity\)", e),
    ),
    ("active alerts", lambda e: "carwatch_active_alerts" in e),
    (
        "collected-to-alert latency percentiles",
        lambda e: (
            e.startswith("histogram_quantile(")
            and "carwatch_collected_to_alert_seconds_bucket" in e
        ),
    ),
    (
        "received-to-alert latency percentiles",
        lambda e: (
            e.startswith("histogram_quantile(") and "carwatch_received_to_alert_seconds_bucket" in e
        ),
    ),
    ("consumer lag", lambda e: "carwatch_consumer_lag_messages" in e),
    ("dead-letter rate", lambda e: "rate(carwatch_deadletter_messages_total" in e),
    ("patients monitored", lambda e: "carwatch_patients_monitored" in e),
    (
        "listener answers by code",
        lambda e: "carwatch_listener_messages_total" in e and "code" in e,
    ),
    ("listener publish failures", lambda e: "carwatch_listener_publish_failures_total" in e),
    ("delivery attempts", lambda e: "carwatch_delivery_attempts_total" in e),
    ("delivery lag", lambda e: "carwatch_delivery_lag_messages" in e),
]


@pytest.mark.parametrize(("what", "predicate"), REQUIRED, ids=[r[0] for r in REQUIRED])
def test_required_panel_present(dashboard: dict[str, Any], what: str, predicate: Any) -> None:
    assert any(predicate(normalize(e)) for _, e in exprs(dashboard)), f"no panel shows {what}"


def test_latency_quantiles_aggregate_by_le(dashboard: dict[str, Any]) -> None:
    """histogram_quantile over buckets summed across series must keep `le`, or it is garbage."""
    for title, expr in exprs(dashboard):
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, title
            groupings = re.findall(r"\bby \(([^)]*)\)", normalize(expr))
            assert groupings and all(
                "le" in [g.strip() for g in grouping.split(",")] for grouping in groupings
            ), f"{title}: {expr}"


def test_dashboard_exprs_reference_exported_metrics(
    dashboard: dict[str, Any], exported: promql.Exported
) -> None:
    problems = [
        f"{title}: {problem}"
        for title, expr in exprs(dashboard)
        for problem in promql.problems(expr, exported, ALLOWED_LABEL_VALUES)
    ]
    assert not problems, "\n".join(problems)
    used = {m for _, e in exprs(dashboard) for m in promql.parse(e).metrics}
    assert {m for m in used if m.startswith("carwatch_")}, "the dashboard shows carwatch metrics"


def test_every_exported_metric_family_is_on_the_dashboard(
    dashboard: dict[str, Any], exported: promql.Exported
) -> None:
    """A metric nobody looks at is either missing a panel or should not exist."""
    used = {m for _, e in exprs(dashboard) for m in promql.parse(e).metrics}
    families = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for name, _ in exported.pairs
        if name.startswith("carwatch_")
    }
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in used}
    assert families <= shown, f"metrics without a panel: {sorted(families - shown)}"


# ---------------------------------------------------------------- alert rules


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


@pytest.mark.parametrize(("name", "expr"), rule_exprs(), ids=[n for n, _ in rule_exprs()])
def test_rule_exprs_reference_exported_metrics(
    name: str, expr: str, exported: promql.Exported
) -> None:
    problems = promql.problems(expr, exported, ALLOWED_LABEL_VALUES)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_promql_checker_catches_mistakes(exported: promql.Exported) -> None:
    """The checker itself: a wrong name or job, a counter without _total, a bad label or value."""
    worker = 'job="carwatch-worker"'
    bad = {
        f'carwatch_results{{{worker}, outcome="accepted"}}': "exported by no process",
        f"rate(carwatch_no_such_thing_total{{{worker}}}[5m])": "exported by no process",
        f'carwatch_results_total{{{worker}, outcom="accepted"}}': "has no label",
        f'carwatch_results_total{{{worker}, outcome="acepted"}}': "not an allowed label value",
        f"sum by (analyt) (rate(carwatch_results_total{{{worker}}}[5m]))": "grouping label",
        "histogram_quantile(0.9, sum by (le) (rate(carwatch_collected_to_alert_seconds"
        f"{{{worker}}}[5m])))": "exported by no process",
        'rate(node_cpu_seconds_total{job="node"}[5m])': "selects none",
        # the bug of issue #14: deliveries counted by the deliverer, selected under the worker
        f'carwatch_alert_deliveries_total{{{worker}, outcome="failed"}}': "exported by no process",
        'carwatch_alert_events_total{job=~"carwatch-worker|carwatch-mllp"}': (
            'carwatch_alert_events_total{job="carwatch-mllp"} is exported by no process'
        ),
        "carwatch_results_total": "names no job",
        'carwatch_results_total{job!="carwatch-web"}': "select jobs with = or =~",
    }
    for expr, expected in bad.items():
        found = promql.problems(expr, exported, ALLOWED_LABEL_VALUES)
        assert any(expected in p for p in found), f"{expr}: {found}"
    good = (
        'sum by (job) (rate(carwatch_results_total{job="carwatch-worker", '
        'instance=~"$instance"}[$__rate_interval])) offset 1h30m'
    )
    assert promql.problems(good, exported, ALLOWED_LABEL_VALUES) == []
