"""A year of routine post-CAR-T labs for a synthetic cohort, as NDJSON wire lines (bytes).

Schedule per patient (about 120 results a year): infusion; CBC (ANC, platelets, ALC, WBC) every
3 days in days 0-30, then monthly; monthly CD19 % and IgG; ferritin at baseline and weekly in the
first month; quarterly MRD. Trajectories at roughly clinical frequencies, so every rule does real
work: 30 % prolonged early neutropenia, 20 % loss of B-cell aplasia, 40 % low IgG, 3 % an IEC-HS
pattern (ferritin surge with falling counts and low fibrinogen), 10 % detected MRD.
"""

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

DAY0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def patient_lines(index: int, rng: random.Random) -> list[tuple[float, bytes]]:
    pid = f"BENCH{index:06d}"
    day0 = DAY0 + timedelta(days=rng.randrange(0, 60))
    lines: list[tuple[float, bytes]] = []
    seq = 0
    neutropenic = rng.random() < 0.3
    loses_bca = rng.random() < 0.2
    low_igg = rng.random() < 0.4
    iec_hs = rng.random() < 0.03

    def lab(day: float, analyte: str, value: float | None, unit: str, **extra: object) -> None:
        nonlocal seq
        seq += 1
        at = day0 + timedelta(days=day, hours=-2)
        record = {
            "type": "lab_result",
            "patient_id": pid,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "collected_at": _iso(at),
            "resulted_at": _iso(at + timedelta(hours=5)),
            "status": "final",
            "accession": f"{pid}-{seq}",
            "source": "lab-main",
            **extra,
        }
        lines.append((at.timestamp(), json.dumps(record, separators=(",", ":")).encode()))

    infusion = {
        "type": "infusion",
        "patient_id": pid,
        "infused_at": _iso(day0),
        "costimulatory_domain": "4-1BB",
        "prior_hct": False,
        "risk_factors": [],
    }
    lines.append(((day0 - timedelta(days=3)).timestamp(), json.dumps(infusion).encode()))
    cbc_days = [*range(0, 31, 3), *range(60, 366, 30)]
    for day in cbc_days:
        anc = rng.choice((80, 300, 450)) if neutropenic and day < 20 else rng.randint(600, 4000)
        lab(day, "anc", anc, "/uL")
        lab(day, "platelets", rng.randint(15, 300), "10*3/uL")
        lab(day, "alc", rng.randint(200, 3000), "/uL")
        lab(day, "wbc", rng.randint(1000, 9000), "/uL")
    for month in range(1, 13):
        cd19 = rng.choice((1.5, 3.0)) if loses_bca and month > 3 else rng.choice((0.0, 0.1, 0.3))
        lab(30 * month, "cd19_pct", cd19, "%")
        lab(
            30 * month + 1,
            "igg",
            rng.randint(250, 399) if low_igg else rng.randint(450, 900),
            "mg/dL",
        )
    baseline = rng.randint(200, 900)
    for day in (-2, 7, 14, 21, 28):
        surge = iec_hs and day == 14
        lab(day, "ferritin", baseline * (6 if surge else rng.uniform(0.8, 1.5)), "ng/mL")
        if surge:
            lab(day, "fibrinogen", 120, "mg/dL")
    for day in (28, 90, 180, 270):
        detected = rng.random() < 0.1
        lab(day, "mrd", 1e-4 if detected else None, "1", method="ngs", detected=detected)
    return lines


def cohort(patients: int, seed: int = 2025) -> Iterator[bytes]:
    """All patients' lines, each patient's in collection order, patients interleaved by time."""
    rng = random.Random(seed)
    everything: list[tuple[float, bytes]] = []
    for index in range(patients):
        everything.extend(patient_lines(index, rng))
    everything.sort(key=lambda item: item[0])
    for _, line in everything:
        yield line
