"""The differential's verdict when a neutropenia recovery and an IEC-HS difference meet in one patient.

Timelines from seed 7 (days after infusion on 2026-01-01). R7-58: IEC-HS revealed late by a
corrected ferritin (start day 52); ANC 1200 on day 58 and 501 on day 60 both recover the
neutropenia for the product (days 58-60) and add a cytopenia (1200 -> 501) to the IEC-HS episode.
R7-1: ferritin 700 on day 30 resolves IEC-HS after ALT 600 on day 29; ANC 501 on day 33 and 1600
on day 35 recover the neutropenia for the product.
"""

from bench.differential.__main__ import Event, classify

D52, D60, D83 = "2026-02-22T08:00:00Z", "2026-03-02T12:00:00Z", "2026-03-25T08:00:00Z"
NEUTROPENIA: list[Event] = [("prolonged_neutropenia", "raised", "critical", "2026-02-01T06:00:00Z")]
# the product's recovery on day 60 and the new episode (ANC 101 on day 65, 100 on day 83)
RECOVERED = [("prolonged_neutropenia", "resolved", "critical", D60)]
REOPENED = [("prolonged_neutropenia", "raised", "critical", D83)]
LATE_IEC_HS: list[Event] = [("iec_hs", "raised", "critical", D52)]
CYTOPENIA_JOINS: list[Event] = [("iec_hs", "updated", "critical", D60)]
BCA: list[Event] = [("bca_loss", "resolved", "critical", "2026-03-17T12:00:00Z")]


def test_late_iec_hs_replayed_in_a_patient_whose_neutropenia_recovered_for_the_product() -> None:
    ours = [*NEUTROPENIA, *RECOVERED, *LATE_IEC_HS, *BCA, *REOPENED]
    ref = [*NEUTROPENIA, *LATE_IEC_HS, *CYTOPENIA_JOINS, *BCA]
    assert classify(ours, ref) == "recovery span + late episode replayed"


def test_iec_hs_category_joining_at_resolution_in_a_patient_whose_neutropenia_recovered() -> None:
    day30 = "2026-01-31T08:00:00Z"
    resolved: list[Event] = [("iec_hs", "resolved", "critical", day30)]
    recovered = [("prolonged_neutropenia", "resolved", "critical", "2026-02-05T00:00:00Z")]
    anc_gap: list[Event] = [("monitoring_gap", "raised", "info", None)]
    ours = [*LATE_IEC_HS, *resolved, *NEUTROPENIA, *recovered]
    ref = [
        *LATE_IEC_HS,
        ("iec_hs", "updated", "critical", day30),
        *resolved,
        *NEUTROPENIA,
        *anc_gap,
    ]
    assert classify(ours, ref) == "recovery span + iec-hs join at resolution"


def test_a_missing_iec_hs_update_not_next_to_its_raise_or_resolution_stays_unexplained() -> None:
    ours = [*NEUTROPENIA, *RECOVERED, *LATE_IEC_HS, *BCA, *REOPENED]
    ref = [*NEUTROPENIA, *LATE_IEC_HS, *BCA, *CYTOPENIA_JOINS]  # a live join the product missed
    assert classify(ours, ref) == "unexplained"


def test_an_iec_hs_update_back_in_time_or_of_another_rule_stays_unexplained() -> None:
    ours = [*NEUTROPENIA, *RECOVERED, *LATE_IEC_HS, *REOPENED]
    earlier = [("iec_hs", "updated", "critical", "2026-02-20T00:00:00Z")]
    assert classify(ours, [*NEUTROPENIA, *LATE_IEC_HS, *earlier]) == "unexplained"
    mrd = [
        ("mrd_positive", "raised", "critical", D52),
        ("mrd_positive", "updated", "critical", D83),
    ]
    ours_mrd = [*NEUTROPENIA, *RECOVERED, mrd[0], *REOPENED]
    assert classify(ours_mrd, [*NEUTROPENIA, *mrd]) == "unexplained"


def test_a_second_difference_beside_the_recovery_stays_unexplained() -> None:
    ours = [*NEUTROPENIA, *RECOVERED, *LATE_IEC_HS, *BCA, *REOPENED]
    ref = [*NEUTROPENIA, *LATE_IEC_HS, *CYTOPENIA_JOINS, *CYTOPENIA_JOINS, *BCA]
    assert classify(ours, ref) == "unexplained"
