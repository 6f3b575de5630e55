"""The external HL7 v2 / FHIR R4 corpus (tests/data/external, see its README.md) as a test.

Every result whose code maps to one of our analytes with a sane unit is accepted; codes we do
not monitor are counted as unmapped (never rejected); everything else is rejected with a
reason; nothing crashes. The counts per file are concrete so that a change in behaviour shows.
"""

import hashlib
import io
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, Comparator, RejectReason
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig, parse_fhir
from streams.ingest.files import read_items
from streams.ingest.hl7.oru import PARSER_BUG, Hl7Config, parse_oru
from streams.ingest.normalise import Unmapped

CORPUS = Path(__file__).resolve().parents[2] / "data" / "external"

#: sha256 of each file as copied from /work/shared/external (byte-for-byte: BOMs, CR
#: separators and missing final newlines are part of what is tested).
MANIFEST = {
    "README.md": "cc10b0aca3e1882ed8547018388cd80cd74aefabd93f40118515a394bc98187c",
    "fhir/fhir-r4-spec_diagnosticreport-example-ghp.json": "51443c1d90cbcd96055864bd06dc0faa6b336470930cf25e3d60b4ca2ff332ec",
    "fhir/fhir-r4-spec_observation-example-f001-glucose.json": "0718d906f9991978c8fcc34f3e1f0027ad0ea989ecbdbb9bc7b5c98022ecd7d6",
    "fhir/fhir-r4-spec_observation-example-f004-erythrocyte.json": "ec57baae5d11d6069125b906d9619da83fcfcf8b3ce1c9208dbcb0917575eecd",
    "fhir/fhir-r4-spec_observation-example-f005-hemoglobin.json": "25c49200576c6fe872e9100944b8d16b01f99c004b1209346896960e3f08567b",
    "fhir/fhir-r4-spec_observation-example-f204-creatinine.json": "137571456e9d025811fad7c84b92a63b62ca383dad949cadc1e2287634c49319",
    "fhir/fhir-r4-spec_observation-example-f205-egfr.json": "e749c01328e3c6b5741b545da112a91add5e7e635e1bf8bdb563a1fc8fe55c2c",
    "fhir/fhir-r4-spec_observation-example-unsat.json": "d837cfe2304734d6efc1c54dac7fc73315edd6a3ee3f011acb9fedf4e1788f12",
    "fhir/synthea-r4_Tom_Goodwin_e20de9eb-6f2d-4871-a43f-bbede53293ed.json": "af48f916530e33a66d8b96ea01ff0cac40b0c6f2442c5ba2a5fff380a64b34e3",
    "fhir/us-core_observation-cbc-hemoglobin.json": "c452a795e447d7a87520b7a34cef5baad5c6fe3ee8d337ccf95dd5894af1f513",
    "fhir/us-core_observation-cbc-leukocytes.json": "7dd947eb77a26d17d0089c63ef82b94cb72c67b9b74a6695a5ccd255ffed1d6c",
    "fhir/us-core_observation-cbc-platelets.json": "28ef84473831087046b669b06a2f2853fadd54bcf0c0f98fd466818a93b0132b",
    "fhir/us-core_observation-serum-bun.json": "be0b80642ee4499f1f3548d18548baa8192b6cd4c60d5401dfb8d9f2ac13c9fa",
    "hl7v2/cdc-dex_Hepatitis_V1_0_1_TM_TC02_HEP_B_ACUTE.hl7": "1b4463af127a5e1d4a8abbf1e2bdb80b532516d5f2e9e93e5771d8d4870d0c98",
    "hl7v2/cdc-dex_arln_gc_exampleHL7Message.hl7": "1299c1e279279813bfdc4ebf18eb2e25964f46f596848e089843369381712715",
    "hl7v2/cdc-reportstream_sample_oru_CDPH_NBS_20241021-001.hl7": "b5f5083afa4eff6acd027e6f213111f9df15a22aeff38117f17958f08a91647a",
    "hl7v2/google-hdh_simhosp_oru_r01_ex6.hl7": "08e0b9e0dc1f98fed9655c05fba04df43d86d688e4904104b4fbea82ba103f8d",
    "hl7v2/msfhirconv_LAB-ORU-1.hl7": "738ba87abf8abffc25bdf96c325b8c52ec24825eb92be0c89e4cab257a39232c",
    "hl7v2/msfhirconv_LAB-ORU-2.hl7": "dc3b962e21fb40b1fd575066464bf80f77fbd3e77c7ac75bacaf80b975361803",
    "hl7v2/msfhirconv_LRI_2.0-NG_CBC_Typ_Message.hl7": "0a4178ba3d40a04629d63867f185e0e33d736c092287b5322986454566153b63",
    "hl7v2/msfhirconv_ORU-R01-RMGEAD.hl7": "98e44c99e584db5555377dc49270bc0526ff3a2d849f8da3a8aba41084cb0d90",
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase1.hl7": "307c724b03673566273d519c4e1b86c71d4456e0d14ba2b6f2b38f245661407a",
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase3.hl7": "a414d4a4c818c6424e358876377cebb6fe5a281fae4a63fc78fe5b651183aa88",
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase5.hl7": "e56ccbb8a97ada920a68bf7ce6ca29380add2e2632ff85043a917662ea5e3f00",
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase6.hl7": "b3057af28f25a98cf30a986c7e2c96254dc6b50b4e290b10f63d5067c0289d0e",
}

