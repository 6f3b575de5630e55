#!/usr/bin/env python3
"""Independent, deliberately simple reference implementation of the CAR-T Watch
lab-alerting rules (the clinical rules, revision 2: docs/clinical-spec.md).

Usage:
    python3 ref.py INPUT.ndjson [--now ISO]
    python3 ref.py --selftest

Design: after every arrival step, every rule's episodes are recomputed from the
whole stored history of the patient (no incremental state, no pruning) and the
result is diffed against what was announced before.  See README.md for every
interpretation choice (numbered; the code cites them as "[Cn]").
Standard library only, Python 3.11.
"""

import argparse
import json
import math
import sys
from datetime import datetime, timedelta, timezone

UTC = timezone.utc

# --------------------------------------------------------------------------
# Policy defaults (docs/clinical-spec.md)
# --------------------------------------------------------------------------
CD19_PCT_THRESHOLD = 1.0  # %   (aplastic when below)
CD19_ABS_THRESHOLD = 10.0  # /uL (aplastic when below)
BCA_CONFIRM_DAYS = 7  # second qualifying specimen >= 7 days after the first
SIX_MONTHS_DAY = 183  # "within 6 months" = day <= 183
BCA_ESTABLISH_CHECK_DAY = 21
IGG_THRESHOLD = 400.0  # mg/dL, alert when below
ICAHT_ALERT_GRADE = 3
IEC_HS_EARLIEST_DAY = 7
FERRITIN_ULN = 300.0  # ng/mL
CYTO_MIN_FALL_ANC = 250.0  # /uL
CYTO_MIN_FALL_PLT = 25.0  # 10^3/uL
FIBRINOGEN_LOW = 150.0  # mg/dL
TRANSAMINASE_ULN = 40.0  # U/L
TRIGLYCERIDES_HIGH = 265.0  # mg/dL
MRD_DEFAULT_SENS = {"flow": 1e-4, "pcr": 1e-4, "ngs": 1e-6}
GAP_CD19_DAYS = (35, 90)  # (first year, after)
GAP_IGG_DAYS = (60, 90)
GAP_ANC_DAYS = 7
FIRST_YEAR_LAST_DAY = 365

RULES = [
    "bca_loss",
    "bca_not_established",
    "hypogammaglobulinemia",
    "prolonged_neutropenia",
    "iec_hs",
    "mrd_positive",
    "hct_consolidation",
    "monitoring_gap",
]
RULE_ORDER = {r: i for i, r in enumerate(RULES)}

HCT_INFO_FACTORS = {
    "donor_available_wishes_hct",
    "high_disease_burden",
    "blinatumomab_failure",
    "refractory_disease",
    "kmt2a_rearranged",
    "tp53_mutated",
}
RISK_FACTORS = HCT_INFO_FACTORS | {
    "cardiac_pulmonary_comorbidity",
    "low_cell_dose",
    "early_post_hct_relapse",
    "suboptimal_fludarabine",
}
EVENT_KINDS = {
    "ivig_given",
    "reinfusion",
    "crs_resolved",
    "hct_performed",
    "relapse",
    "end_of_follow_up",
}
STATUSES = {"preliminary", "final", "corrected", "cancelled"}
COMPARATORS = {"<", "<=", ">", ">="}
MRD_METHODS = {"flow", "ngs", "pcr"}

# --------------------------------------------------------------------------
# Units: analyte -> {normalised spelling: factor to the canonical unit}   [C3]
# --------------------------------------------------------------------------
_PER_UL = {"/ul": 1.0, "cells/ul": 1.0}
_THOUSANDS = {
    "10*3/ul": 1.0,
    "10^3/ul": 1.0,
    "x10e3/ul": 1.0,
    "k/ul": 1.0,
    "10*9/l": 1.0,
    "10^9/l": 1.0,
}
CELL_UNITS = {**_PER_UL, **{u: 1000.0 for u in _THOUSANDS}}  # -> cells/uL
PLT_UNITS = {**{u: 0.001 for u in _PER_UL}, **_THOUSANDS}  # -> 10^3/uL
MASS_DL = {"mg/dl": 1.0, "g/l": 100.0}  # -> mg/dL
UNITS = {
    "cd19_pct": {"%": 1.0, "1": 100.0},
    "cd19_abs": CELL_UNITS,
    "anc": CELL_UNITS,
    "alc": CELL_UNITS,
    "wbc": CELL_UNITS,
    "platelets": PLT_UNITS,
    "igg": MASS_DL,
    "fibrinogen": MASS_DL,
    "triglycerides": MASS_DL,
    "ferritin": {"ng/ml": 1.0, "ug/l": 1.0},
    "alt": {"u/l": 1.0},
    "ast": {"u/l": 1.0},
    "ldh": {"u/l": 1.0},
    "mrd": {"%": 0.01, "1": 1.0, "/10*6": 1e-6},
    # analytes no rule reads: accepted in a listed spelling, never used
    "hemoglobin": {"g/l": 1.0, "mg/dl": 0.01},
    "bilirubin": MASS_DL,
    "crp": MASS_DL,
}


