"""HL7 v2 ORU^R01 parsing and ACKs (streams/ingest/hl7/oru.py)."""

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, Comparator, MrdMethod, RejectReason, ResultStatus
from streams.core.policy import Policy
from streams.ingest.hl7.oru import (
    PARSER_BUG,
    Hl7Config,
    Hl7Message,
    build_ack,
    dtm_offset,
    error_code_for,
    parse_dtm,
    parse_oru,
)
from streams.ingest.normalise import Unmapped

MSH = "MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260105120000+0100||ORU^R01^ORU_R01|CTRL-1|P|2.5.1"
PID = "PID|1||P001^^^HOSP^MR"
OBR = (
    "OBR|1|PLACER-1|FILLER-1|58410-2^CBC^LN|||20260105080000+0100|||||||||||||||20260105110000+0100"
)
CET = timezone(timedelta(hours=1))

Kinds = Callable[[Iterable[Any]], list[str]]


def message(*obx: str, msh: str = MSH, pid: str = PID, obr: str | None = OBR) -> str:
    segments = [msh, pid, *([obr] if obr else []), *obx]
    return "\r".join(segments) + "\r"


def parse(text: str | bytes, config: Hl7Config | None = None) -> Hl7Message:
    return parse_oru(text, config or Hl7Config())


def only(parsed: Hl7Message) -> Any:
    assert parsed.message_rejection is None, parsed.message_rejection
    assert len(parsed.items) == 1
    return parsed.items[0].outcome


def outcomes(parsed: Hl7Message) -> list[Any]:
    assert parsed.message_rejection is None, parsed.message_rejection
    return [item.outcome for item in parsed.items]


# --- the synthetic fixtures ---------------------------------------------------------------------


def test_full_panel_covers_every_analyte(data_dir: Path, hl7_config: Hl7Config) -> None:
    parsed = parse_oru((data_dir / "hl7/full_panel.hl7").read_bytes(), hl7_config)
    results = outcomes(parsed)
    assert all(isinstance(r, LabResult) for r in results)
    assert parsed.control_id == "MSG-FULL-0001"
    by_analyte = {(r.analyte, r.method): r for r in results}
    expected = {
        Analyte.ANC: (420, "/uL"),
        Analyte.ALC: (300, "/uL"),
        Analyte.WBC: (1200, "/uL"),
        Analyte.PLATELETS: (45, "10*3/uL"),
        Analyte.HEMOGLOBIN: (8.9, "g/dL"),
        Analyte.IGG: (320, "mg/dL"),
        Analyte.FERRITIN: (1850, "ng/mL"),
        Analyte.FIBRINOGEN: (120, "mg/dL"),
        Analyte.ALT: (210, "U/L"),
        Analyte.AST: (180, "U/L"),
        Analyte.LDH: (650, "U/L"),
        Analyte.BILIRUBIN: (1.4, "mg/dL"),
        Analyte.TRIGLYCERIDES: (274.567, "mg/dL"),
        Analyte.CRP: (45, "mg/L"),
        Analyte.CD19_PCT: (0.5, "%"),
        Analyte.CD19_ABS: (3, "/uL"),
    }
    for analyte, (value, unit) in expected.items():
        result = by_analyte[(analyte, None)]
        assert (result.value, result.unit) == (pytest.approx(value), unit), analyte
    assert {r.analyte for r in results} == set(Analyte)
    flow = by_analyte[(Analyte.MRD, MrdMethod.FLOW)]
    assert (flow.value, flow.detected, flow.sensitivity) == (None, False, 1e-4)
    ngs = by_analyte[(Analyte.MRD, MrdMethod.NGS)]
    assert (ngs.value, ngs.detected) == (pytest.approx(1.5e-4), True)
    anc = by_analyte[(Analyte.ANC, None)]
    assert anc.patient_id == "CART-0001"
    assert anc.accession == "LAB-0001"
    assert anc.source == "KIDS-LAB"
    assert anc.loinc == "751-8"
    assert anc.status is ResultStatus.FINAL
    assert anc.collected_at == datetime(2026, 1, 5, 8, tzinfo=CET)
    assert anc.resulted_at == datetime(2026, 1, 5, 10, tzinfo=CET)  # OBX-19 wins over OBR-22
    assert [item.location for item in parsed.items][:3] == ["OBX 1", "OBX 2", "OBX 3"]
    assert parsed.items[0].raw.startswith("OBX|1|NM|751-8^")


