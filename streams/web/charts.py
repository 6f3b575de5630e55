"""The patient timeline chart: a Plotly figure built here, drawn by plotly.js in the browser.

Why Plotly: the figure is declared in Python (validated by plotly's ``graph_objects``), drawn
by the plotly.js that the same PyPI package ships -- served from the installed package, never
fetched from a network -- and a clinician can hover a point for its exact value, accession and
status, or zoom into a week. No chart code is hand-written; ``static/timeline.js`` only hands
the figure JSON to ``Plotly.newPlot``.

Panels share one time axis (collection time; day 0 marked). Thresholds come from the policy the
deployment runs (``streams.core.policy.Policy``), so the lines are the ones the rules use:

- ANC (log) with 500 and 100 /µL; platelets (log) with 50 and 20 × 10³/µL;
- CD19 % and CD19 absolute (log) with the BCA thresholds;
- IgG with 400 mg/dL and IVIG doses as markers; ferritin (log) with the baseline (last value on
  or before day 0) and 2 × baseline (2 × ULN without a baseline);
- MRD level on a log axis: detected (filled), detected below LOQ (at the assay's sensitivity),
  not detected (open, at the sensitivity), with method and sensitivity in the label.

Every alert is a band from raised to resolved (open: to the latest result) on the panels its
evidence comes from, its evidence points ringed. Course events are vertical markers. Corrected
and cancelled values stay on the chart as grey crosses. Values at or below a log axis' floor
(an ANC of 0) are drawn at the floor as a downward triangle, the true value in the label.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from schemas.vocab import ResultStatus
from streams.core.policy import Policy
from streams.web.format import ANALYTE_LABELS, local_time, result_text
from streams.web.timeline import Band, LabPoint

SEVERITY_COLOURS = {"critical": "220,38,38", "warning": "217,119,6", "info": "37,99,235"}
VALUE_COLOUR = "#1f3b73"
STRUCK_COLOUR = "#9ca3af"
EVIDENCE_COLOUR = "#dc2626"
#: default MRD sensitivity by method when the lab gave none (docs/clinical-spec.md §5)
MRD_DEFAULT_SENSITIVITY = {"flow": 1e-4, "pcr": 1e-4, "ngs": 1e-6}
#: course events drawn across every panel (IVIG doses go on the IgG panel)
COURSE_LABELS = {
    "reinfusion": "reinfusion",
    "crs_resolved": "CRS resolved",
    "hct_performed": "HCT",
    "relapse": "relapse",
    "end_of_follow_up": "end of follow-up",
}


@dataclass(frozen=True)
class Line:
    value: float
    label: str


@dataclass(frozen=True)
class Panel:
    analyte: str
    title: str
    log: bool
    #: floor of a log axis: values at or below it are drawn there
    floor: float = 0.0


PANELS = (
    Panel("anc", "ANC (/µL)", True, 10),
    Panel("platelets", "Platelets (× 10³/µL)", True, 1),
    Panel("cd19_pct", "CD19 (% of lymphocytes)", True, 0.01),
    Panel("cd19_abs", "CD19 (cells/µL)", True, 0.5),
    Panel("igg", "IgG (mg/dL)", False),
    Panel("ferritin", "Ferritin (ng/mL)", True, 10),
    Panel("mrd", "MRD (fraction)", True, 1e-7),
)


def threshold_lines(panel: Panel, policy: Policy, points: Sequence[LabPoint]) -> list[Line]:
    """The horizontal lines of one panel, from the policy (and the patient's ferritin baseline)."""
    if panel.analyte == "anc":
        return [
            Line(policy.anc_neutropenia_per_ul, f"{policy.anc_neutropenia_per_ul:g} /µL"),
            Line(policy.anc_profound_per_ul, f"{policy.anc_profound_per_ul:g} /µL"),
        ]
    if panel.analyte == "platelets":
        return [
            Line(policy.platelets_low_k_per_ul, f"{policy.platelets_low_k_per_ul:g} × 10³/µL"),
            Line(
                policy.platelets_profound_k_per_ul,
                f"{policy.platelets_profound_k_per_ul:g} × 10³/µL",
            ),
        ]
    if panel.analyte == "cd19_pct":
        return [Line(policy.bca_cd19_pct_threshold, f"BCA < {policy.bca_cd19_pct_threshold:g} %")]
    if panel.analyte == "cd19_abs":
        limit = policy.bca_cd19_abs_threshold_per_ul
        return [Line(limit, f"BCA < {limit:g} /µL")]
    if panel.analyte == "igg":
        return [Line(policy.igg_threshold_mg_dl, f"{policy.igg_threshold_mg_dl:g} mg/dL")]
    if panel.analyte == "ferritin":
        return _ferritin_lines(policy, points)
    return []


def _ferritin_lines(policy: Policy, points: Sequence[LabPoint]) -> list[Line]:
    baseline = [
        p
        for p in points
        if p.row.analyte == "ferritin"
        and p.day is not None
        and p.day <= 0
        and not p.struck
        and p.row.value is not None
        and p.row.status != ResultStatus.PRELIMINARY
    ]
    multiple = policy.ferritin_baseline_multiple
    if not baseline:
        uln = policy.ferritin_uln_ng_ml
        return [Line(multiple * uln, f"{multiple:g} × ULN ({multiple * uln:,.0f})")]
    value = max(baseline, key=lambda p: p.row.collected_at).row.value
    assert value is not None
    return [
        Line(value, f"baseline {value:,.0f}"),
        Line(multiple * value, f"{multiple:g} × baseline ({multiple * value:,.0f})"),
    ]


def timeline_figure(
    points: Sequence[LabPoint],
    bands: Sequence[Band],
    course: Sequence[tuple[str, datetime, str | None]],
    infused_at: datetime | None,
    policy: Policy,
    now: datetime,
) -> go.Figure:
    """The whole chart; ``course`` is (kind, time, detail) of the clinical events."""
    tz = policy.tz
    figure = make_subplots(
        rows=len(PANELS),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.025,
        subplot_titles=[p.title for p in PANELS],
    )
    latest = max([p.row.collected_at for p in points], default=now)
    for row, panel in enumerate(PANELS, start=1):
        mine = [p for p in points if p.row.analyte == panel.analyte and p.plotted]
        _values(figure, row, panel, mine, tz)
        for line in threshold_lines(panel, policy, points):
            _threshold(figure, row, panel, line)
        for band in bands:
            if panel.analyte in band.analytes:
                _band(figure, row, band, latest)
        figure.update_yaxes(type="log" if panel.log else "linear", row=row, col=1)
        if not mine:
            figure.add_annotation(
                text="no results",
                xref="x domain",
                yref="y domain",
                x=0.5,
                y=0.5,
                showarrow=False,
                font={"color": "#9ca3af"},
                row=row,
                col=1,
            )
    _ivig(figure, course, tz)
    _markers(figure, course, infused_at)
    figure.update_layout(
        height=170 * len(PANELS) + 80,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        showlegend=False,
        hovermode="closest",
        plot_bgcolor="white",
        font={"family": "DejaVu Sans, Arial, sans-serif", "size": 11},
    )
    figure.update_xaxes(
        type="date",
        showgrid=True,
        gridcolor="#eef2f7",
        range=_x_range(points, bands, course, infused_at, now),
    )
    figure.update_yaxes(showgrid=True, gridcolor="#eef2f7")
    return figure


def _threshold(figure: go.Figure, row: int, panel: Panel, line: Line) -> None:
    """A dashed line at the threshold, labelled at its left end.

    Shapes take data values on a log axis, annotations its exponent: hence the two ``y``.
    """
    figure.add_hline(
        y=line.value,
        row=row,
        col=1,
        line={"dash": "dash", "width": 1, "color": "#6b7280"},
    )
    figure.add_annotation(
        x=0,
        xref="x domain",
        y=math.log10(line.value) if panel.log else line.value,
        yref="y",
        xanchor="left",
        yanchor="bottom",
        text=line.label,
        showarrow=False,
        font={"size": 10, "color": "#4b5563"},
        row=row,
        col=1,
    )


def _x_range(
    points: Sequence[LabPoint],
    bands: Sequence[Band],
    course: Sequence[tuple[str, datetime, str | None]],
    infused_at: datetime | None,
    now: datetime,
) -> list[str]:
    """The time span shown, set explicitly: an empty panel would otherwise pull the shared axis
    back to 1970 (plotly's default range of an axis without data)."""
    moments = [p.row.collected_at for p in points] + [at for _, at, _ in course]
    moments += [b.start for b in bands] + [b.end for b in bands if b.end is not None]
    moments += [infused_at] if infused_at is not None else []
    first, last = (min(moments), max(moments)) if moments else (now - timedelta(days=30), now)
    pad = max(timedelta(days=2), (last - first) / 40)
    return [(first - pad).isoformat(), (last + pad).isoformat()]


def _y(panel: Panel, value: float) -> tuple[float, bool]:
    """Where a value is drawn, and whether it sits at the log axis' floor."""
    if panel.log and value <= panel.floor:
        return panel.floor, True
    return value, False


def _values(
    figure: go.Figure, row: int, panel: Panel, points: Sequence[LabPoint], tz: tzinfo
) -> None:
    if panel.analyte == "mrd":
        _mrd(figure, row, points, tz)
        return
    groups: dict[str, list[tuple[LabPoint, float, bool]]] = {}
    for point in points:
        if point.row.value is None:
            continue
        y, floored = _y(panel, point.row.value)
        kind = (
            "struck"
            if point.struck
            else "preliminary"
            if point.version == "preliminary"
            else "value"
        )
        groups.setdefault(kind, []).append((point, y, floored))
    for kind, items in groups.items():
        figure.add_trace(_scatter(kind, items, tz), row=row, col=1)
    _evidence(figure, row, [(p, y) for items in groups.values() for p, y, _ in items if p.cited_by])


def _label(point: LabPoint, tz: tzinfo) -> str:
    r = point.row
    text = result_text(
        r.analyte, r.value, r.comparator, r.unit, r.detected, r.method, r.sensitivity
    )
    day = "" if point.day is None else f"day {point.day} · "
    lines = [
        f"<b>{ANALYTE_LABELS.get(r.analyte, r.analyte)} {text}</b>",
        f"{day}{local_time(r.collected_at, tz)}",
        f"{r.status}" + (f" · {r.accession}" if r.accession else ""),
    ]
    if point.struck:
        lines.append(f"<i>{point.version.value}</i>")
    if point.cited_by:
        lines.append("evidence: " + ", ".join(point.cited_by))
    return "<br>".join(lines)


def _scatter(kind: str, items: Sequence[tuple[LabPoint, float, bool]], tz: tzinfo) -> go.Scatter:
    symbols = [
        "x-thin-open" if kind == "struck" else "triangle-down" if floored else "circle"
        for _, _, floored in items
    ]
    return go.Scatter(
        x=[p.row.collected_at.isoformat() for p, _, _ in items],
        y=[y for _, y, _ in items],
        mode="lines+markers" if kind == "value" else "markers",
        line={"color": VALUE_COLOUR, "width": 1.5},
        marker={
            "symbol": symbols if kind != "preliminary" else "circle-open",
            "size": 8 if kind != "struck" else 10,
            "color": STRUCK_COLOUR if kind == "struck" else VALUE_COLOUR,
            "line": {"width": 1.5, "color": STRUCK_COLOUR if kind == "struck" else VALUE_COLOUR},
        },
        text=[_label(p, tz) for p, _, _ in items],
        hovertemplate="%{text}<extra></extra>",
        name=kind,
    )


def _evidence(figure: go.Figure, row: int, items: Sequence[tuple[LabPoint, float]]) -> None:
    if not items:
        return
    figure.add_trace(
        go.Scatter(
            x=[p.row.collected_at.isoformat() for p, _ in items],
            y=[y for _, y in items],
            mode="markers",
            marker={
                "symbol": "circle-open",
                "size": 17,
                "color": EVIDENCE_COLOUR,
                "line": {"width": 2.5, "color": EVIDENCE_COLOUR},
            },
            hoverinfo="skip",
            name="evidence",
        ),
        row=row,
        col=1,
    )


def _mrd(figure: go.Figure, row: int, points: Sequence[LabPoint], tz: tzinfo) -> None:
    groups: dict[str, list[tuple[LabPoint, float, bool]]] = {}
    for point in points:
        r = point.row
        sensitivity = r.sensitivity or MRD_DEFAULT_SENSITIVITY.get(r.method or "", 1e-4)
        level = r.value if r.detected and r.value else sensitivity
        kind = "struck" if point.struck else "detected" if r.detected else "not_detected"
        groups.setdefault(kind, []).append((point, max(level, PANELS[-1].floor), False))
    styles = {
        "detected": ("circle", EVIDENCE_COLOUR),
        "not_detected": ("circle-open", "#15803d"),
        "struck": ("x-thin-open", STRUCK_COLOUR),
    }
    for kind, items in groups.items():
        symbol, colour = styles[kind]
        figure.add_trace(
            go.Scatter(
                x=[p.row.collected_at.isoformat() for p, _, _ in items],
                y=[y for _, y, _ in items],
                mode="markers+text",
                marker={"symbol": symbol, "size": 10, "color": colour, "line": {"width": 1.5}},
                text=[_mrd_tag(p) for p, _, _ in items],
                textposition="top center",
                textfont={"size": 9, "color": colour},
                hovertext=[_label(p, tz) for p, _, _ in items],
                hovertemplate="%{hovertext}<extra></extra>",
                name=kind,
            ),
            row=row,
            col=1,
        )
    _evidence(figure, row, [(p, y) for items in groups.values() for p, y, _ in items if p.cited_by])


def _mrd_tag(point: LabPoint) -> str:
    r = point.row
    method = (r.method or "").upper() if r.method != "flow" else "flow"
    finding = "pos" if r.detected else "neg"
    return f"{method} {finding}".strip()


def _band(figure: go.Figure, row: int, band: Band, latest: datetime) -> None:
    end = band.end or max(latest, band.start + timedelta(hours=12))
    colour = SEVERITY_COLOURS.get(band.severity, "107,114,128")
    retracted = band.status == "retracted"
    figure.add_shape(
        type="rect",
        x0=band.start.isoformat(),
        x1=end.isoformat(),
        y0=0,
        y1=1,
        yref="y domain",
        fillcolor=f"rgba({'107,114,128' if retracted else colour},0.12)",
        line={"width": 1, "dash": "dot" if retracted else "solid", "color": f"rgba({colour},0.5)"},
        layer="below",
        row=row,
        col=1,
    )
    figure.add_annotation(
        x=band.start.isoformat(),
        y=1,
        xref="x",
        yref="y domain",
        xanchor="left",
        yanchor="top",
        text=f"{band.rule} ({band.severity}{', ' + band.status if band.status != 'open' else ''})",
        showarrow=False,
        font={"size": 9, "color": f"rgb({colour})"},
        row=row,
        col=1,
    )


def _ivig(
    figure: go.Figure, course: Sequence[tuple[str, datetime, str | None]], tz: tzinfo
) -> None:
    doses = [at for kind, at, _ in course if kind == "ivig_given"]
    if not doses:
        return
    igg_row = [p.analyte for p in PANELS].index("igg") + 1
    figure.add_trace(
        go.Scatter(
            x=[at.isoformat() for at in doses],
            y=[0] * len(doses),
            mode="markers+text",
            marker={"symbol": "triangle-up", "size": 12, "color": "#7c3aed"},
            text=["IVIG"] * len(doses),
            textposition="top center",
            textfont={"size": 9, "color": "#7c3aed"},
            hovertext=[f"IVIG given {local_time(at, tz)}" for at in doses],
            hovertemplate="%{hovertext}<extra></extra>",
            name="ivig",
        ),
        row=igg_row,
        col=1,
    )


def _markers(
    figure: go.Figure,
    course: Sequence[tuple[str, datetime, str | None]],
    infused_at: datetime | None,
) -> None:
    marks = [(at, label, "#111827", "solid") for at, label in _day0(infused_at)]
    marks += [
        (at, COURSE_LABELS[kind] + (f" ({detail})" if detail else ""), "#7c3aed", "dot")
        for kind, at, detail in course
        if kind in COURSE_LABELS
    ]
    for at, label, colour, dash in marks:
        figure.add_shape(
            type="line",
            x0=at.isoformat(),
            x1=at.isoformat(),
            y0=0,
            y1=1,
            xref="x",
            yref="paper",
            line={"color": colour, "width": 1.5, "dash": dash},
        )
        figure.add_annotation(
            x=at.isoformat(),
            y=1.0,
            xref="x",
            yref="paper",
            yanchor="bottom",
            text=label,
            showarrow=False,
            font={"size": 10, "color": colour},
        )


def _day0(infused_at: datetime | None) -> list[tuple[datetime, str]]:
    return [] if infused_at is None else [(infused_at, "Day 0 (infusion)")]


def figure_json(figure: go.Figure) -> str:
    """The figure as JSON that is safe inside ``<script type="application/json">``."""
    text: str = figure.to_json()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