def norm_unit(u):
    return u.replace("\u00b5", "u").replace("\u03bc", "u").lower()


class Reject(Exception):
    pass


def parse_time(s):
    if not isinstance(s, str):
        raise Reject("invalid_time")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise Reject("invalid_time")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise Reject("naive_datetime")  # also a date without a time [C4]
    return dt.astimezone(UTC)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_time(t):
    if t is None:
        return None
    t = t.astimezone(UTC)
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------
class Result:
    __slots__ = (
        "analyte",
        "value",
        "comparator",
        "t",
        "status",
        "accession",
        "source",
        "method",
        "detected",
        "sensitivity",
        "seq",
    )

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def validate_lab(rec):
    """Return a Result, None for 'unmapped', or raise Reject."""
    pid = rec.get("patient_id")
    if not isinstance(pid, str) or not pid:
        raise Reject("invalid_patient")
    analyte = rec.get("analyte")
    if not isinstance(analyte, str) or analyte not in UNITS:
        return None  # unmapped (LOINC table not implemented) [C1]
    t = parse_time(rec.get("collected_at"))
    if "resulted_at" in rec and rec["resulted_at"] is not None:
        parse_time(rec["resulted_at"])
    status = rec.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        raise Reject("invalid_status")  # [C5]
    comparator = rec.get("comparator")
    if comparator is not None and (
        not isinstance(comparator, str) or comparator not in COMPARATORS
    ):
        raise Reject("invalid_value")
    value = rec.get("value")
    if value is not None:
        if not is_number(value):
            raise Reject("invalid_value")
        if value < 0:
            raise Reject("negative_value")
        unit = rec.get("unit")
        if not isinstance(unit, str):
            raise Reject("unknown_unit")
        factor = UNITS[analyte].get(norm_unit(unit))
        if factor is None:
            raise Reject("unknown_unit")
        value = value * factor
    method = detected = sensitivity = None
    if analyte == "mrd" and status != "cancelled":
        detected = rec.get("detected")
        if not isinstance(detected, bool):
            raise Reject("invalid_value")  # [C6]
        method = rec.get("method")
        if not isinstance(method, str) or method not in MRD_METHODS:
            raise Reject("invalid_value")  # [C6]
        sensitivity = rec.get("sensitivity")
        if sensitivity is not None:
            if not is_number(sensitivity):
                raise Reject("invalid_value")
            if sensitivity < 0:
                raise Reject("negative_value")
    elif value is None and status != "cancelled":
        raise Reject("missing_value")
    accession = rec.get("accession")
    source = rec.get("source")
    if not isinstance(accession, (str, type(None))) or not isinstance(source, (str, type(None))):
        raise Reject("invalid_value")
    return Result(
        analyte=analyte,
        value=value,
        comparator=comparator,
        t=t,
        status=status,
        accession=accession if accession else None,
        source=source,
        method=method,
        detected=detected,
        sensitivity=sensitivity,
    )


def validate_infusion(rec):
    pid = rec.get("patient_id")
    if not isinstance(pid, str) or not pid:
        raise Reject("invalid_patient")
    t = parse_time(rec.get("infused_at"))
    prior = rec.get("prior_hct", False)
    prior = False if prior is None else prior
    elig = rec.get("hct_eligible", True)
    elig = True if elig is None else elig
    if not isinstance(prior, bool) or not isinstance(elig, bool):
        raise Reject("invalid_value")
    rfs = rec.get("risk_factors") or []
    if not isinstance(rfs, list):
        raise Reject("invalid_value")
    for rf in rfs:
        if not isinstance(rf, str) or rf not in RISK_FACTORS:
            raise Reject("unknown_risk_factor:%s" % rf)
    costim = rec.get("costimulatory_domain")  # [C10]
    cd28 = isinstance(costim, str) and costim.upper().replace("-", "") == "CD28"
    return {
        "infused_at": t,
        "prior_hct": prior,
        "hct_eligible": elig,
        "risk_factors": list(rfs),
        "cd28": cd28,
    }


def validate_event(rec):
    pid = rec.get("patient_id")
    if not isinstance(pid, str) or not pid:
        raise Reject("invalid_patient")
    kind = rec.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise Reject("unknown_kind:%s" % kind)
    t = parse_time(rec.get("at"))
    return {"kind": kind, "at": t}


# --------------------------------------------------------------------------
# Episodes and announced alerts
# --------------------------------------------------------------------------
class Episode:
    """start: identity time of the episode; trans: [(time, severity, evidence)],
    trans[0] is the raise; end: resolution time or None."""

    def __init__(self, start, t, sev, sig=None):
        self.start = start
        self.trans = [(t, sev, sig)]
        self.end = None

    def change(self, t, sev, sig=None):
        if (sev, sig) != self.trans[-1][1:]:
            self.trans.append((t, sev, sig))

    @property
    def final(self):
        return self.trans[-1][1:]


class Alert:
    def __init__(self, rule, start, sev, sig):
        self.rule, self.start, self.sev, self.sig = rule, start, sev, sig
        self.status = "open"