def test_every_status(data_dir: Path, hl7_config: Hl7Config, kinds: Kinds) -> None:
    results = outcomes(parse_oru((data_dir / "hl7/statuses.hl7").read_bytes(), hl7_config))
    assert kinds(results) == [
        *["accepted"] * 10,  # P F C X D W A B S U
        "rejected:missing_value",  # U without a value
        *["unmapped"] * 4,  # I O N R
        "rejected:unknown_vocabulary",  # Z
        "accepted",  # empty OBX-11 → OBR-25 F
    ]
    statuses = [r.status for r in results if isinstance(r, LabResult)]
    S = ResultStatus
    assert statuses == [
        S.PRELIMINARY,
        S.FINAL,
        S.CORRECTED,
        S.CANCELLED,
        S.CANCELLED,
        S.CANCELLED,
        S.CORRECTED,
        S.FINAL,
        S.PRELIMINARY,
        S.FINAL,
        S.FINAL,
    ]
    cancelled = [r for r in results if isinstance(r, LabResult) and r.status is S.CANCELLED]
    assert [r.value for r in cancelled] == [None, None, 450]
    pending = results[11]
    assert isinstance(pending, Unmapped)
    assert "OBX-11 I" in pending.reason


def test_mrd_forms(data_dir: Path, hl7_config: Hl7Config, kinds: Kinds) -> None:
    results = outcomes(parse_oru((data_dir / "hl7/mrd_forms.hl7").read_bytes(), hl7_config))
    assert kinds(results) == [
        *["accepted"] * 8,
        "accepted",  # SN <^0.01 %: censored, the limit kept with its comparator
        "rejected:invalid_field",  # "see comment"
        "rejected:implausible_value",  # 150 %
    ]
    found = [(r.value, r.detected, r.sensitivity, r.method) for r in results[:8]]
    F, N, P = MrdMethod.FLOW, MrdMethod.NGS, None
    assert found == [
        (pytest.approx(2e-4), True, None, F),  # NM 0.02 %
        (pytest.approx(1.5e-4), True, None, N),  # SN =^150 /10*6
        (None, True, None, F),  # ST detected, not quantifiable
        (None, False, None, MrdMethod.PCR),  # CWE SNOMED not detected
        (None, True, None, P),  # TX detected below LOQ
        (None, True, None, P),  # CWE local "Positive"
        (None, False, 1e-6, N),  # ST undetectable at 1E-06
        (0.0, False, None, P),  # NM 0 %
    ]
    assert all(r.unit == "1" for r in results[:8])
    censored = results[8]
    assert isinstance(censored, LabResult)
    assert (censored.comparator, censored.value) == (Comparator.LT, pytest.approx(1e-4))
    assert censored.detected is None  # below the limit: detected or not, never guessed


def test_rejections_fixture(data_dir: Path, hl7_config: Hl7Config, kinds: Kinds) -> None:
    parsed = parse_oru((data_dir / "hl7/rejections.hl7").read_bytes(), hl7_config)
    results = outcomes(parsed)
    assert kinds(results) == [
        "rejected:unknown_unit",  # g/L for ANC
        "rejected:unknown_unit",  # no unit
        "rejected:implausible_value",  # hemoglobin g/mL
        "accepted",  # NM <0.1: censored
        "accepted",  # SN >^100: censored
        "rejected:invalid_field",  # SN range
        "rejected:invalid_field",  # text for a number
        "rejected:negative_value",
        "rejected:invalid_timestamp",  # hour 26
        "accepted",  # no offset: MSH-7's +0100
        "accepted",  # LN + an unconfigured local code
        "accepted",  # LN + a local code not in local_codes
        "rejected:invalid_value",  # "1,2"
        "rejected:invalid_field",  # DT
        "rejected:invalid_field",  # repeated value
        "rejected:missing_field",  # no code
        "rejected:invalid_timestamp",  # year only
        "rejected:missing_field",  # no collection time at all
    ]
    fields = [r.details[0].field for r in results if isinstance(r, Rejection)]
    assert fields[:4] == ["OBX-6", "OBX-6", "OBX-5", "OBX-5"]
    assert all(r.patient_id == "CART-0001" for r in results if isinstance(r, Rejection))
    below, above, local = results[3], results[4], results[9]
    assert isinstance(below, LabResult) and isinstance(above, LabResult)
    assert (below.comparator, below.value) == (Comparator.LT, 100)  # < 0.1 × 10⁹/L
    assert (above.comparator, above.value) == (Comparator.GT, 100000)
    assert isinstance(local, LabResult)
    assert local.collected_at.isoformat() == "2026-01-07T08:00:00+01:00"


