"""Differential check: random patients through ``carwatch replay`` and a clean-room reference.

    python -m bench.differential --seeds 1-10 --patients 150

``reference.py`` is an independent, deliberately simple implementation of the rules, written by a
reviewer who had not seen this code, from the clinical rules and the wire contracts alone
(REFERENCE.md: how it works and its 32 interpretation choices). Random patients -- values near
every threshold, specimens of several analytes, late arrivals, corrections, cancellations,
duplicates, censored values, course events -- are replayed through both, and each patient's alert
events are compared on (rule, action, severity, event time; a monitoring gap's time is not).

Where the two differ by a documented choice, the difference is named and counted, not hidden:
- ``revision grouping``: the reference applies a correction or cancellation together with its
  result when they are consecutive; the product starts a new step (docs/clinical-spec.md "Same
  specimen"). The generator never puts a revision right behind a record of its instant.
- ``hct at infusion``: the reference raises HCT advice as info and updates it to warning at the
  same instant; the product raises the warning.
- ``recovery span``: "spanning at least 3 days" -- the reference takes a difference of day numbers
  (days 10 and 13), the product calendar days inclusive (days 10 to 12), as the consensus's
  "3 consecutive days" (docs/clinical-spec.md section 3). Patients that differ only in
  prolonged_neutropenia and monitoring_gap events are counted under it.
- ``iec-hs join at resolution``: the reference lets a category join through the ferritin that
  resolves an episode (updated, then resolved); the product does not.
- ``late episode replayed``: when a late result reveals an episode, the reference raises it as it
  first stood and then updates it to how it stands now; the product raises it as it stands now
  (docs/clinical-spec.md "Resolved vs retracted": raised, then resolved if over).
- ``recovery span + iec-hs join at resolution``, ``recovery span + late episode replayed``: both
  in one patient. Neutropenia and IEC-HS share no state, and one ANC can serve both (R7-58: ANC
  1200 on day 58 and 501 on day 60 recover the neutropenia over days 58-60 for the product, and
  are the cytopenia that joins an IEC-HS episode a corrected ferritin reveals late; R7-1: recovery
  over days 33-35, and ALT joining through the ferritin that resolves IEC-HS). Without the
  neutropenia and gap events, the reference must have exactly one IEC-HS ``updated`` more, in the
  shape of the named difference: at the time of the resolution right after it, or later than the
  raise right before it (which the product raises as it stands now).
Everything else that differs is printed in full: each is a bug in one of the two.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
DAY0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
VALUES = {
    "anc": ([50, 100, 101, 300, 450, 500, 501, 800, 1000, 1200, 1600, 3000], "/uL"),
    "platelets": ([10, 19, 20, 45, 60, 120, 250], "10*3/uL"),
    "igg": ([150, 350, 399, 400, 401, 700], "mg/dL"),
    "cd19_pct": ([0.0, 0.3, 0.99, 1.0, 1.5, 2.0, 4.0], "%"),
    "cd19_abs": ([0, 5, 9, 10, 15, 20, 60], "/uL"),
    "ferritin": ([200, 400, 700, 900, 1500, 5000, 12000], "ng/mL"),
    "fibrinogen": ([90, 149, 150, 300], "mg/dL"),
    "alt": ([30, 200, 201, 600], "U/L"),
    "triglycerides": ([150, 265, 266, 400], "mg/dL"),
}
Event = tuple[str, str, str, str | None]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _lab(rng: random.Random, pid: str, n: int, analyte: str, at: datetime) -> dict:
    record: dict = {
        "type": "lab_result",
        "patient_id": pid,
        "analyte": analyte,
        "collected_at": iso(at),
        "resulted_at": iso(at + timedelta(hours=4)),
        "status": "final",
        "accession": f"{pid}-{n}",
        "source": "lab",
    }
    if analyte == "mrd":
        detected = rng.random() < 0.5
        record.update(method=rng.choice(["flow", "ngs", "pcr"]), detected=detected, unit="1")
        if rng.random() < 0.6:
            record["sensitivity"] = rng.choice([1e-4, 1e-5, 1e-6])
        if detected and rng.random() < 0.6:
            record["value"] = rng.choice([1e-5, 5e-5, 1e-4, 1e-3])
        return record
    values, unit = VALUES[analyte]
    record.update(value=rng.choice(values), unit=unit)
    if rng.random() < 0.08:
        record["comparator"] = rng.choice(["<", ">", "<=", ">="])
    return record


def patient(rng: random.Random, pid: str) -> list[dict]:
    risk = rng.sample(
        [
            "high_disease_burden",
            "low_cell_dose",
            "kmt2a_rearranged",
            "cardiac_pulmonary_comorbidity",
        ],
        rng.randint(0, 2),
    )
    infusion: dict = {
        "type": "infusion",
        "patient_id": pid,
        "infused_at": iso(DAY0),
        "costimulatory_domain": rng.choice(["4-1BB", "4-1BB", "CD28"]),
        "prior_hct": rng.random() < 0.2,
        "risk_factors": risk,
    }
    if rng.random() < 0.8:
        infusion["hct_eligible"] = rng.random() < 0.8
    span = rng.choice([40, 120, 250, 400])
    labs: dict[tuple[str, str], dict] = {}
    n = 0
    for _ in range(rng.randint(5, 45)):
        analyte = rng.choice([*VALUES, "mrd", "anc", "anc", "cd19_pct", "igg"])
        at = DAY0.replace(hour=rng.choice([0, 6, 8, 12, 18, 23])) + timedelta(
            days=rng.randint(-5, span)
        )
        n += 1
        record = _lab(rng, pid, n, analyte, at)
        labs.setdefault((analyte, record["collected_at"]), record)
        companion = {"anc": "platelets", "cd19_pct": "cd19_abs"}.get(analyte)
        if companion and rng.random() < 0.5:  # the rest of the specimen
            n += 1
            other = _lab(rng, pid, n, companion, at)
            other.pop("comparator", None)
            labs.setdefault((companion, other["collected_at"]), other)
    results = sorted(labs.values(), key=lambda r: r["collected_at"])
    kinds = ["ivig_given", "reinfusion", "crs_resolved", "hct_performed", "relapse",
             "end_of_follow_up", "ivig_given"]  # fmt: skip
    events = []
    for kind in rng.sample(kinds, rng.randint(0, 2)):
        event = {
            "type": "clinical_event",
            "patient_id": pid,
            "kind": kind,
            "at": iso(DAY0.replace(hour=9) + timedelta(days=rng.randint(1, span))),
        }
        if kind == "relapse" and rng.random() < 0.5:
            event["detail"] = "cd19_negative"
        events.append(event)
    stream = sorted(results + events, key=lambda r: r.get("collected_at") or r["at"])
    for _ in range(rng.randint(0, 3)):  # late arrivals
        if len(stream) > 2:
            record = stream.pop(rng.randrange(len(stream) - 1))
            stream.insert(rng.randint(0, len(stream)), record)
    for record in results:  # revisions and re-deliveries, after their result
        roll = rng.random()
        if roll < 0.05 and record["analyte"] != "mrd":
            revision = dict(
                record, status="corrected", value=rng.choice(VALUES[record["analyte"]][0])
            )
        elif roll < 0.08:
            revision = dict(record, status="cancelled")
        elif roll < 0.11:
            revision = dict(record)
        else:
            continue
        spot = rng.randint(next(i for i, r in enumerate(stream) if r is record) + 1, len(stream))
        while (
            spot <= len(stream) and stream[spot - 1].get("collected_at") == record["collected_at"]
        ):
            spot += 1
        if spot > len(stream):  # nothing of another instant after it: keep it apart with one
            pid = record["patient_id"]
            stream.append({"type": "clinical_event", "patient_id": pid, "kind": "crs_resolved",
                           "at": iso(DAY0)})  # fmt: skip
        stream.insert(spot, revision)
    return [infusion, *stream]


def events_by_patient(stdout: str) -> dict[str, list[Event]]:
    found: dict[str, list[Event]] = defaultdict(list)
    for line in stdout.splitlines():
        if line.strip():
            e = json.loads(line)
            at = None if e["rule"] == "monitoring_gap" else e["event_time"]
            found[e["patient_id"]].append((e["rule"], e["action"], e["severity"], at))
    return found


def _hct_at_infusion(events: list[Event]) -> list[Event]:
    for i in range(len(events) - 1):
        a, b = events[i], events[i + 1]
        if (
            a[0] == b[0] == "hct_consolidation"
            and (a[1], b[1]) == ("raised", "updated")
            and a[3] == b[3]
        ):
            return [*events[:i], (a[0], "raised", b[2], a[3]), *events[i + 2 :]]
    return events


def classify(ours: list[Event], ref: list[Event]) -> str | None:
    """None when they agree; else the name of the documented difference, or "unexplained"."""
    if ours == ref:
        return None
    ref = _hct_at_infusion(ref)
    if ours == ref:
        return "hct at infusion"
    icaht = ("prolonged_neutropenia", "monitoring_gap")
    ours_rest, ref_rest = ([e for e in side if e[0] not in icaht] for side in (ours, ref))
    if ours_rest == ref_rest:
        return "recovery span"
    joined = [e for e in ref if not (e[0] == "iec_hs" and e[1] == "updated")]
    if [e for e in ours if not (e[0] == "iec_hs" and e[1] == "updated")] == joined:
        return "iec-hs join at resolution"
    if [e for e in ref if e[1] != "updated"] == [e for e in ours if e[1] != "updated"]:
        return "late episode replayed"
    both = _one_iec_hs_update_more(ours_rest, ref_rest)
    return f"recovery span + {both}" if both else "unexplained"


def _one_iec_hs_update_more(ours: list[Event], ref: list[Event]) -> str | None:
    """Which documented IEC-HS difference one extra reference `updated` is, if it is one."""
    for i in range(1, len(ref)):
        rule, action, severity, at = ref[i]
        if (rule, action) != ("iec_hs", "updated"):
            continue
        before, after = ref[i - 1], ref[i + 1 : i + 2]
        if after == [(rule, "resolved", severity, at)] and ref[:i] + ref[i + 1 :] == ours:
            return "iec-hs join at resolution"
        replayed = [*ref[: i - 1], (rule, "raised", severity, before[3]), *ref[i + 1 :]]
        if before[:2] == (rule, "raised") and str(before[3]) < str(at) and replayed == ours:
            return "late episode replayed"
    return None


def run_seed(seed: int, count: int) -> tuple[Counter[str], list[str]]:
    rng = random.Random(seed)
    patients = [patient(rng, f"R{seed}-{i}") for i in range(count)]
    now = iso(DAY0 + timedelta(days=420))
    with tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False) as handle:
        for records in patients:
            handle.writelines(json.dumps(r) + "\n" for r in records)
    ours = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", handle.name, "--now", now],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ref = subprocess.run(
        [sys.executable, str(HERE / "reference.py"), handle.name, "--now", now],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    Path(handle.name).unlink()
    a, b = events_by_patient(ours.stdout), events_by_patient(ref.stdout)
    tally: Counter[str] = Counter()
    details = []
    for pid in sorted(set(a) | set(b)):
        verdict = classify(a.get(pid, []), b.get(pid, []))
        tally[verdict or "agree"] += 1
        if verdict == "unexplained":
            details.append(f"{pid}\n  product:   {a.get(pid)}\n  reference: {b.get(pid)}")
    tally["agree"] += count - sum(tally.values())
    return tally, details


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10", help="a range like 1-10")
    parser.add_argument("--patients", type=int, default=150)
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    total: Counter[str] = Counter()
    for seed in range(int(first), int(last or first) + 1):
        tally, details = run_seed(seed, args.patients)
        total += tally
        for detail in details:
            print(detail)
    patients = sum(total.values())
    print(f"{patients} random patients: " + ", ".join(f"{k} {v}" for k, v in total.most_common()))
    return 1 if total["unexplained"] else 0


if __name__ == "__main__":
    sys.exit(main())