class Patient:
    def __init__(self, pid, order):
        self.pid = pid
        self.order = order
        self.infusion = None
        self.results = []  # stored results, every status
        self.events = []  # course events (dicts)
        self.applied_keys = set()  # duplicate detection
        self.finalised = set()  # (accession, analyte) that had a final/corrected
        self.eof = False
        self.alerts = {r: [] for r in RULES}

    # ---- day numbers (policy time zone UTC) ----
    def day(self, t):
        return (t.astimezone(UTC).date() - self.infusion["infused_at"].date()).days

    def effective(self, *analytes):
        """final/corrected results (preliminaries never count), by time then arrival."""
        rs = [
            r for r in self.results if r.analyte in analytes and r.status in ("final", "corrected")
        ]
        return sorted(rs, key=lambda r: (r.t, r.seq))

    def event_times(self, *kinds):
        return sorted(e["at"] for e in self.events if e["kind"] in kinds)


# --------------------------------------------------------------------------
# Applying a lab result to the stored history (section 0)
# --------------------------------------------------------------------------
def apply_result(p, r, seq):
    """Section 0 preliminary / final / corrected / cancelled / duplicates [C7][C9]."""
    key_val = r.value
    if r.accession is not None:
        key = (r.source, r.accession, r.analyte, r.status, r.t, key_val)
    else:
        key = (r.source, None, r.analyte, r.status, r.t, key_val)
    if key in p.applied_keys:
        return  # duplicate [C7]
    p.applied_keys.add(key)
    r.seq = seq
    same = lambda x: (
        r.accession is not None and x.accession == r.accession and x.analyte == r.analyte
    )
    if r.status == "preliminary":
        if r.accession is not None and (r.accession, r.analyte) in p.finalised:
            return  # preliminary after a final: ignored
        p.results.append(r)
    elif r.status == "final":
        if r.accession is not None:
            p.finalised.add((r.accession, r.analyte))
            p.results = [x for x in p.results if not (same(x) and x.status == "preliminary")]
        p.results.append(r)
    elif r.status == "corrected":
        if r.accession is not None:
            p.finalised.add((r.accession, r.analyte))
            p.results = [x for x in p.results if not same(x)]
        p.results.append(r)  # unknown accession: a new result
    elif r.status == "cancelled":
        if r.accession is not None:
            p.results = [x for x in p.results if not same(x)]
        # unknown / missing accession: ignored


# --------------------------------------------------------------------------
# Rules: each computes its episodes from the entire stored history
# --------------------------------------------------------------------------
def stop_time(*lists):
    ts = [t for lst in lists for t in lst]
    return min(ts) if ts else None


def before(t, stop):
    return stop is None or t < stop


def close_at_stop(episodes, cur, stop):
    if cur is not None:
        if stop is not None:
            cur.end = stop
        episodes.append(cur)
    return episodes


def cd19_specimens(p, stop):
    """CD19 specimens (same collection time) collected after day 0 [C11], before stop."""
    by_t = {}
    for r in p.effective("cd19_pct", "cd19_abs"):
        if p.day(r.t) >= 1 and before(r.t, stop):
            by_t.setdefault(r.t, []).append(r)
    specs = []
    for t in sorted(by_t):
        rs = by_t[t]
        aplastic = any(r.value < thr(r.analyte) for r in rs)  # limit of a censored value [C12]
        specs.append((t, rs, aplastic))
    return specs


def thr(analyte):
    return CD19_PCT_THRESHOLD if analyte == "cd19_pct" else CD19_ABS_THRESHOLD


def rule_bca_loss(p, stop):
    """[C14][C32]"""
    episodes, cur, pending, established = [], None, None, False
    for t, rs, aplastic in cd19_specimens(p, stop):
        if aplastic:
            established = True
            pending = None  # cancels a pending loss
            if cur is not None:
                cur.end = t  # BCA re-established
                episodes.append(cur)
                cur = None
            continue
        if not established or cur is not None:
            continue
        if pending is None:
            pending = t  # onset: first qualifying specimen
        double = any(r.value >= 2 * thr(r.analyte) for r in rs)
        if double or p.day(t) - p.day(pending) >= BCA_CONFIRM_DAYS:
            sev = "critical" if p.day(pending) <= SIX_MONTHS_DAY else "warning"
            cur = Episode(pending, t, sev)
            pending = None
    return close_at_stop(episodes, cur, stop)


def rule_bca_not_established(p, stop):
    """[C15]"""
    specs = cd19_specimens(p, stop)
    seen_aplastic = False
    for i, (t, rs, aplastic) in enumerate(specs):
        if p.day(t) < BCA_ESTABLISH_CHECK_DAY:
            seen_aplastic = seen_aplastic or aplastic
            continue
        if aplastic or seen_aplastic:
            return []
        ep = Episode(t, t, "critical")
        for t2, _, ap2 in specs[i + 1 :]:
            if ap2:
                ep.end = t2
                return [ep]
        return close_at_stop([], ep, stop)
    return []