def test_options_fixture_times_are_local(data_dir: Path, kinds: Kinds) -> None:
    raw = (data_dir / "hl7/options.hl7").read_bytes()
    default = outcomes(parse(raw, Hl7Config(assigning_authority="KIDS")))
    assert kinds(default) == ["accepted"] * 3  # the policy's zone (UTC)
    assert {r.collected_at.utcoffset() for r in default} == {timedelta(0)}
    zurich = Hl7Config(assigning_authority="KIDS", default_timezone="Europe/Zurich")
    results = outcomes(parse(raw, zurich))
    assert kinds(results) == ["accepted"] * 3
    anc, hemoglobin, platelets = results
    assert anc.patient_id == "CART|0003"  # \F\ in PID-3
    assert anc.accession == "LAB^0050"  # \S\ in OBR-3
    assert anc.source == "KIDS&LAB"  # \T\ in MSH-4
    assert anc.value == 900  # "0000.90" 10\S\9/L
    assert anc.resulted_at == datetime(2026, 1, 9, 10, tzinfo=ZoneInfo("Europe/Zurich"))
    assert hemoglobin.value == 9.5  # "+9.5"
    assert hemoglobin.collected_at == datetime(2026, 1, 9, 8, 15, 0, 123400, tzinfo=CET)
    assert platelets.value == 120  # unit 10\X5E\3/uL = 10^3/uL
    assert platelets.collected_at == datetime(2026, 1, 9, tzinfo=ZoneInfo("Europe/Zurich"))


# --- framing and the whole message --------------------------------------------------------------

NM_ANC = "OBX|1|NM|751-8^ANC^LN||0.42|10*9/L|||||F"


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_segment_separators(separator: str) -> None:
    text = message(NM_ANC).replace("\r", separator)
    result = only(parse(text))
    assert isinstance(result, LabResult)
    assert result.value == 420


def test_bom_mllp_framing_and_trailing_bytes() -> None:
    raw = b"\x0b\xef\xbb\xbf" + message(NM_ANC).encode() + b"\x1c\r\n"
    assert isinstance(only(parse(raw)), LabResult)


def test_latin1_declared_or_undeclared() -> None:
    pid = "PID|1||P\xe9001^^^HOSP^MR"
    declared = message(NM_ANC, msh=MSH + "||||||8859/1", pid=pid).encode("latin-1")
    assert only(parse(declared)).patient_id == "P\xe9001"
    # no MSH-18 and not UTF-8: a Latin-1 system that does not say so (docs/feeds.md section 1)
    undeclared = message(NM_ANC, pid=pid).encode("latin-1")
    assert only(parse(undeclared)).patient_id == "P\xe9001"


def test_bytes_that_contradict_a_declared_utf8_reject_the_message() -> None:
    pid = "PID|1||P\xe9001^^^HOSP^MR"
    raw = message(NM_ANC, msh=MSH + "||||||UNICODE UTF-8", pid=pid).encode("latin-1")
    rejection = parse(raw).message_rejection
    assert rejection is not None
    assert rejection.reason is RejectReason.MALFORMED_HL7
    assert "UNICODE UTF-8" in rejection.details[0].message


