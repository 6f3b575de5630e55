"""Writes the scenario NDJSON files in this folder (wire contracts, synthetic patients only).

    python tests/data/scenarios/build.py && for f in tests/data/scenarios/*.ndjson; do ...; done

Each scenario is one clinical story; ``<name>.expected.ndjson`` beside it holds the alert events
``carwatch replay <name>.ndjson`` must print (reviewed by hand, then pinned by
tests/unit/cli/test_replay.py).
"""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
DAY0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def t(day: float, hour: int = 8) -> str:
    return (DAY0.replace(hour=hour) + timedelta(days=day)).isoformat().replace("+00:00", "Z")


class Story:
    def __init__(self, patient: str) -> None:
        self.patient = patient
        self.lines: list[str] = []
        self.n = 0

    def raw(self, line: str) -> "Story":
        self.lines.append(line)
        return self

    def infusion(self, **kw: object) -> "Story":
        record = {
            "type": "infusion",
            "patient_id": self.patient,
            "infused_at": t(0, 10),
            "product": "tisagenlecleucel",
            "costimulatory_domain": "4-1BB",
            "prior_hct": False,
            "hct_eligible": True,
            "risk_factors": [],
        }
        record.update(kw)
        return self.raw(json.dumps(record))

    def event(self, kind: str, day: float) -> "Story":
        return self.raw(
            json.dumps(
                {
                    "type": "clinical_event",
                    "patient_id": self.patient,
                    "kind": kind,
                    "at": t(day, 9),
                }
            )
        )

    def lab(
        self, analyte: str, day: float, value: float | None, unit: str, **kw: object
    ) -> "Story":
        self.n += 1
        record: dict[str, object] = {
            "type": "lab_result",
            "patient_id": self.patient,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "collected_at": t(day),
            "resulted_at": t(day, 14),
            "status": "final",
            "accession": f"{self.patient}-{self.n:03d}",
            "source": "lab-main",
        }
        record.update(kw)
        if value is None:
            del record["value"]
        return self.raw(json.dumps(record))


def write(name: str, *stories: Story) -> None:
    lines = [line for s in stories for line in s.lines]
    (HERE / f"{name}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")


def bca_maintained() -> None:
    s = Story("SCN-BCA-OK").infusion()
    for day in (28, 56, 91, 120, 150, 180):
        s.lab("cd19_pct", day, 0.0, "%").lab("cd19_abs", day, 1, "/uL")
    write("bca_maintained", s)


def bca_early_loss() -> None:
    s = Story("SCN-BCA-EARLY").infusion()
    s.lab("cd19_pct", 28, 0.1, "%").lab("cd19_pct", 56, 0.2, "%")
    s.lab("cd19_pct", 84, 1.4, "%")  # onset: B cells back (< 2 x threshold)
    s.lab("cd19_pct", 88, 1.2, "%")  # only 4 days later: not yet confirmation
    s.lab("cd19_pct", 91, 1.6, "%")  # 7 days after onset: loss confirmed, day 84 onset
    s.lab("cd19_pct", 130, 0.3, "%")  # aplasia re-established (e.g. after reinfusion)
    s.event("reinfusion", 100)
    write("bca_early_loss", s)


def bca_late_loss_absolute() -> None:
    s = Story("SCN-BCA-LATE").infusion(hct_eligible=False)
    s.lab("cd19_abs", 30, 2, "cells/uL").lab("cd19_abs", 150, 4, "/uL")
    s.lab("cd19_abs", 200, 25, "10*9/L" if False else "/uL")  # 25 >= 2 x 10: immediate, day 200
    write("bca_late_loss_absolute", s)


def igg_decline() -> None:
    s = Story("SCN-IGG").infusion()
    s.lab("igg", -3, 7.2, "g/L")  # baseline 720 mg/dL
    s.lab("igg", 30, 520, "mg/dL")
    s.lab("igg", 60, 4.0, "g/L")  # exactly 400 mg/dL: no alert
    s.lab("igg", 90, 3.6, "g/L")  # 360 mg/dL: warning
    s.event("ivig_given", 95)
    s.lab("igg", 120, 380, "mg/dL")  # still low, 25 days after IVIG: same episode
    s.lab("igg", 150, 650, "mg/dL")  # resolved
    write("igg_decline", s)


def prolonged_neutropenia() -> None:
    s = Story("SCN-ICAHT").infusion()
    s.lab("platelets", 0, 40, "10*3/uL")
    for day in range(0, 31):
        s.lab("anc", day, 80 if day < 14 else 300, "/uL")  # 14 days <= 100: grade 4 by day 13
        if day % 7 == 0:
            s.lab("platelets", day, 15, "10^9/L")
    s.lab("anc", 38, 0.4, "10*9/L")  # 400 /uL
    s.lab("anc", 45, 0.45, "K/uL")  # 450 /uL
    s.lab("anc", 50, 900, "/uL").lab("anc", 52, 1200, "/uL")  # stable recovery by day 52
    write("prolonged_neutropenia", s)