def rule_hypogammaglobulinemia(p, stop):
    """[C25]"""
    episodes, cur = [], None
    for r in p.effective("igg"):
        if not before(r.t, stop):
            continue
        if cur is None and r.value < IGG_THRESHOLD:
            cur = Episode(r.t, r.t, "warning")
        elif cur is not None and r.value >= IGG_THRESHOLD:
            cur.end = r.t
            episodes.append(cur)
            cur = None
    return close_at_stop(episodes, cur, stop)


def early_icaht_grade(p, prefix, count_start):
    """[C18]"""
    last_day = min(p.day(prefix[-1].t), 30)
    if count_start > last_day:
        return 0
    vals = []
    for d in range(count_start, last_day + 1):
        same = [r.value for r in prefix if p.day(r.t) == d]
        if same:
            vals.append(min(same))
        else:
            vals.append([r for r in prefix if p.day(r.t) < d][-1].value)
    n500 = [v <= 500 for v in vals]
    n100 = [v <= 100 for v in vals]
    # non-stable recovery: a stretch > 500 of < 3 days between two neutropenic days
    idx = [i for i, b in enumerate(n500) if b]
    for a, b in zip(idx, idx[1:]):
        if 0 < b - a - 1 < 3:
            for i in range(a + 1, b):
                n500[i] = True
    c500, c100 = sum(n500), sum(n100)
    g500 = 4 if c500 >= 31 else 3 if c500 >= 14 else 2 if c500 >= 7 else 1 if c500 >= 1 else 0
    g100 = 4 if c100 >= 14 else 3 if c100 >= 7 else 0
    return max(g500, g100)


def late_icaht_grade(p, prefix):
    if len(prefix) < 2:
        return 0
    a, b = prefix[-2], prefix[-1]
    if p.day(a.t) <= 30 or p.day(b.t) <= 30:
        return 0

    def g(v):
        return 4 if v <= 100 else 3 if v <= 500 else 2 if v <= 1000 else 1 if v <= 1500 else 0

    return min(g(a.value), g(b.value))


def icaht_scan(p, stop):
    """All neutropenia episodes (opened at ANC <= 500, closed at stable recovery).
    Returns list of dicts: start, end, alert (Episode or None)."""
    anc = [r for r in p.effective("anc") if p.day(r.t) >= 0 and before(r.t, stop)]  # [C17]
    eps, cur = [], None
    for i, r in enumerate(anc):
        prefix = anc[: i + 1]
        if cur is None:
            if r.value > 500:
                continue
            cur = {
                "start": r.t,
                "count_start": p.day(r.t),
                "grade": 0,
                "run": [],
                "alert": None,
                "end": None,
            }
        else:
            if r.value <= 500:
                cur["run"] = []
            else:
                cur["run"].append(r)
                run = cur["run"]
                if len(run) >= 2 and p.day(run[-1].t) - p.day(run[0].t) >= 3:  # [C16]
                    cur["end"] = r.t
                    if cur["alert"] is not None:
                        cur["alert"].end = r.t
                    eps.append(cur)
                    cur = None
                    continue
        grade = max(
            cur["grade"],
            early_icaht_grade(p, prefix, cur["count_start"]),
            late_icaht_grade(p, prefix),
        )
        if grade > cur["grade"]:
            cur["grade"] = grade
            if grade >= ICAHT_ALERT_GRADE:
                sev = "critical" if grade >= 3 else "warning"
                if cur["alert"] is None:
                    cur["alert"] = Episode(cur["start"], r.t, sev, grade)
                else:
                    cur["alert"].change(r.t, sev, grade)
    if cur is not None:
        if stop is not None and cur["alert"] is not None:
            cur["alert"].end = stop
        eps.append(cur)
    return eps


def rule_prolonged_neutropenia(p, stop):
    return [e["alert"] for e in icaht_scan(p, stop) if e["alert"] is not None]