def test_a_stray_byte_in_a_value_rejects_only_that_value() -> None:
    raw = message(NM_ANC, NM_ANC.replace("|0.42|", "|0.4\xb72|")).encode("latin-1")
    first, second = outcomes(parse(raw))
    assert isinstance(first, LabResult)
    assert isinstance(second, Rejection)
    assert second.reason is RejectReason.INVALID_VALUE


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", RejectReason.MALFORMED_HL7),
        ("hello world", RejectReason.MALFORMED_HL7),
        ("MSH", RejectReason.MALFORMED_HL7),
        ("MSH|^~\\&", RejectReason.MALFORMED_HL7),  # no MSH-9: cut off, or not filled in
        ("MSH|^^\\&|x", RejectReason.MALFORMED_HL7),  # repeated encoding character
        ("MSHA^~\\&|x", RejectReason.MALFORMED_HL7),  # alphanumeric field separator
        (message(NM_ANC) + "this is not a segment\r", RejectReason.MALFORMED_HL7),
        (message(NM_ANC) + message(NM_ANC), RejectReason.MALFORMED_HL7),  # two messages
        (message(msh=MSH.replace("ORU^R01^ORU_R01", "ADT^A01")), RejectReason.UNSUPPORTED_MESSAGE),
        (message(msh=MSH.replace("ORU^R01^ORU_R01", "ORU^R30")), RejectReason.UNSUPPORTED_MESSAGE),
        (message(msh=MSH.replace("ORU^R01^ORU_R01", "")), RejectReason.MALFORMED_HL7),
        ("\r".join([MSH, OBR, NM_ANC]), RejectReason.MISSING_PATIENT_ID),
        (message(NM_ANC, pid="PID|1||"), RejectReason.MISSING_PATIENT_ID),
        (message(NM_ANC, pid='PID|1||""^^^HOSP'), RejectReason.MISSING_PATIENT_ID),
    ],
)
def test_whole_message_rejections(text: str, reason: RejectReason) -> None:
    parsed = parse(text)
    assert parsed.message_rejection is not None
    assert parsed.message_rejection.reason is reason
    assert parsed.items == []


def test_control_id_survives_a_message_rejection() -> None:
    parsed = parse(message(msh=MSH.replace("ORU^R01^ORU_R01", "ADT^A01")))
    assert parsed.control_id == "CTRL-1"
    assert parsed.header is not None
    assert parsed.header.sending_application == ("LIS",)


def test_five_encoding_characters() -> None:
    msh = MSH.replace("^~\\&", "^~\\&#")
    assert isinstance(only(parse(message(NM_ANC, msh=msh))), LabResult)


def test_message_without_obx_has_no_items() -> None:
    parsed = parse(message())
    assert (parsed.message_rejection, parsed.items) == (None, [])


def test_several_patients_in_one_message() -> None:
    text = message(NM_ANC, "PID|2||P002^^^HOSP^MR", OBR, NM_ANC)
    assert [r.patient_id for r in outcomes(parse(text))] == ["P001", "P002"]


# --- PID-3 --------------------------------------------------------------------------------------

PID_TWO = "PID|1||998877^^^NATIONAL^NI~P001^^^HOSP&1.2.3&ISO^MR"


@pytest.mark.parametrize(
    ("authority", "expected"),
    [(None, "998877"), ("HOSP", "P001"), ("1.2.3", "P001"), ("NATIONAL", "998877")],
)
def test_patient_identifier_by_assigning_authority(authority: str | None, expected: str) -> None:
    config = Hl7Config(assigning_authority=authority)
    assert only(parse(message(NM_ANC, pid=PID_TWO), config)).patient_id == expected


def test_no_identifier_from_the_configured_authority() -> None:
    parsed = parse(message(NM_ANC, pid=PID_TWO), Hl7Config(assigning_authority="ELSEWHERE"))
    assert parsed.message_rejection is not None
    assert parsed.message_rejection.reason is RejectReason.MISSING_PATIENT_ID
    assert "ELSEWHERE" in parsed.message_rejection.details[0].message


# --- OBX-3 codes --------------------------------------------------------------------------------


