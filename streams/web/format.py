"""How values, units and times read on the pages (Jinja filters and chart labels)."""

from datetime import datetime, timedelta, tzinfo

#: Units as clinicians write them (canonical UCUM-ish spelling → display).
UNIT_LABELS = {
    "/uL": "/µL",
    "10*3/uL": "× 10³/µL",
    "1": "",
    "%": "%",
}

ANALYTE_LABELS = {
    "cd19_pct": "CD19 %",
    "cd19_abs": "CD19 abs",
    "igg": "IgG",
    "anc": "ANC",
    "ferritin": "Ferritin",
    "mrd": "MRD",
    "alc": "ALC",
    "wbc": "WBC",
    "platelets": "Platelets",
    "hemoglobin": "Hemoglobin",
    "fibrinogen": "Fibrinogen",
    "alt": "ALT",
    "ast": "AST",
    "ldh": "LDH",
    "bilirubin": "Bilirubin",
    "triglycerides": "Triglycerides",
    "crp": "CRP",
}


def unit_label(unit: str | None) -> str:
    if unit is None:
        return ""
    return UNIT_LABELS.get(unit, unit)


def number(value: float | None) -> str:
    """``4,000``, ``0.1``, ``350``, ``2.0e-4``: what a lab report would print."""
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude != 0 and magnitude < 0.01:
        return f"{value:.1e}"
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"


def mrd_text(
    value: float | None, detected: bool | None, method: str | None, sensitivity: float | None
) -> str:
    """``detected 2.0e-4 (NGS, sens. 1.0e-6)`` / ``not detected (flow, sens. 1.0e-4)``."""
    finding = "detected" if detected else "not detected" if detected is False else "reported"
    level = f" {number(value)}" if value is not None else " below LOQ" if detected else ""
    assay = ", ".join(
        part
        for part in (
            (method or "").upper() if method != "flow" else "flow",
            f"sens. {number(sensitivity)}" if sensitivity else "",
        )
        if part
    )
    return f"{finding}{level}" + (f" ({assay})" if assay else "")


def result_text(
    analyte: str,
    value: float | None,
    comparator: str | None,
    unit: str | None,
    detected: bool | None = None,
    method: str | None = None,
    sensitivity: float | None = None,
) -> str:
    """One result as the pages print it, comparator included (``< 100 /µL``)."""
    if analyte == "mrd":
        return mrd_text(value, detected, method, sensitivity)
    prefix = f"{comparator} " if comparator else ""
    label = unit_label(unit)
    return f"{prefix}{number(value)}" + (f" {label}" if label else "")


def local_time(moment: datetime | str | None, tz: tzinfo) -> str:
    """``2026-01-05 08:00`` in the policy's time zone (wire timestamps are parsed first)."""
    if moment is None:
        return "—"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def age(delta: timedelta) -> str:
    """``45 s``, ``12 min``, ``5 h``, ``3 d``."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