def rule_iec_hs(p, stop):
    crs = p.event_times("crs_resolved")
    crs_t = crs[0] if crs else None

    def counts(r):
        return p.day(r.t) >= IEC_HS_EARLIEST_DAY or (crs_t is not None and r.t >= crs_t)

    base = [r for r in p.effective("ferritin") if p.day(r.t) <= 0]
    baseline = base[-1].value if base else None
    fer = [r for r in p.effective("ferritin") if counts(r) and before(r.t, stop)]
    sup = [
        r
        for r in p.effective("anc", "platelets", "fibrinogen", "alt", "ast", "triglycerides")
        if counts(r) and before(r.t, stop)
    ]
    clock_times = sorted({r.t for r in fer} | {r.t for r in sup})

    def criterion(f, fers):
        if baseline is not None:
            if f.value > 2 * baseline:
                return True
        elif f.value > 2 * FERRITIN_ULN:
            return True
        return any(
            g.t < f.t and f.t - g.t <= timedelta(hours=72) and f.value >= 2 * g.value for g in fers
        )

    def categories(f, sups):
        cats = set()
        for x in sups:
            if abs(p.day(x.t) - p.day(f.t)) > 7:
                continue
            if x.analyte in ("anc", "platelets"):
                prev = [
                    y.value
                    for y in sups
                    if y.analyte == x.analyte and y.t < x.t and p.day(x.t) - p.day(y.t) <= 7
                ]
                if prev:
                    peak = max(prev)
                    min_fall = CYTO_MIN_FALL_ANC if x.analyte == "anc" else CYTO_MIN_FALL_PLT
                    if x.value <= 0.5 * peak and peak - x.value >= min_fall:
                        cats.add("cytopenia")
            elif x.analyte == "fibrinogen" and x.value < FIBRINOGEN_LOW:
                cats.add("hypofibrinogenemia")
            elif x.analyte in ("alt", "ast") and x.value > 5 * TRANSAMINASE_ULN:
                cats.add("transaminitis")
            elif x.analyte == "triglycerides" and x.value > TRIGLYCERIDES_HIGH:
                cats.add("hypertriglyceridemia")
        return cats

    episodes, cur = [], None
    low_from = None  # time of the ferritin in effect at the last resolution [C21]
    for t in clock_times:
        fers = [f for f in fer if f.t <= t]
        sups = [x for x in sup if x.t <= t]
        opened = False
        if cur is None:
            for f in fers:
                if low_from is not None:
                    if f.t <= low_from:
                        continue
                    lows = [g.value for g in fers if low_from <= g.t < f.t]
                    if not lows or f.value < 2 * min(lows):
                        continue
                if criterion(f, fers) and categories(f, sups):
                    cur, opened = Episode(f.t, t, "critical"), True
                    break
        if cur is None:
            continue
        crit = [f for f in fers if f.t >= cur.start and criterion(f, fers)]
        cats = set()
        for f in crit:
            cats |= categories(f, sups)
        sig = tuple(sorted(cats))  # evidence: categories [C19]
        if opened:
            cur.trans = [(t, "critical", sig)]
        else:
            cur.change(t, "critical", sig)
        peak = max(f.value for f in fers if f.t >= cur.start)
        latest = fers[-1]
        if latest.value < 0.5 * peak:  # [C20]
            cur.end = t
            episodes.append(cur)
            cur = None
            low_from = latest.t
    return close_at_stop(episodes, cur, stop)


def rule_mrd_positive(p, stop):
    def sens(r):
        return r.sensitivity if r.sensitivity is not None else MRD_DEFAULT_SENS[r.method]

    def level(r):
        return r.value if r.value is not None else 0.0  # BLQ below any quantity [C23]

    items = [(r.t, 1, r) for r in p.effective("mrd") if p.day(r.t) >= 1 and before(r.t, stop)]
    items += [(t, 0, None) for t in p.event_times("hct_performed") if before(t, stop)]
    items.sort(key=lambda x: (x[0], x[1], x[2].seq if x[2] else 0))
    episodes, cur = [], None
    positives, rises, weak_negs, last_level = [], (), (), None
    for t, _, r in items:
        if r is None:  # hct_performed resolves
            if cur is not None:
                cur.end = t
                episodes.append(cur)
                cur = None
            continue
        if r.detected:
            if cur is None:
                positives, rises, weak_negs = [r], (), ()
                last_level = level(r)
                cur = Episode(t, t, "critical", (rises, weak_negs))
            else:
                if level(r) > last_level:
                    rises = rises + (t,)
                last_level = level(r)
                positives.append(r)
                cur.change(t, "critical", (rises, weak_negs))
        elif cur is not None:
            if sens(r) <= min(sens(x) for x in positives):  # [C22]
                cur.end = t
                episodes.append(cur)
                cur = None
            else:
                weak_negs = weak_negs + (t,)
                cur.change(t, "critical", (rises, weak_negs))
    return close_at_stop(episodes, cur, stop)


def rule_hct_consolidation(p, stop, bca_eps, mrd_eps):
    inf = p.infusion
    if not inf["hct_eligible"]:
        return []
    bases = []  # (time, severity)
    if not inf["prior_hct"]:
        if set(inf["risk_factors"]) & HCT_INFO_FACTORS:
            bases.append((inf["infused_at"], "info"))
        if inf["cd28"]:
            bases.append((inf["infused_at"], "warning"))
        for e in bca_eps:
            if p.day(e.start) <= SIX_MONTHS_DAY:
                bases.append((e.trans[0][0], "warning"))
        for e in mrd_eps:
            bases.append((e.trans[0][0], "warning"))
    else:
        for e in bca_eps:
            if p.day(e.start) <= SIX_MONTHS_DAY:
                bases.append((e.trans[0][0], "info"))  # "requires special consideration"
    bases = sorted(b for b in bases if before(b[0], stop))
    if not bases:
        return []
    ep = None
    for t, sev in bases:
        if ep is None:
            ep = Episode(HCT_ALERT_KEY, t, sev)  # one alert per patient [C24]
        elif sev == "warning":
            ep.change(t, "warning")
    return close_at_stop([], ep, stop)


HCT_ALERT_KEY = datetime(1, 1, 1, tzinfo=UTC)  # fixed identity: one alert per patient