def test_loinc_name_in_the_coding_system_is_not_loinc() -> None:
    # HL7 2.4 chapter-7 example: the coding system component holds the LOINC name.
    obx = "OBX|1|NM|751-8^ANC^NEUTROPHILS#:NCNC:PT:BLD:QN||0.42|10*9/L|||||F"
    result = only(parse(message(obx)))
    assert isinstance(result, Unmapped)
    assert result.code == "751-8"
    assert "not LOINC-coded" in result.reason


def test_alternate_triplet_loinc() -> None:
    result = only(parse(message("OBX|1|NM|NEUT^Neutrophils^99LAB^751-8^ANC^LN||0.42|10*9/L|||||F")))
    assert isinstance(result, LabResult)
    assert (result.analyte, result.loinc) == (Analyte.ANC, "751-8")


def test_local_codes() -> None:
    config = Hl7Config(local_codes={"NEUT": Analyte.ANC})
    result = only(parse(message("OBX|1|NM|NEUT^Neutrophils^99LAB||0.42|10*9/L|||||F"), config))
    assert isinstance(result, LabResult)
    assert (result.analyte, result.loinc) == (Analyte.ANC, None)


def test_local_codes_may_name_a_loinc_code_our_table_lacks() -> None:
    config = Hl7Config(local_codes={"99999-9": Analyte.MRD})
    obx = "OBX|1|ST|99999-9^MRD^LN||not detected||||||F"
    result = only(parse(message(obx), config))
    assert isinstance(result, LabResult)
    assert (result.analyte, result.loinc, result.detected) == (Analyte.MRD, "99999-9", False)


def test_loinc_and_local_code_that_disagree() -> None:
    config = Hl7Config(local_codes={"HB": Analyte.HEMOGLOBIN})
    result = only(parse(message("OBX|1|NM|751-8^ANC^LN^HB^Hb^L||0.42|10*9/L|||||F"), config))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.INVALID_FIELD, "OBX-3")


def test_unmapped_codes_are_not_checked_further() -> None:
    obx = "OBX|1|NM|2345-7^Glucose^LN||lots|furlongs|||||Q|||26261399"
    assert isinstance(only(parse(message(obx))), Unmapped)


# --- times, accession, source -------------------------------------------------------------------


def test_obx14_wins_over_obr7() -> None:
    obx = "OBX|1|NM|751-8^ANC^LN||0.42|10*9/L|||||F|||20260105021500-0500"
    result = only(parse(message(obx)))
    assert result.collected_at == datetime(2026, 1, 5, 7, 15, tzinfo=UTC)
    assert result.resulted_at == datetime(2026, 1, 5, 10, tzinfo=UTC)  # OBR-22


@pytest.mark.parametrize(
    ("obx14", "obx19", "collected"),
    [
        # OBX-14 after the analysis (OBX-19): a verification time, not a collection time
        ("20260105104200-0500", "20260105104000-0500", datetime(2026, 1, 5, 7, tzinfo=UTC)),
        # after the report time (OBR-22, 10:00Z) when OBX-19 is empty
        ("20260105071500-0500", "", datetime(2026, 1, 5, 7, tzinfo=UTC)),
        # OBR-7 no earlier than the result time either: OBX-14 stays
        ("20260105104200-0500", "20260105070000+0100", datetime(2026, 1, 5, 15, 42, tzinfo=UTC)),
    ],
)
def test_a_collection_time_after_the_result_time_gives_way_to_obr7(
    obx14: str, obx19: str, collected: datetime
) -> None:
    obx = f"OBX|1|NM|751-8^ANC^LN||0.42|10*9/L|||||F|||{obx14}|||||{obx19}"
    assert only(parse(message(obx))).collected_at == collected


def test_spm17_is_the_collection_time_when_obx14_and_obr7_are_empty() -> None:
    obr = "OBR|1||FILLER-2|2465-3^IgG^LN"
    spm = "SPM|1|||BLD^Blood^HL70487|||||||||||||20260105071500-0500^20260105072000-0500"
    result = only(parse(message("OBX|1|NM|2465-3^IgG^LN||320|mg/dL|||||F", spm, obr=obr)))
    assert result.collected_at == datetime(2026, 1, 5, 12, 15, tzinfo=UTC)
    # the SPM of one OBR group never lends its time to the next group
    second = "OBR|2||FILLER-3|2465-3^IgG^LN"
    text = message("OBX|1|NM|2465-3^IgG^LN||320|mg/dL|||||F", spm, second, NM_ANC, obr=obr)
    assert [type(r) for r in outcomes(parse(text))] == [LabResult, Rejection]