ACCEPTED, UNMAPPED = "accepted", "unmapped"
IMPLAUSIBLE = "rejected:implausible_value"

#: Outcomes per file (docs/clinical-spec.md §0 rev. 2: HL7 local times in MSH-7's offset, else the
#: feed's zone, else the policy's; a FHIR date is a day of the policy's zone). No file has a
#: naive_datetime reject.
EXPECTED: dict[str, dict[str, int]] = {
    # ALT 1742-6 and AST 1920-8 (SN ^200 / ^100 U/L); OBR-7 without an offset is local time.
    "hl7v2/cdc-dex_Hepatitis_V1_0_1_TM_TC02_HEP_B_ACUTE.hl7": {UNMAPPED: 101, ACCEPTED: 2},
    # 5-character MSH-2, duplicate set ids, hour 26 in OBR-22: all MIC codes are not ours.
    "hl7v2/cdc-dex_arln_gc_exampleHL7Message.hl7": {UNMAPPED: 23},
    "hl7v2/cdc-reportstream_sample_oru_CDPH_NBS_20241021-001.hl7": {UNMAPPED: 18},
    "hl7v2/google-hdh_simhosp_oru_r01_ex6.hl7": {UNMAPPED: 5},  # local WinPath codes only
    # 11156-7 / 11125-2 are morphology findings sent for counts: deliberately not mapped.
    "hl7v2/msfhirconv_LAB-ORU-1.hl7": {UNMAPPED: 10},
    "hl7v2/msfhirconv_LAB-ORU-2.hl7": {UNMAPPED: 10},
    # WBC, platelets, ALC, ANC accepted; hemoglobin 12.5 g/mL is 1250 g/dL: implausible.
    "hl7v2/msfhirconv_LRI_2.0-NG_CBC_Typ_Message.hl7": {ACCEPTED: 4, IMPLAUSIBLE: 1, UNMAPPED: 23},
    "hl7v2/msfhirconv_ORU-R01-RMGEAD.hl7": {UNMAPPED: 1},  # LOINC name in the system field
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase1.hl7": {UNMAPPED: 1},
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase3.hl7": {UNMAPPED: 1},
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase5.hl7": {UNMAPPED: 1},
    "hl7v2/nist-elr_ORU_R01_2.5.1_SampleTestCase6.hl7": {UNMAPPED: 3},
    # Hb, platelets, WBC, ANC, ALC (panel members take the panel's effective time), bilirubin
    # 14631-6 in µmol/L, ALT, AST, LDH (unit text only, no UCUM code).
    "fhir/fhir-r4-spec_diagnosticreport-example-ghp.json": {ACCEPTED: 9, UNMAPPED: 42},
    "fhir/fhir-r4-spec_observation-example-f001-glucose.json": {UNMAPPED: 1},
    "fhir/fhir-r4-spec_observation-example-f004-erythrocyte.json": {UNMAPPED: 1},
    "fhir/fhir-r4-spec_observation-example-f005-hemoglobin.json": {ACCEPTED: 1},
    "fhir/fhir-r4-spec_observation-example-f204-creatinine.json": {UNMAPPED: 1},
    "fhir/fhir-r4-spec_observation-example-f205-egfr.json": {UNMAPPED: 1},  # components: not ours
    "fhir/fhir-r4-spec_observation-example-unsat.json": {UNMAPPED: 1},  # cancelled glucose
    # 3 CBCs (Hb, platelets, WBC), 3 lipid panels (triglycerides), one CMP (bilirubin, ALT, AST)
    "fhir/synthea-r4_Tom_Goodwin_e20de9eb-6f2d-4871-a43f-bbede53293ed.json": {
        ACCEPTED: 15,
        UNMAPPED: 110,
    },
    # effectiveDateTime "2005-07-05": the start of that day in the policy's zone.
    "fhir/us-core_observation-cbc-hemoglobin.json": {ACCEPTED: 1},
    "fhir/us-core_observation-cbc-leukocytes.json": {ACCEPTED: 1},
    "fhir/us-core_observation-cbc-platelets.json": {ACCEPTED: 1},
    "fhir/us-core_observation-serum-bun.json": {UNMAPPED: 1},  # UCUM system without code
}