def compute_all(p):
    """Every rule's episodes from the entire stored history (monitoring gaps excluded).
    Course events act at their clinical time `at` [C13]."""
    eof = p.event_times("end_of_follow_up")
    hct = p.event_times("hct_performed")
    rel = p.event_times("relapse")
    stop_bca = stop_time(hct, rel, eof)  # bca_loss, bca_not_established, hct
    stop_mrd = stop_time(rel, eof)
    stop_all = stop_time(eof)
    out = {}
    out["bca_loss"] = rule_bca_loss(p, stop_bca)
    out["bca_not_established"] = rule_bca_not_established(p, stop_bca)
    out["hypogammaglobulinemia"] = rule_hypogammaglobulinemia(p, stop_all)
    out["prolonged_neutropenia"] = rule_prolonged_neutropenia(p, stop_all)
    out["iec_hs"] = rule_iec_hs(p, stop_all)
    out["mrd_positive"] = rule_mrd_positive(p, stop_mrd)
    out["hct_consolidation"] = rule_hct_consolidation(
        p, stop_bca, out["bca_loss"], out["mrd_positive"]
    )
    return out


# --------------------------------------------------------------------------
# Diff: computed episodes vs announced alerts -> events (section 0 life cycle)
# --------------------------------------------------------------------------
def diff_patient(p, computed, trigger):
    # event times [C26]; matching [C27]; already-resolved alerts [C28]; order [C30]
    retractions = []  # (rule order, start, event)
    groups = []  # (first event time, rule order, start, [events])

    def ev(rule, action, sev, t):
        return {
            "patient_id": p.pid,
            "rule": rule,
            "action": action,
            "severity": sev,
            "event_time": fmt_time(t),
        }

    for rule in RULES:
        if rule not in computed:
            continue
        episodes = sorted(computed[rule], key=lambda e: e.start)
        live = [a for a in p.alerts[rule] if a.status != "retracted"]
        used, match = set(), {}
        for i, e in enumerate(episodes):  # [C27]
            cands = [
                a
                for a in live
                if id(a) not in used and e.start <= a.start and (e.end is None or a.start <= e.end)
            ]
            if cands:
                a = min(cands, key=lambda a: a.start)
                used.add(id(a))
                match[i] = a
        for a in live:
            if id(a) not in used:
                a.status = "retracted"
                retractions.append(
                    (RULE_ORDER[rule], a.start, ev(rule, "retracted", a.sev, trigger))
                )
        for i, e in enumerate(episodes):
            sev, sig = e.final
            evs = []  # (time, event)
            a = match.get(i)
            if a is None:
                t0, sev0, sig0 = e.trans[0]
                a = Alert(rule, e.start, sev0, sig0)
                p.alerts[rule].append(a)
                evs.append((t0, ev(rule, "raised", sev0, t0)))
                if (sev, sig) != (sev0, sig0):  # [C29]
                    evs.append((e.trans[-1][0], ev(rule, "updated", sev, e.trans[-1][0])))
                if e.end is not None:
                    evs.append((e.end, ev(rule, "resolved", sev, e.end)))
                    a.status = "resolved"
            elif a.status == "open":
                if (sev, sig) != (a.sev, a.sig) or e.start < a.start:
                    evs.append((trigger, ev(rule, "updated", sev, trigger)))
                if e.end is not None:
                    evs.append((e.end, ev(rule, "resolved", sev, e.end)))
                    a.status = "resolved"
            else:  # resolved before
                if e.end is None:  # re-opened
                    evs.append((trigger, ev(rule, "updated", sev, trigger)))
                    a.status = "open"
            if evs:
                a.start = min(a.start, e.start)
                a.sev, a.sig = sev, sig
                groups.append((evs[0][0], RULE_ORDER[rule], e.start, [x[1] for x in evs]))
    out = [r[2] for r in sorted(retractions, key=lambda r: (r[0], r[1]))]
    for g in sorted(groups, key=lambda g: (g[0], g[1], g[2])):
        out.extend(g[3])
    return out


