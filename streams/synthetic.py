"""Synthetic patients as wire records (dicts), for the demo feed and the benchmarks. Pure code.

Every trajectory is one clinical story of docs/clinical-spec.md, so a cohort exercises every rule
and course event:

- ``maintained_bca``: CD19 stays < 1 % for a year; IgG normal -- no alert (a quiet patient).
- ``early_bca_loss``: aplasia at day 28, CD19 back at days 60 and 70 → ``bca_loss`` critical,
  then ``hct_consolidation`` warning (loss within 6 months, HCT-eligible, no prior HCT).
- ``igg_decline``: IgG 700 → 450 → 350 mg/dL → ``hypogammaglobulinemia`` warning; IVIG, then
  IgG 520 resolves it.
- ``prolonged_neutropenia``: ANC ≤ 500 /µL daily from day 0 to 16 → ICAHT grade 3,
  ``prolonged_neutropenia`` critical; recovery > 500 over 3 days resolves it.
- ``iec_hs``: baseline ferritin 400 ng/mL, day 12 ferritin 4,000 with fibrinogen 110 mg/dL →
  ``iec_hs`` critical; ferritin falling below half the peak resolves it.
- ``mrd_positive``: NGS MRD detected (2 × 10⁻⁴) at day 56 → ``mrd_positive`` critical and
  ``hct_consolidation`` warning.
- ``monitoring_gap``: the last CD19 and IgG results lie 45 and 70 days before ``now`` → the
  worker's wall-clock ``tick`` raises ``monitoring_gap`` info alerts.
- ``bca_not_established``: CD19 4 % on days 21 and 28, never aplastic → ``bca_not_established``
  critical (primary failure).
- ``hct_performed``: early loss of BCA (days 60, 67) → ``bca_loss`` critical and HCT advice; a
  consolidative HCT on day 80 resolves both (``hct_performed``).
- ``relapse``: MRD detected on day 56, relapse with a CD19-negative clone on day 70 → the MRD
  alert and HCT advice resolve with the relapse.
- ``end_of_follow_up``: low IgG from day 30, transfer on day 50 → the alert resolves; an IgG
  collected after it is ``not_monitored``.

Times are anchored so that each patient's latest result is close to ``now`` (a realistic live
feed: a worker's ``tick`` sees no gap except where the story has one). ``hospital_labs`` makes
results for patients who were never infused (a hospital-wide feed is ~90 % such records).
"""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

TRAJECTORIES = (
    "maintained_bca",
    "early_bca_loss",
    "igg_decline",
    "prolonged_neutropenia",
    "iec_hs",
    "mrd_positive",
    "monitoring_gap",
    "bca_not_established",
    "hct_performed",
    "relapse",
    "end_of_follow_up",
)

WireRecord = dict[str, Any]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Patient:
    """Builds one patient's records; ``day`` is relative to the infusion date."""

    def __init__(self, patient_id: str, day0: datetime) -> None:
        self.patient_id = patient_id
        self.day0 = day0
        self.records: list[WireRecord] = []
        self.n = 0

    def at(self, day: float, hour: int = 8) -> datetime:
        return self.day0.replace(hour=hour, minute=0, second=0, microsecond=0) + timedelta(days=day)

    def infusion(self, **extra: Any) -> "_Patient":
        record: WireRecord = {
            "type": "infusion",
            "patient_id": self.patient_id,
            "infused_at": iso(self.at(0, 10)),
            "product": "tisagenlecleucel",
            "costimulatory_domain": "4-1BB",
            "prior_hct": False,
            "hct_eligible": True,
            "risk_factors": [],
        }
        record.update(extra)
        self.records.append(record)
        return self

    def lab(self, analyte: str, day: float, value: float | None, unit: str, **extra: Any) -> Any:
        self.n += 1
        collected = self.at(day)
        record: WireRecord = {
            "type": "lab_result",
            "patient_id": self.patient_id,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "collected_at": iso(collected),
            "resulted_at": iso(collected + timedelta(hours=4)),
            "status": "final",
            "accession": f"{self.patient_id}-{self.n:04d}",
            "source": "lab-main",
        }
        record.update(extra)
        self.records.append(record)
        return self

    def event(self, kind: str, day: float, detail: str | None = None) -> "_Patient":
        record: WireRecord = {
            "type": "clinical_event",
            "patient_id": self.patient_id,
            "kind": kind,
            "at": iso(self.at(day, 9)),
        }
        if detail is not None:
            record["detail"] = detail
        self.records.append(record)
        return self


