"""B-cell specimens, shared by ``bca_loss`` and ``bca_not_established`` (docs/clinical-spec.md 1).

A specimen (the CD19 results collected at one instant) is *aplastic* when any CD19 result of it
is below its threshold, and *qualifying* (B cells back) when every CD19 result of it is at or
above its threshold. Censored results count with their limit (``< 1 %`` is below 1 %). Only
specimens after day 0 (day ≥ 1) take part.
"""

from dataclasses import dataclass
from datetime import datetime

from schemas.vocab import Analyte
from streams.core.policy import Policy
from streams.core.rules.base import Cite, RuleInput, Specimen
from streams.core.state import StoredResult
from streams.core.text import labelled

CD19 = frozenset({Analyte.CD19_PCT, Analyte.CD19_ABS})
#: Settings every B-cell rule reads (its alert ids fingerprint them).
THRESHOLD_SETTINGS = ("bca_cd19_pct_threshold", "bca_cd19_abs_threshold_per_ul")


@dataclass
class Cd19Specimen:
    """A CD19 specimen kept in a rule's accumulator."""

    at: datetime
    results: list[tuple[Analyte, StoredResult]]


def cd19_specimen(item: Specimen) -> Cd19Specimen | None:
    """The specimen's CD19 results with a value, after day 0; None if there are none."""
    if item.day < 1:
        return None
    results = [(a, r) for a, r in item.results if a in CD19 and r.value is not None]
    return Cd19Specimen(item.at, results) if results else None


_CD19_PCT = Analyte.CD19_PCT


def threshold(policy: Policy, analyte: Analyte) -> float:
    if analyte is _CD19_PCT:
        return policy.bca_cd19_pct_threshold
    return policy.bca_cd19_abs_threshold_per_ul


def aplastic(policy: Policy, specimen: Cd19Specimen) -> bool:
    return any((r.value or 0.0) < threshold(policy, a) for a, r in specimen.results)


def cites(specimen: Cd19Specimen, note: str) -> list[Cite]:
    return [Cite(a, r, note) for a, r in specimen.results]


def describe(ctx: RuleInput, specimen: Cd19Specimen) -> str:
    """``"CD19+ 4.2 % of lymphocytes, CD19+ 35 /µL on day 84"``."""
    values = ", ".join(labelled(a, r) for a, r in specimen.results)
    return f"{values} on day {ctx.day(specimen.at)}"


def threshold_text(policy: Policy) -> str:
    return (
        f"Aplasia: CD19+ < {policy.bca_cd19_pct_threshold:g} % of lymphocytes or "
        f"< {policy.bca_cd19_abs_threshold_per_ul:g} cells/µL (policy "
        "bca_cd19_pct_threshold, bca_cd19_abs_threshold_per_ul)"
    )