# --------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------
class Engine:
    def __init__(self):
        self.patients = {}
        self.seq = 0
        self.out = []
        self.rejected = 0

    def patient(self, pid):
        if pid not in self.patients:
            self.patients[pid] = Patient(pid, len(self.patients))
        return self.patients[pid]

    def evaluate(self, p, trigger):
        self.out.extend(diff_patient(p, compute_all(p), trigger))

    def lab_group(self, recs):
        p, trigger = None, None
        for rec in recs:
            try:
                r = validate_lab(rec)
            except Reject:
                self.rejected += 1
                continue
            if r is None:
                continue  # unmapped
            q = self.patients.get(rec["patient_id"])
            if q is None or q.infusion is None or q.eof:
                continue  # not_enrolled / not_monitored
            self.seq += 1
            apply_result(q, r, self.seq)
            p, trigger = q, r.t
        if p is not None:
            self.evaluate(p, trigger)

    def infusion(self, rec):
        try:
            inf = validate_infusion(rec)
        except Reject:
            self.rejected += 1
            return
        p = self.patient(rec["patient_id"])
        if p.eof:
            return  # [C8]
        p.infusion = inf
        self.evaluate(p, inf["infused_at"])

    def clinical_event(self, rec):
        try:
            e = validate_event(rec)
        except Reject:
            self.rejected += 1
            return
        p = self.patients.get(rec["patient_id"])
        if p is None or p.infusion is None or p.eof:
            return  # [C8]
        p.events.append(e)
        self.evaluate(p, e["at"])
        if e["kind"] == "end_of_follow_up":
            p.eof = True

    def tick(self, now):
        for p in sorted(self.patients.values(), key=lambda p: p.order):
            if p.infusion is None or p.eof:
                continue
            dnow = p.day(now)
            first_year = dnow <= FIRST_YEAR_LAST_DAY  # [C31]
            for analytes, limits in (
                (("cd19_pct", "cd19_abs"), GAP_CD19_DAYS),
                (("igg",), GAP_IGG_DAYS),
            ):
                rs = p.effective(*analytes)
                since = max(0, p.day(rs[-1].t)) if rs else 0
                if dnow - since > (limits[0] if first_year else limits[1]):
                    self.out.append(gap_event(p))
            eps = icaht_scan(p, None)
            if eps and eps[-1]["end"] is None:
                last_anc = [r for r in p.effective("anc") if p.day(r.t) >= 0][-1]
                if dnow - p.day(last_anc.t) > GAP_ANC_DAYS:
                    self.out.append(gap_event(p))

    def run(self, lines, now=None):
        recs = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            recs.append(rec if isinstance(rec, dict) else None)
        i = 0
        while i < len(recs):
            rec = recs[i]
            gk = group_key(rec)
            if gk is not None:  # [C2]
                j = i + 1
                while j < len(recs) and group_key(recs[j]) == gk:
                    j += 1
                self.lab_group(recs[i:j])
                i = j
                continue
            kind = rec.get("type") if rec else None
            if kind == "infusion":
                self.infusion(rec)
            elif kind == "clinical_event":
                self.clinical_event(rec)
            elif kind == "lab_result":
                self.lab_group([rec])  # unparseable time: rejected
            i += 1
        if now is not None:
            self.tick(now)
        return self.out


def gap_event(p):
    return {
        "patient_id": p.pid,
        "rule": "monitoring_gap",
        "action": "raised",
        "severity": "info",
        "event_time": None,
    }


def group_key(rec):
    if not rec or rec.get("type") != "lab_result" or not isinstance(rec.get("patient_id"), str):
        return None
    try:
        return (rec["patient_id"], parse_time(rec.get("collected_at")))
    except Reject:
        return None