def iec_hs() -> None:
    s = Story("SCN-IECHS").infusion()
    s.lab("ferritin", -2, 800, "ng/mL")  # baseline
    s.lab("ferritin", 5, 3000, "ng/mL")  # before day 7: does not count
    s.lab("anc", 8, 2400, "/uL").lab("platelets", 8, 120, "10*3/uL")
    s.lab("ferritin", 12, 2100, "ug/L")  # > 2 x 800
    s.lab("fibrinogen", 12, 1.2, "g/L")  # 120 mg/dL: hypofibrinogenemia -> critical
    s.lab("ldh", 12, 900, "U/L")  # context only
    s.lab("alt", 13, 260, "U/L")  # > 200: transaminitis joins -> updated
    s.lab("platelets", 14, 50, "10*3/uL")  # fell >= 50 % from 120: cytopenia joins
    s.lab("ferritin", 16, 9000, "ng/mL")  # peak
    s.lab("ferritin", 24, 4000, "ng/mL")  # < 50 % of peak: resolved
    write("iec_hs", s)


def mrd_positive() -> None:
    s = Story("SCN-MRD").infusion(risk_factors=["kmt2a_rearranged"])
    s.lab("mrd", -7, 0.12, "1", method="flow", detected=True)  # before infusion: not an alert
    s.lab("mrd", 28, None, "1", method="ngs", detected=False, sensitivity=1e-6)
    s.lab("mrd", 90, None, "1", method="ngs", detected=True, sensitivity=1e-6)  # below LOQ
    s.lab("mrd", 120, 12, "/10*6", method="ngs", detected=True)  # 1.2e-5: rising -> updated
    s.lab("mrd", 150, 0.01, "%", method="flow", detected=True)  # 1e-4: rising -> updated
    write("mrd_positive", s)


def correction_retracts() -> None:
    s = Story("SCN-CORR").infusion()
    s.lab("igg", 30, 350, "mg/dL", accession="SCN-CORR-IGG1")
    s.lab("igg", 30, 350, "mg/dL", accession="SCN-CORR-IGG1")  # duplicate
    s.lab("igg", 30, 530, "mg/dL", accession="SCN-CORR-IGG1", status="corrected")  # retracts
    s.lab("mrd", 60, None, "1", method="flow", detected=True, accession="SCN-CORR-MRD1")
    s.lab(
        "mrd",
        60,
        None,
        "1",
        method="flow",
        detected=True,
        accession="SCN-CORR-MRD1",
        status="cancelled",
    )  # retracts
    write("correction_retracts", s)


def hospital_feed_with_bad_lines() -> None:
    enrolled = Story("SCN-FEED").infusion(costimulatory_domain="CD28")
    enrolled.lab("anc", 3, 1500, "/uL")
    other = Story("OTHER-PATIENT")
    other.lab("anc", 3, 200, "/uL").lab("igg", 3, 100, "mg/dL")  # not enrolled
    bad = Story("SCN-FEED")
    bad.raw("{this is not json")
    bad.raw(
        json.dumps(
            {
                "type": "lab_result",
                "patient_id": "SCN-FEED",
                "analyte": "anc",
                "value": 300,
                "unit": "/uL",
                "collected_at": "2026-01-05T08:00:00",
            }
        )
    )
    bad.raw(
        json.dumps(
            {
                "type": "lab_result",
                "patient_id": "SCN-FEED",
                "analyte": "anc",
                "value": 300,
                "unit": "mmol/L",
                "collected_at": t(4),
            }
        )
    )
    bad.raw(
        json.dumps(
            {
                "type": "lab_result",
                "patient_id": "SCN-FEED",
                "analyte": "hemoglobin",
                "value": 13.4,
                "unit": "g/mL",
                "collected_at": t(4),
            }
        )
    )
    bad.raw(
        json.dumps(
            {
                "type": "lab_result",
                "patient_id": "SCN-FEED",
                "loinc": "2345-7",
                "value": 95,
                "unit": "mg/dL",
                "collected_at": t(4),
            }
        )
    )  # glucose: unmapped
    bad.raw(
        json.dumps(
            {"type": "clinical_event", "patient_id": "SCN-FEED", "kind": "haircut", "at": t(4)}
        )
    )
    bad.raw(
        json.dumps(
            {
                "type": "lab_result",
                "patient_id": "SCN-FEED",
                "analyte": "igg",
                "value": -5,
                "unit": "mg/dL",
                "collected_at": t(4),
            }
        )
    )
    write("hospital_feed_with_bad_lines", enrolled, other, bad)


if __name__ == "__main__":
    for build in (
        bca_maintained,
        bca_early_loss,
        bca_late_loss_absolute,
        igg_decline,
        prolonged_neutropenia,
        iec_hs,
        mrd_positive,
        correction_retracts,
        hospital_feed_with_bad_lines,
    ):
        build()