def _maintained_bca(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 750, "mg/dL")
    for day in (14, 28, 56, 90, 120, 150, 180, 240, 300, 360):
        p.lab("cd19_pct", day, 0.1, "%")
    for day in (30, 60, 90, 120, 150, 180, 240, 300, 360):
        p.lab("igg", day, 650, "mg/dL")


def _early_bca_loss(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 14, 0.2, "%").lab("cd19_pct", 28, 0.1, "%")
    p.lab("cd19_pct", 60, 1.4, "%").lab("cd19_pct", 70, 1.8, "%")
    p.lab("igg", 30, 700, "mg/dL").lab("igg", 60, 650, "mg/dL")
    p.lab("cd19_pct", 84, 2.5, "%").lab("igg", 84, 640, "mg/dL")


def _igg_decline(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 700, "mg/dL")
    for day in (14, 28, 42, 56):
        p.lab("cd19_pct", day, 0.1, "%")
    p.lab("igg", 30, 450, "mg/dL").lab("igg", 60, 350, "mg/dL")
    p.event("ivig_given", 62).lab("igg", 75, 520, "mg/dL")
    p.lab("cd19_pct", 75, 0.1, "%")


def _prolonged_neutropenia(p: _Patient) -> None:
    p.infusion().lab("anc", -2, 1800, "/uL").lab("igg", -2, 800, "mg/dL")
    for day in range(0, 17):
        p.lab("anc", day, 300 if day < 10 else 80, "/uL")
        p.lab("platelets", day, 30, "10*3/uL")
    for day in (17, 18, 19, 20, 21):
        p.lab("anc", day, 900, "/uL")
    p.lab("cd19_pct", 21, 0.1, "%").lab("igg", 21, 700, "mg/dL")


def _iec_hs(p: _Patient) -> None:
    p.infusion().lab("ferritin", -1, 400, "ng/mL").lab("igg", -1, 800, "mg/dL")
    for day in (8, 10):
        p.lab("ferritin", day, 700, "ng/mL").lab("fibrinogen", day, 260, "mg/dL")
    p.lab("fibrinogen", 12, 110, "mg/dL").lab("ferritin", 12, 4000, "ng/mL")
    p.lab("ferritin", 14, 6000, "ng/mL").lab("alt", 14, 260, "U/L")
    p.lab("ferritin", 20, 2500, "ng/mL").lab("ferritin", 24, 1200, "ng/mL")
    p.lab("cd19_pct", 24, 0.1, "%").lab("igg", 24, 700, "mg/dL")


def _mrd_positive(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 28, 0.1, "%")
    p.lab("mrd", 28, None, "1", method="ngs", detected=False, sensitivity=1e-6)
    p.lab("mrd", 56, 0.0002, "1", method="ngs", detected=True, sensitivity=1e-6)
    p.lab("cd19_pct", 56, 0.1, "%").lab("igg", 56, 700, "mg/dL")


def _monitoring_gap(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 14, 0.1, "%").lab("cd19_pct", 28, 0.1, "%").lab("igg", 30, 700, "mg/dL")
    p.lab("cd19_pct", 55, 0.1, "%")


def _bca_not_established(p: _Patient) -> None:
    p.infusion(risk_factors=["low_cell_dose"]).lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 21, 4.0, "%").lab("cd19_pct", 28, 4.5, "%").lab("igg", 28, 700, "mg/dL")


def _hct_performed(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 28, 0.1, "%").lab("cd19_pct", 60, 1.6, "%").lab("cd19_pct", 67, 2.4, "%")
    p.event("hct_performed", 80).lab("cd19_pct", 95, 6.0, "%").lab("igg", 95, 650, "mg/dL")


def _relapse(p: _Patient) -> None:
    p.infusion(risk_factors=["kmt2a_rearranged"]).lab("igg", -3, 800, "mg/dL")
    p.lab("cd19_pct", 28, 0.1, "%")
    p.lab("mrd", 56, 0.003, "1", method="flow", detected=True, sensitivity=1e-4)
    p.event("relapse", 70, detail="cd19_negative").lab("igg", 72, 620, "mg/dL")


def _end_of_follow_up(p: _Patient) -> None:
    p.infusion().lab("igg", -3, 700, "mg/dL").lab("cd19_pct", 28, 0.1, "%")
    p.lab("igg", 30, 320, "mg/dL").event("end_of_follow_up", 50, detail="transfer")
    p.lab("igg", 56, 300, "mg/dL")