def kind(outcome: Any) -> str:
    if isinstance(outcome, Rejection):
        return f"rejected:{outcome.reason.value}"
    return UNMAPPED if isinstance(outcome, Unmapped) else ACCEPTED


def outcomes(name: str, zone: str | None = None, policy_zone: str = "UTC") -> list[Any]:
    raw = (CORPUS / name).read_bytes()
    policy = Policy(timezone=policy_zone)
    if name.startswith("hl7v2/"):
        message = parse_oru(raw, Hl7Config(default_timezone=zone), policy)
        assert message.message_rejection is None, message.message_rejection
        return [item.outcome for item in message.items]
    document = parse_fhir(raw, FhirConfig(), policy)
    assert document.document_rejection is None, document.document_rejection
    return [item.outcome for item in document.items]


def test_corpus_is_a_byte_for_byte_copy_with_its_attribution() -> None:
    found = {
        str(path.relative_to(CORPUS)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(CORPUS.rglob("*"))
        if path.is_file()
    }
    assert found == MANIFEST
    attribution = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert "license" in attribution.lower()
    assert "No real patient data is included." in attribution


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outcomes_per_file(name: str) -> None:
    results = outcomes(name)
    assert Counter(kind(r) for r in results) == Counter(EXPECTED[name])
    for result in results:
        if isinstance(result, Rejection):
            assert all(PARSER_BUG not in d.message for d in result.details)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outcomes_per_file_do_not_depend_on_the_zone(name: str) -> None:
    results = outcomes(name, "America/New_York", policy_zone="Europe/Zurich")
    assert Counter(kind(r) for r in results) == Counter(EXPECTED[name])


def test_local_times_follow_msh7_then_the_feed_then_the_policy() -> None:
    # MSH-7 20141225120030.1234-0500: OBR-7 without an offset is read at -05:00, whatever the
    # feed's or the policy's zone.
    name = "hl7v2/cdc-dex_Hepatitis_V1_0_1_TM_TC02_HEP_B_ACUTE.hl7"
    for zone, policy_zone in ((None, "UTC"), ("Asia/Tokyo", "Europe/Zurich")):
        found = [r for r in outcomes(name, zone, policy_zone) if isinstance(r, LabResult)]
        assert {r.collected_at.utcoffset() for r in found} == {timedelta(hours=-5)}
    # Simulated Hospital's MSH-7 has no offset: the feed's zone, else the policy's.
    raw = (CORPUS / "hl7v2/google-hdh_simhosp_oru_r01_ex6.hl7").read_bytes()
    raw = raw.replace(b"5.10|MMOLL", b"5.10|mg/L")  # potassium posing as CRP, for its times
    codes = {"tt-0003-02": Analyte.CRP}
    cases = ((None, "UTC", "UTC"), ("Europe/London", "UTC", "Europe/London"))
    for zone, policy_zone, expected in (*cases, (None, "Europe/Zurich", "Europe/Zurich")):
        config = Hl7Config(local_codes=codes, default_timezone=zone)
        message = parse_oru(raw, config, Policy(timezone=policy_zone))
        times = {i.outcome.collected_at for i in message.items if isinstance(i.outcome, LabResult)}
        assert {str(t.tzinfo) for t in times} == {expected}
        assert {t.replace(tzinfo=None).isoformat() for t in times} == {"2020-05-08T13:06:44"}


def test_fhir_dates_are_the_start_of_the_day_in_the_policy_zone() -> None:
    (result,) = outcomes(
        "fhir/us-core_observation-cbc-hemoglobin.json", policy_zone="Europe/Zurich"
    )
    assert isinstance(result, LabResult)
    assert result.collected_at.isoformat() == "2005-07-05T00:00:00+02:00"


def test_every_file_is_covered() -> None:
    assert set(EXPECTED) == {name for name in MANIFEST if name != "README.md"}


def values(results: list[Any]) -> dict[Analyte, list[float | None]]:
    found: dict[Analyte, list[float | None]] = {}
    for result in results:
        if isinstance(result, LabResult):
            assert result.analyte is not None
            found.setdefault(result.analyte, []).append(result.value)
    return found


def test_lri_cbc_values() -> None:
    results = outcomes("hl7v2/msfhirconv_LRI_2.0-NG_CBC_Typ_Message.hl7")
    assert values(results) == {
        Analyte.WBC: [105600],  # {cells}/uL
        Analyte.PLATELETS: [210],  # 210000 {cells}/uL = 210 × 10³/µL
        Analyte.ALC: [41200],  # 26474-7, 41.2 10*3/uL
        Analyte.ANC: [58000],  # 26499-4, 58 10*3/uL
    }
    hemoglobin = results[1]
    assert isinstance(hemoglobin, Rejection)
    assert hemoglobin.reason is RejectReason.IMPLAUSIBLE_VALUE
    assert "12.5 g/mL" in hemoglobin.details[0].message
    anc = results[17]
    assert isinstance(anc, LabResult)
    assert (anc.patient_id, anc.accession, anc.source) == (
        "PATID1234",
        "R-991133",
        "NIST Lab Facility",
    )
    assert anc.collected_at.isoformat() == "2011-01-03T14:34:28-08:00"


def test_rmgead_loinc_name_in_the_system_field() -> None:
    (result,) = outcomes("hl7v2/msfhirconv_ORU-R01-RMGEAD.hl7")
    assert isinstance(result, Unmapped)
    assert result.code == "1554-5"
    assert "not LOINC-coded" in result.reason


def test_hepatitis_liver_enzymes() -> None:
    results = outcomes("hl7v2/cdc-dex_Hepatitis_V1_0_1_TM_TC02_HEP_B_ACUTE.hl7", "America/New_York")
    assert values(results) == {Analyte.ALT: [200], Analyte.AST: [100]}


def test_ghp_bundle_values() -> None:
    results = outcomes("fhir/fhir-r4-spec_diagnosticreport-example-ghp.json")
    found = values(results)
    assert found == {
        Analyte.HEMOGLOBIN: [17.6],  # 176 g/L
        Analyte.PLATELETS: [444],  # 10*9/L
        Analyte.WBC: [4600],
        Analyte.ANC: [900],
        Analyte.ALC: [900],
        Analyte.BILIRUBIN: [pytest.approx(7 / 17.104)],  # 7 µmol/L
        Analyte.ALT: [54],
        Analyte.AST: [30],
        Analyte.LDH: [131],
    }
    accepted = [r for r in results if isinstance(r, LabResult)]
    assert {r.patient_id for r in accepted} == {"pat2"}
    assert {r.collected_at.isoformat() for r in accepted} == {"2015-08-16T06:40:17+00:00"}


def test_synthea_transaction_bundle() -> None:
    results = outcomes("fhir/synthea-r4_Tom_Goodwin_e20de9eb-6f2d-4871-a43f-bbede53293ed.json")
    found = values(results)
    lipids_cbc = {Analyte.HEMOGLOBIN, Analyte.PLATELETS, Analyte.WBC, Analyte.TRIGLYCERIDES}
    assert set(found) == lipids_cbc | {Analyte.BILIRUBIN, Analyte.ALT, Analyte.AST}
    assert [len(found[a]) for a in (Analyte.HEMOGLOBIN, Analyte.TRIGLYCERIDES)] == [3, 3]
    accepted = [r for r in results if isinstance(r, LabResult)]
    # urn:uuid subject → the bundle's Patient → its first identifier
    assert {r.patient_id for r in accepted} == {"e20de9eb-6f2d-4871-a43f-bbede53293ed"}


def test_site_mapped_corpus_codes_show_value_handling() -> None:
    # An artificial mapping (a site would never map eGFR or creatinine to CRP) that drives the
    # Simulated Hospital values through the value rules: "<15" inside NM is censored (accepted
    # with its comparator: eGFR is sent in mL/min, which CRP does not take), and "UMOLL" is no
    # unit we know.
    config = Hl7Config(
        local_codes={"tt-0003-05": Analyte.CRP, "tt-0003-01": Analyte.CRP},
        default_timezone="Europe/London",
    )
    raw = (CORPUS / "hl7v2/google-hdh_simhosp_oru_r01_ex6.hl7").read_bytes()
    results = [item.outcome for item in parse_oru(raw, config).items]
    assert [kind(r) for r in results] == [
        UNMAPPED,
        UNMAPPED,
        UNMAPPED,
        "rejected:unknown_unit",
        "rejected:unknown_unit",
    ]
    config = Hl7Config(local_codes={"tt-0003-05": Analyte.CRP}, default_timezone="Europe/London")
    raw = raw.replace(b"MLMIN", b"mg/L")
    censored = [item.outcome for item in parse_oru(raw, config).items][3]
    assert isinstance(censored, LabResult)
    assert (censored.comparator, censored.value) == (Comparator.LT, 15)


def test_the_whole_corpus_through_read_items() -> None:
    names = sorted(name for name in EXPECTED if name.startswith("hl7v2/"))
    joined = b"\r\n".join((CORPUS / name).read_bytes() for name in names)
    items = list(read_items(io.BytesIO(joined), "hl7", "corpus.hl7", Policy(), Hl7Config()))
    total: Counter[str] = Counter()
    for name in names:
        total.update(EXPECTED[name])
    assert Counter(kind(item.outcome) for item in items) == total
    assert {item.location.split(":")[1] for item in items} == {
        f"message {n}" for n in range(1, len(names) + 1)
    }