def test_no_collection_time_anywhere_is_a_missing_field() -> None:
    result = only(parse(message(NM_ANC, obr="OBR|1||FILLER-2|58410-2^CBC^LN")))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.MISSING_FIELD, "OBX-14")


@pytest.mark.parametrize(
    ("obr", "msh", "accession"),
    [
        (OBR, MSH, "FILLER-1"),
        ("OBR|1|PLACER-1||58410-2^CBC^LN|||20260105080000+0100", MSH, "PLACER-1"),
        ("OBR|1|||58410-2^CBC^LN|||20260105080000+0100", MSH, "CTRL-1"),
        ('OBR|1|""|""|58410-2^CBC^LN|||20260105080000+0100', MSH, "CTRL-1"),
    ],
)
def test_accession(obr: str, msh: str, accession: str) -> None:
    assert only(parse(message(NM_ANC, obr=obr, msh=msh))).accession == accession


def test_source() -> None:
    assert only(parse(message(NM_ANC))).source == "LAB"
    no_facility = MSH.replace("|LIS|LAB|", "|LIS||")
    assert only(parse(message(NM_ANC, msh=no_facility))).source == "LIS"
    assert only(parse(message(NM_ANC), Hl7Config(source="lab-main"))).source == "lab-main"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260105", datetime(2026, 1, 5, tzinfo=UTC)),
        ("2026010508", datetime(2026, 1, 5, 8, tzinfo=UTC)),
        ("202601050830", datetime(2026, 1, 5, 8, 30, tzinfo=UTC)),
        ("20260105083015", datetime(2026, 1, 5, 8, 30, 15, tzinfo=UTC)),
        ("20260105083015.5", datetime(2026, 1, 5, 8, 30, 15, 500000, tzinfo=UTC)),
        ("20260105083015+0000", datetime(2026, 1, 5, 8, 30, 15, tzinfo=UTC)),
        ("20260105093015+0100", datetime(2026, 1, 5, 8, 30, 15, tzinfo=UTC)),
        ("20141225120030.1234-0500", datetime(2014, 12, 25, 17, 0, 30, 123400, tzinfo=UTC)),
        ("202601050830-0330", datetime(2026, 1, 5, 12, 0, tzinfo=UTC)),
    ],
)
def test_dtm(text: str, expected: datetime) -> None:
    assert parse_dtm(text, UTC) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("20170122265600.004-0600", RejectReason.INVALID_TIMESTAMP),  # hour 26 (CDC ARLN)
        ("220241021055726", RejectReason.INVALID_TIMESTAMP),  # 15 digits (CDPH NBS)
        ("20260230", RejectReason.INVALID_TIMESTAMP),
        ("2026", RejectReason.INVALID_TIMESTAMP),
        ("202601", RejectReason.INVALID_TIMESTAMP),
        ("20260105+2500", RejectReason.INVALID_TIMESTAMP),
        ("20260105+0190", RejectReason.INVALID_TIMESTAMP),
        ("2026-01-05", RejectReason.INVALID_TIMESTAMP),
        ("", RejectReason.INVALID_TIMESTAMP),
    ],
)
def test_dtm_errors(text: str, reason: RejectReason) -> None:
    result = parse_dtm(text, UTC)
    assert not isinstance(result, datetime)
    assert result.reason is reason


def test_local_times_without_an_offset_are_in_the_given_zone() -> None:
    zurich = ZoneInfo("Europe/Zurich")
    result = parse_dtm("20260105083015", zurich)
    assert result == datetime(2026, 1, 5, 8, 30, 15, tzinfo=zurich)
    assert dtm_offset("20260105083015") is None
    assert dtm_offset("20260105083015-0500") == timezone(timedelta(hours=-5))


