"""The differential's verdict: documented differences are named, alone or together, and only
the events they are about are left out; anything else stays "unexplained"."""

from bench.differential.__main__ import classify

T1, T2, T3 = "2026-01-10T08:00:00Z", "2026-01-20T08:00:00Z", "2026-02-01T08:00:00Z"
IEC_RAISED = ("iec_hs", "raised", "critical", T1)
IEC_RESOLVED = ("iec_hs", "resolved", "critical", T3)
JOIN = ("iec_hs", "updated", "critical", T3)
PN_RESOLVED = ("prolonged_neutropenia", "resolved", "critical", T2)
MRD = [("mrd_positive", "raised", "critical", T1), ("mrd_positive", "updated", "critical", T3)]
LATE_NEGATIVE = ("mrd_positive", "updated", "critical", T2)


def test_equal_streams_agree() -> None:
    assert classify([IEC_RAISED, IEC_RESOLVED], [IEC_RAISED, IEC_RESOLVED]) is None


def test_each_documented_difference_is_named() -> None:
    assert classify([IEC_RAISED, IEC_RESOLVED], [IEC_RAISED, JOIN, IEC_RESOLVED]) == (
        "iec-hs join at resolution"
    )
    assert classify([IEC_RAISED, JOIN, IEC_RESOLVED], [IEC_RAISED, IEC_RESOLVED]) == (
        "iec-hs join at resolution"
    )
    assert classify([IEC_RAISED, PN_RESOLVED], [IEC_RAISED]) == "recovery span"
    assert classify(MRD, [*MRD, LATE_NEGATIVE]) == "late less sensitive negative"


def test_two_differences_at_once_are_named_together() -> None:
    ours = [IEC_RAISED, PN_RESOLVED, IEC_RESOLVED]
    ref = [IEC_RAISED, JOIN, IEC_RESOLVED]
    assert classify(ours, ref) == "recovery span + iec-hs join at resolution"


def test_an_update_the_reference_prints_after_a_raise_is_explained_only_there() -> None:
    # both print the raise and its update: an extra update later is no "late episode" replay
    ours = [*MRD, IEC_RAISED]
    ref = [*MRD, IEC_RAISED, ("iec_hs", "updated", "critical", T2)]
    assert classify(ours, ref) == "late episode replayed"
    assert classify(ours, [*MRD, IEC_RAISED, ("bca_loss", "raised", "critical", T2)]) == (
        "unexplained"
    )


def test_a_missing_alert_is_unexplained_whatever_else_differs() -> None:
    ours = [IEC_RAISED, PN_RESOLVED]
    ref = [IEC_RAISED, IEC_RESOLVED]
    assert classify(ours, ref) == "unexplained"
    # a later mrd update is no late negative: it is not earlier than one printed before it
    assert classify(
        MRD, [*MRD, ("mrd_positive", "updated", "critical", "2026-03-01T08:00:00Z")]
    ) == ("unexplained")


def test_r7_58_recovery_and_a_late_iec_hs_replayed_are_named_together() -> None:
    # ANC 1200 on day 58 and 501 on day 60: recovered over days 58-60 for the product, and the
    # cytopenia of an IEC-HS episode (from day 52) that a corrected ferritin revealed later
    pn = ("prolonged_neutropenia", "raised", "critical", "2026-02-01T06:00:00Z")
    pn_resolved = ("prolonged_neutropenia", "resolved", "critical", "2026-03-02T12:00:00Z")
    iec = ("iec_hs", "raised", "critical", "2026-02-22T08:00:00Z")
    cytopenia = ("iec_hs", "updated", "critical", "2026-03-02T12:00:00Z")
    assert classify([pn, pn_resolved, iec], [pn, iec, cytopenia]) == (
        "recovery span + late episode replayed"
    )
    # an update before its raise is no replay of a later change
    earlier = ("iec_hs", "updated", "critical", "2026-02-20T08:00:00Z")
    assert classify([pn, pn_resolved, iec], [pn, iec, earlier]) == "unexplained"


def test_r349_80_a_replayed_update_equal_to_a_later_one_is_still_explained() -> None:
    # a corrected ferritin reveals an IEC-HS episode: the reference raises it as it first stood and
    # updates it at its last change (day 33), the product raises it as it stands; then that
    # change is cancelled and both update at the same instant -- the replayed update and the
    # common one are equal, and matching the common one against the replay must not hide it
    iec = ("iec_hs", "raised", "critical", "2026-01-29T18:00:00Z")
    day_33 = ("iec_hs", "updated", "critical", "2026-02-03T00:00:00Z")
    assert classify([iec, day_33], [iec, day_33, day_33]) == "late episode replayed"
    day_40 = ("iec_hs", "updated", "critical", "2026-02-10T00:00:00Z")
    assert classify([iec, day_33], [iec, day_33, day_40]) == "unexplained"
