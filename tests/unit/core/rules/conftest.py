"""Shared checks for the rule tests (one test file per module under ``streams/rules``).

Every alert is decision support: a clinician must be able to check its basis from the alert alone
(clinical-rules.md, preamble). ``documented`` asserts that an alert carries that basis.
"""

from collections.abc import Callable, Iterable
from datetime import datetime

import pytest

from schemas.alert import AlertEvent, RiskFactorNote
from schemas.vocab import CANONICAL_UNIT, Analyte

Documented = Callable[..., None]


def _check_documented(
    alert: AlertEvent,
    *,
    analytes: Iterable[Analyte] = (),
    reference: str = "Westhafen 2025",
    collected: Iterable[datetime] = (),
) -> None:
    assert alert.summary.strip(), "summary is empty"
    assert alert.recommendation.strip(), "recommendation is empty"
    assert alert.threshold.strip(), "threshold text is empty"
    assert alert.references, "no references"
    assert any(reference in ref for ref in alert.references), alert.references
    for item in (*alert.evidence, *alert.context):
        if isinstance(item, RiskFactorNote):
            assert item.label, item
            continue
        assert item.unit == CANONICAL_UNIT[item.analyte], item
        assert item.collected_at.tzinfo is not None, item
        assert item.accession, item
        assert item.value is not None or item.detected is not None, item
    cited = {e.analyte for e in alert.evidence}
    missing = set(analytes) - cited
    assert not missing, f"evidence lacks {sorted(missing)}: {alert.evidence}"
    times = {e.collected_at for e in alert.evidence}
    for moment in collected:
        assert moment in times, f"no evidence collected at {moment}: {sorted(times)}"


@pytest.fixture
def documented() -> Documented:
    """``documented(alert, analytes=..., reference=..., collected=...)`` asserts the basis."""
    return _check_documented