# --------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------
def _selftest():
    D0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)

    def at(day, hour=8):
        return fmt_time(datetime(2026, 1, 1, hour, 0, tzinfo=UTC) + timedelta(days=day))

    def inf(pid="P", **kw):
        r = {"type": "infusion", "patient_id": pid, "infused_at": fmt_time(D0)}
        r.update(kw)
        return r

    def lab(analyte, value, unit, day, pid="P", status="final", hour=8, **kw):
        r = {
            "type": "lab_result",
            "patient_id": pid,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "collected_at": at(day, hour),
            "status": status,
        }
        r.update(kw)
        return r

    def mrd(day, detected, method, sens=None, value=None, unit="1"):
        r = {
            "type": "lab_result",
            "patient_id": "P",
            "analyte": "mrd",
            "method": method,
            "detected": detected,
            "collected_at": at(day),
            "status": "final",
        }
        if sens is not None:
            r["sensitivity"] = sens
        if value is not None:
            r["value"], r["unit"] = value, unit
        return r

    def run(recs, now=None):
        e = Engine()
        out = e.run([json.dumps(r) for r in recs], now)
        return [(o["rule"], o["action"], o["severity"], o["event_time"]) for o in out]

    cases = []
    # 1 hypogammaglobulinemia: below 400 raises, 4.5 g/L (=450 mg/dL) resolves; 400 exactly does not alert
    cases.append(
        (
            "igg raise/resolve",
            run(
                [
                    inf(),
                    lab("igg", 350, "mg/dL", 10),
                    lab("igg", 4.5, "g/L", 40),
                    lab("igg", 400, "mg/dL", 70),
                ]
            ),
            [
                ("hypogammaglobulinemia", "raised", "warning", at(10)),
                ("hypogammaglobulinemia", "resolved", "warning", at(40)),
            ],
        )
    )
    # 2 rejected records: string value, unknown unit, naive timestamp, before enrollment
    cases.append(
        (
            "rejections",
            run(
                [
                    lab("igg", 300, "mg/dL", 1),
                    inf(),
                    lab("igg", "250", "mg/dL", 5),
                    lab("igg", 250, "mmol/L", 6),
                    lab("igg", -5, "mg/dL", 7),
                    dict(lab("igg", 250, "mg/dL", 8), collected_at="2026-01-09T08:00:00"),
                ]
            ),
            [],
        )
    )
    # 3 bca_loss confirmed by a second qualifying specimen 7 day numbers later, onset day 60 -> critical
    cases.append(
        (
            "bca_loss confirmed",
            run(
                [
                    inf(),
                    lab("cd19_pct", 0.2, "%", 14),
                    lab("cd19_pct", 1.5, "%", 60, hour=20),
                    lab("cd19_pct", 1.2, "%", 67, hour=6),
                    lab("cd19_pct", 0.1, "%", 90),
                ]
            ),
            [
                ("bca_loss", "raised", "critical", at(67, 6)),
                ("hct_consolidation", "raised", "warning", at(67, 6)),
                ("bca_loss", "resolved", "critical", at(90)),
            ],
        )
    )
    # 4 bca_loss at once by >= 2x threshold, onset after day 183 -> warning (no hct advice)
    cases.append(
        (
            "bca_loss 2x late",
            run([inf(), lab("cd19_abs", 2, "/uL", 30), lab("cd19_abs", 25, "cells/µL", 200)]),
            [("bca_loss", "raised", "warning", at(200))],
        )
    )
    # 5 same specimen applied together: CD19 abs 25 (2x) with CD19 % 0.5 is aplastic -> no alert
    cases.append(
        (
            "same specimen group",
            run(
                [
                    inf(),
                    lab("cd19_pct", 0.3, "%", 14),
                    lab("cd19_abs", 25, "/uL", 40),
                    lab("cd19_pct", 0.5, "%", 40),
                ]
            ),
            [],
        )
    )
    # 6 bca_not_established: first specimen on/after day 21 qualifying; late aplastic resolves
    cases.append(
        (
            "bca_not_established",
            run(
                [
                    inf(hct_eligible=False),
                    lab("cd19_pct", 5, "%", 10),
                    lab("cd19_pct", 4, "%", 28),
                    lab("cd19_pct", 0.5, "%", 45),
                ]
            ),
            [
                ("bca_not_established", "raised", "critical", at(28)),
                ("bca_not_established", "resolved", "critical", at(45)),
            ],
        )
    )
    # 7 MRD: NGS positive; less sensitive flow negative = updated; NGS negative resolves
    cases.append(
        (
            "mrd sensitivity",
            run(
                [
                    inf(prior_hct=True),
                    mrd(28, True, "ngs", value=5, unit="/10*6"),
                    mrd(35, False, "flow"),
                    mrd(60, False, "ngs", sens=1e-6),
                ]
            ),
            [
                ("mrd_positive", "raised", "critical", at(28)),
                ("mrd_positive", "updated", "critical", at(35)),
                ("mrd_positive", "resolved", "critical", at(60)),
            ],
        )
    )
    # 8 cancellation of an already-resolved alert's only low IgG retracts it; a correction
    #   for the (now unknown) accession is a late result: raised then resolved
    cases.append(
        (
            "cancel/correct",
            run(
                [
                    inf(),
                    lab("igg", 300, "mg/dL", 10, accession="A1"),
                    lab("igg", 4.8, "g/L", 20),
                    lab("igg", 300, "mg/dL", 10, accession="A1", status="cancelled"),
                    lab(
                        "alt", 30, "U/L", 21
                    ),  # separates the two records of collection time day 10
                    lab("igg", 350, "mg/dL", 10, accession="A1", status="corrected"),
                ]
            ),
            [
                ("hypogammaglobulinemia", "raised", "warning", at(10)),
                ("hypogammaglobulinemia", "resolved", "warning", at(20)),
                ("hypogammaglobulinemia", "retracted", "warning", at(10)),
                ("hypogammaglobulinemia", "raised", "warning", at(10)),
                ("hypogammaglobulinemia", "resolved", "warning", at(20)),
            ],
        )
    )
    # 9 ICAHT: censored ANC < 100 counts <= 100; 7 days <= 100 (days 0-6) -> grade 3; stable
    #   recovery needs results > 500 spanning >= 3 day numbers (day 8 -> day 11)
    cases.append(
        (
            "icaht",
            run(
                [
                    inf(),
                    lab("anc", 100, "/uL", 0, comparator="<"),
                    lab("anc", 80, "/uL", 6),
                    lab("anc", 0.8, "10^9/L", 8),
                    lab("anc", 900, "/uL", 10),
                    lab("anc", 950, "/uL", 11),
                ]
            ),
            [
                ("prolonged_neutropenia", "raised", "critical", at(6)),
                ("prolonged_neutropenia", "resolved", "critical", at(11)),
            ],
        )
    )
    # 10 monitoring gaps from --now: CD19 silent > 35 days, IgG not (39 <= 60); event_time null
    cases.append(
        (
            "monitoring gap",
            run([inf(), lab("igg", 800, "mg/dL", 1)], now=datetime(2026, 2, 10, tzinfo=UTC)),
            [("monitoring_gap", "raised", "info", None)],
        )
    )

    ok = True
    for name, got, want in cases:
        good = got == want
        ok = ok and good
        print("%s %s" % ("ok  " if good else "FAIL", name))
        if not good:
            print("   want:", want)
            print("   got: ", got)
    print("selftest:", "passed" if ok else "FAILED")
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", nargs="?")
    ap.add_argument("--now")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args(argv)
    if a.selftest:
        return _selftest()
    if not a.input:
        ap.error("INPUT.ndjson required")
    now = None
    if a.now:
        try:
            now = parse_time(a.now)
        except Reject as e:
            ap.error("--now: %s" % e)
    with open(a.input, encoding="utf-8") as f:
        out = Engine().run(f, now)
    for o in out:
        sys.stdout.write(json.dumps(o) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