_STORIES = {
    "maintained_bca": (_maintained_bca, 361),
    "early_bca_loss": (_early_bca_loss, 85),
    "igg_decline": (_igg_decline, 76),
    "prolonged_neutropenia": (_prolonged_neutropenia, 22),
    "iec_hs": (_iec_hs, 25),
    "mrd_positive": (_mrd_positive, 57),
    # the latest CD19 (day 55) 45 days and the latest IgG (day 30) 70 days before now
    "monitoring_gap": (_monitoring_gap, 100),
    "bca_not_established": (_bca_not_established, 29),
    "hct_performed": (_hct_performed, 96),
    "relapse": (_relapse, 73),
    "end_of_follow_up": (_end_of_follow_up, 57),
}


def patient(trajectory: str, patient_id: str, now: datetime) -> list[WireRecord]:
    """One patient's records in the order a hospital would send them (infusion first)."""
    build, span_days = _STORIES[trajectory]
    p = _Patient(patient_id, now - timedelta(days=span_days))
    build(p)
    return p.records


def cohort(
    n: int, now: datetime | None = None, *, prefix: str = "SYN", trajectories: tuple[str, ...] = ()
) -> list[WireRecord]:
    """``n`` enrolled patients cycling through ``trajectories`` (default all), interleaved.

    Each patient's own records keep their order; patients take turns, so the stream looks like a
    live feed rather than one patient after another.
    """
    now = now or datetime.now(UTC)
    stories = trajectories or TRAJECTORIES
    patients = [patient(stories[i % len(stories)], f"{prefix}-{i + 1:05d}", now) for i in range(n)]
    return list(_interleave(patients))


def _interleave(patients: list[list[WireRecord]]) -> Iterator[WireRecord]:
    longest = max((len(p) for p in patients), default=0)
    for index in range(longest):
        for records in patients:
            if index < len(records):
                yield records[index]


_HOSPITAL_LABS = (
    ("anc", "/uL", 400, 9000),
    ("wbc", "/uL", 2000, 15000),
    ("hemoglobin", "g/dL", 7, 17),
    ("platelets", "10*3/uL", 20, 450),
    ("crp", "mg/L", 0, 150),
    ("alt", "U/L", 5, 120),
    ("igg", "mg/dL", 300, 1600),
    ("ferritin", "ng/mL", 10, 900),
)


def hospital_labs(
    n: int, now: datetime | None = None, *, seed: int = 7, patients: int = 50_000
) -> Iterator[WireRecord]:
    """``n`` plausible results for never-infused hospital patients (``not_enrolled``)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    for i in range(n):
        analyte, unit, low, high = _HOSPITAL_LABS[i % len(_HOSPITAL_LABS)]
        collected = now - timedelta(minutes=rng.randrange(1, 60 * 24 * 30))
        yield {
            "type": "lab_result",
            "patient_id": f"HOSP-{rng.randrange(patients):06d}",
            "analyte": analyte,
            "value": round(rng.uniform(low, high), 1),
            "unit": unit,
            "collected_at": iso(collected),
            "resulted_at": iso(collected + timedelta(hours=2)),
            "status": "final",
            "accession": f"H-{seed}-{i}",
            "source": "lab-main",
        }


def hospital_feed(
    enrolled: list[WireRecord], not_enrolled_fraction: float, now: datetime | None = None
) -> list[WireRecord]:
    """``enrolled`` records mixed with never-infused patients' results so that the latter are
    ``not_enrolled_fraction`` of the total; the enrolled records keep their order."""
    if not 0 <= not_enrolled_fraction < 1:
        raise ValueError("not_enrolled_fraction must be in [0, 1)")
    if not enrolled or not_enrolled_fraction == 0:
        return list(enrolled)
    extra = round(len(enrolled) * not_enrolled_fraction / (1 - not_enrolled_fraction))
    filler = list(hospital_labs(extra, now))
    mixed: list[WireRecord] = []
    ratio = extra / len(enrolled)
    owed = 0.0
    fill = iter(filler)
    for record in enrolled:
        mixed.append(record)
        owed += ratio
        while owed >= 1:
            owed -= 1
            mixed.append(next(fill))
    mixed.extend(fill)
    return mixed


def topic_of(record: WireRecord) -> str:
    """``labs`` for lab results, ``clinical`` for infusions and clinical events."""
    return "labs" if record.get("type") == "lab_result" else "clinical"
