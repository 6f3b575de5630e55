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
  resolves an episode (updated, then resolved); the product does not. After a correction that
  raises the peak, so that a later ferritin now resolves the episode, the product's category
  that had joined through that ferritin leaves again (updated, then resolved) and the
  reference's stays. Matched as an iec_hs ``updated`` right before its ``resolved``, on the
  side that prints it.
- ``late episode replayed``: when a late result reveals an episode, the reference raises it as it
  first stood and then updates it to how it stands now; the product raises it as it stands now
  (docs/clinical-spec.md "Resolved vs retracted": raised, then resolved if over). Matched as an
  ``updated`` right after the ``raised`` of its rule and later than it (R7-58: a cytopenia of
  day 60 in an IEC-HS episode from day 52 that a corrected ferritin revealed).
- ``late less sensitive negative``: an MRD negative too insensitive to resolve, collected before
  the latest one of the episode but arriving after it, or withdrawn by a cancellation or
  correction: the reference sends ``updated`` at its time, since every less sensitive negative
  is context to it; the product sends ``updated`` only when what its alert shows changes (the
  latest such negative), as "``updated`` carries escalation or new evidence" (docs/clinical-spec.md
  "Episodes and alert ids"). Matched as an ``mrd_positive`` ``updated`` earlier than an
  ``mrd_positive`` event printed before it, or equal to one.
A patient whose events differ by several of these at once is counted under the fewest that
explain it together ("recovery span + iec-hs join at resolution").
Everything else that differs is printed in full: each is a bug in one of the two.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import combinations
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


def _icaht(e: Event) -> bool:
    return e[0] in ("prolonged_neutropenia", "monitoring_gap")


def _without_icaht(events: list[Event]) -> list[Event]:
    return [e for e in events if not _icaht(e)]


#: Where one side prints an event the other does not: is ``events[i]`` such an event?
Extra = Callable[[list[Event], int], bool]


def _iec_hs_join(events: list[Event], i: int) -> bool:
    """An iec_hs ``updated`` right before its ``resolved``."""
    e, later = events[i], events[i + 1] if i + 1 < len(events) else None
    return (
        e[:2] == ("iec_hs", "updated") and later is not None and later[:2] == ("iec_hs", "resolved")
    )


def _late_episode(events: list[Event], i: int) -> bool:
    """An ``updated`` right after a ``raised`` of its rule, later than it (a late-revealed episode
    replayed: the update is at the time of its last change, REFERENCE.md choice 29)."""
    e, before = events[i], events[i - 1] if i > 0 else None
    return (
        e[1] == "updated"
        and before is not None
        and before[:2] == (e[0], "raised")
        and (e[3] or "") > (before[3] or "")
    )


def _late_mrd_update(events: list[Event], i: int) -> bool:
    """An ``mrd_positive`` ``updated`` earlier than one of its events printed before it, or
    the same as one (sent again when the negative is withdrawn)."""
    e = events[i]
    earlier = [x[3] for x in events[:i] if x[0] == "mrd_positive" and x[3] is not None]
    return (
        e[:2] == ("mrd_positive", "updated")
        and e[3] is not None
        and (e[3] < max(earlier, default="") or e in events[:i])
    )


#: The documented differences (module docstring): how each rewrites both sides, or which of the
#: reference's events it explains.
REWRITES: dict[str, Callable[[list[Event], list[Event]], tuple[list[Event], list[Event]]]] = {
    "hct at infusion": lambda ours, ref: (ours, _hct_at_infusion(ref)),
    "recovery span": lambda ours, ref: (_without_icaht(ours), _without_icaht(ref)),
}
EXTRAS: dict[str, Extra] = {
    "iec-hs join at resolution": _iec_hs_join,
    "late less sensitive negative": _late_mrd_update,
    "late episode replayed": _late_episode,
}


def _explained(ours: list[Event], ref: list[Event], extras: list[Extra]) -> bool:
    """Whether the two agree once the events that ``extras`` explain are left out where the
    other side does not print them."""

    def explained(events: list[Event]) -> list[bool]:
        return [any(extra(events, k) for extra in extras) for k in range(len(events))]

    ours_extra, ref_extra = explained(ours), explained(ref)

    @cache
    def aligned(i: int, j: int) -> bool:
        """Whether ``ours[i:]`` and ``ref[j:]`` agree, skipping only explained events (every
        way is tried: an explained event may equal the common one after it)."""
        if i == len(ours) and j == len(ref):
            return True
        return (
            (i < len(ours) and j < len(ref) and ours[i] == ref[j] and aligned(i + 1, j + 1))
            or (j < len(ref) and ref_extra[j] and aligned(i, j + 1))
            or (i < len(ours) and ours_extra[i] and aligned(i + 1, j))
        )

    return aligned(0, 0)


def classify(ours: list[Event], ref: list[Event]) -> str | None:
    """None when they agree; else the name of the fewest documented differences that explain
    it (several at once joined by " + "), or "unexplained"."""
    if ours == ref:
        return None
    names = [*REWRITES, *EXTRAS]
    for size in range(1, len(names) + 1):
        for combination in combinations(names, size):
            a, b = ours, ref
            for name in combination:
                if name in REWRITES:
                    a, b = REWRITES[name](a, b)
            if _explained(a, b, [EXTRAS[n] for n in combination if n in EXTRAS]):
                return " + ".join(combination)
    return "unexplained"


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