def test_default_timezone_is_validated() -> None:
    assert Hl7Config().default_timezone is None
    with pytest.raises(ValueError, match="unknown time zone"):
        Hl7Config(default_timezone="Mars/Olympus")


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "value", "expected"),
    [
        ("NM", "0.42", 420),
        ("NM", "000.42", 420),
        ("NM", "+.42", 420),
        ("NM", "=0.42", 420),
        ("SN", "^0.42", 420),
        ("SN", "=^0.42", 420),
        ("ST", "0.42", 420),
        ("", "0.42", 420),
    ],
)
def test_exact_numbers(value_type: str, value: str, expected: float) -> None:
    result = only(parse(message(f"OBX|1|{value_type}|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, LabResult)
    assert result.value == expected


@pytest.mark.parametrize(
    ("value_type", "value"),
    [
        ("SN", "<>^0.1"),
        ("SN", "^1^:^2"),
        ("SN", "^1^-"),
        ("SN", "?^1"),
        ("CWE", "N^Normal^HL70078"),
    ],
)
def test_values_that_are_not_one_value(value_type: str, value: str) -> None:
    result = only(parse(message(f"OBX|1|{value_type}|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.INVALID_FIELD, "OBX-5")


@pytest.mark.parametrize("value", ["12a", "<<1", "1e3", ".", "1,5", "0x10", "12 13", "+-1", "NaN"])
def test_nm_is_parsed_strictly(value: str) -> None:
    result = only(parse(message(f"OBX|1|NM|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.INVALID_VALUE, "OBX-5")


@pytest.mark.parametrize(
    ("value_type", "value", "comparator", "expected"),
    [
        ("NM", "<0.1", Comparator.LT, 100),
        ("NM", ">= 5", Comparator.GE, 5000),
        ("SN", "<^0.1", Comparator.LT, 100),
        ("SN", ">^5", Comparator.GT, 5000),
        ("SN", "<=^0.1", Comparator.LE, 100),
        ("SN", "=^0.1", None, 100),
    ],
)
def test_censored_values_keep_their_comparator(
    value_type: str, value: str, comparator: Comparator | None, expected: float
) -> None:
    result = only(parse(message(f"OBX|1|{value_type}|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, LabResult)
    assert (result.comparator, result.value) == (comparator, expected)  # the limit, converted


@pytest.mark.parametrize("value", ["", '""', '""~'])
def test_an_empty_or_null_value_is_missing(value: str) -> None:
    result = only(parse(message(f"OBX|1|NM|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.MISSING_VALUE, "OBX-5")
    cancelled = only(parse(message(f"OBX|1|NM|751-8^ANC^LN||{value}|10*9/L|||||X")))
    assert (cancelled.status, cancelled.value) == (ResultStatus.CANCELLED, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("9" * 5000, RejectReason.IMPLAUSIBLE_VALUE), ("-" + "9" * 5000, RejectReason.NEGATIVE_VALUE)],
)
def test_a_number_beyond_a_double_is_not_plausible(value: str, reason: RejectReason) -> None:
    result = only(parse(message(f"OBX|1|NM|751-8^ANC^LN||{value}|10*9/L|||||F")))
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (reason, "OBX-5")


def test_cancelled_with_unreadable_value_still_cancels() -> None:
    result = only(parse(message("OBX|1|NM|751-8^ANC^LN||see note|10*9/L|||||X")))
    assert isinstance(result, LabResult)
    assert (result.status, result.value) == (ResultStatus.CANCELLED, None)


def test_escapes_in_text_values() -> None:
    config = Hl7Config(local_codes={"MRD": Analyte.MRD})
    obx = "OBX|1|TX|MRD^MRD^L||\\H\\Not\\N\\ detected\\.br\\(sensitivity 10\\S\\-5)\\X\\||||||F"
    result = only(parse(message(obx), config))
    assert isinstance(result, LabResult)
    assert (result.detected, result.sensitivity) == (False, 1e-5)


# --- never raise ------------------------------------------------------------------------------


def assert_well_formed(parsed: Hl7Message) -> None:
    assert isinstance(parsed, Hl7Message)
    rejections = [parsed.message_rejection] if parsed.message_rejection else []
    for item in parsed.items:
        assert isinstance(item.outcome, LabResult | Rejection | Unmapped)
        if isinstance(item.outcome, Rejection):
            rejections.append(item.outcome)
    for rejection in rejections:
        assert isinstance(rejection.reason, RejectReason)
        assert all(PARSER_BUG not in d.message for d in rejection.details)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert_well_formed(parse(raw))
    assert_well_formed(parse(b"MSH|^~\\&|" + raw))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    assert_well_formed(parse(text))
    assert_well_formed(parse(message(f"OBX|1|NM|751-8^ANC^LN||{text}|10*9/L|||||F")))


def _full_panel() -> str:
    path = Path(__file__).resolve().parents[3] / "data/hl7/full_panel.hl7"
    return path.read_text(encoding="utf-8")


FULL_PANEL = _full_panel()
HL7_ALPHABET = st.sampled_from(list('|^~\\&\r\n0123456789.+-<>=ABCDEFXZ "#'))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(FULL_PANEL)),
            st.integers(0, 6),
            st.text(HL7_ALPHABET, max_size=6),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([None, "Europe/Zurich"]),
)
def test_mutated_messages_never_raise(edits: list[tuple[int, int, str]], zone: str | None) -> None:
    text = FULL_PANEL
    for position, length, insert in edits:
        text = text[:position] + insert + text[position + length :]
    config = Hl7Config(
        assigning_authority="KIDS",
        local_codes={"MRD-FLOW": Analyte.MRD, "MRD-NGS": Analyte.MRD},
        default_timezone=zone,
    )
    assert_well_formed(parse_oru(text, config, Policy()))


# --- ACK ----------------------------------------------------------------------------------------

NOW = datetime(2026, 1, 5, 12, 0, 1, tzinfo=UTC)


def test_ack_accept_echoes_the_header() -> None:
    parsed = parse(message(NM_ANC))
    ack = build_ack(parsed.control_id, "AA", now=NOW, header=parsed.header, ack_control_id="A1")
    assert ack.endswith("\r")
    segments = ack.rstrip("\r").split("\r")
    assert [s[:3] for s in segments] == ["MSH", "MSA"]
    msh = segments[0].split("|")
    assert msh[1:12] == [
        "^~\\&",
        "CARWATCH",
        "",
        "LIS",
        "LAB",
        "20260105120001+0000",
        "",
        "ACK^R01^ACK",
        "A1",
        "P",
        "2.5.1",
    ]
    assert segments[1] == "MSA|AA|CTRL-1|"


@pytest.mark.parametrize("code", ["AE", "AR"])
def test_ack_errors_carry_err(code: str) -> None:
    text = "PID-3 missing | see ^ docs"
    ack = build_ack("CTRL-1", code, text, now=NOW, error_code="101")  # type: ignore[arg-type]
    parsed = hl7.parse(ack)
    assert str(parsed.segment("MSA")(1)) == code
    assert str(parsed.segment("MSA")(2)) == "CTRL-1"
    assert parsed.unescape(str(parsed.segment("MSA")(3))) == text
    err = parsed.segment("ERR")
    assert str(err(3)(1)(1)) == "101"
    assert str(err(3)(1)(3)) == "HL70357"
    assert str(err(4)) == "E"
    assert parsed.unescape(str(err(8))) == text


def test_ack_for_an_unparseable_message() -> None:
    ack = build_ack(None, "AR", "not HL7", now=NOW)
    assert "MSA|AR||not HL7\r" in ack
    assert "ERR|||207^Application internal error^HL70357|E" in ack


def test_ack_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        build_ack("X", "AA", now=datetime(2026, 1, 5))  # noqa: DTZ001


def test_error_codes() -> None:
    assert error_code_for(RejectReason.MISSING_PATIENT_ID) == "101"
    assert error_code_for(RejectReason.UNSUPPORTED_MESSAGE) == "200"
    assert error_code_for(RejectReason.IMPLAUSIBLE_VALUE) == "207"
