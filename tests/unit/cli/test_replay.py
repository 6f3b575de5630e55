"""``carwatch replay``: scenario files give their expected alerts; bad input is reported, not fatal."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from streams.cli import main

SCENARIOS = Path(__file__).parents[2] / "data" / "scenarios"
SCENARIO_FILES = sorted(p for p in SCENARIOS.glob("*.ndjson") if ".expected." not in p.name)


@pytest.mark.parametrize("scenario", SCENARIO_FILES, ids=lambda p: p.stem)
def test_scenario_replays_to_its_expected_alerts(
    scenario: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(scenario)]) == 0
    expected = scenario.with_suffix(".expected.ndjson").read_text(encoding="utf-8")
    assert capsys.readouterr().out == expected


def test_every_scenario_has_expected_alerts_beside_it() -> None:
    assert len(SCENARIO_FILES) >= 9
    for scenario in SCENARIO_FILES:
        assert scenario.with_suffix(".expected.ndjson").exists(), scenario


def test_every_alert_carries_evidence_threshold_recommendation_and_source() -> None:
    for expected in SCENARIOS.glob("*.expected.ndjson"):
        for line in expected.read_text(encoding="utf-8").splitlines():
            alert = json.loads(line)
            if alert["action"] == "retracted":
                assert alert["evidence"], "a retraction shows the result that changed"
                continue
            assert alert["threshold"] and alert["recommendation"] and alert["references"]
            if alert["rule"] != "hct_consolidation":  # HCT advice may rest on enrollment alone
                assert alert["evidence"], alert["summary"]
            for evidence in alert["evidence"]:
                assert {"analyte", "value", "unit", "collected_at", "accession"} <= set(evidence)


def test_bad_lines_are_reported_with_location_and_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", str(SCENARIOS / "hospital_feed_with_bad_lines.ndjson")]) == 0
    err = capsys.readouterr().err.splitlines()
    rejects = [line for line in err if ": rejected: " in line]
    assert [line.split(": rejected: ")[1].split()[0] for line in rejects] == [
        "malformed_json:",
        "naive_datetime",
        "unknown_unit",
        "implausible_value",
        "unknown_vocabulary",
        "negative_value:",
    ]
    assert rejects[0].startswith(str(SCENARIOS / "hospital_feed_with_bad_lines.ndjson") + ":5:")
    assert "'haircut'" in rejects[4]
    summary = err[-1]
    assert summary.startswith("carwatch replay: records read 11, accepted 2, rejected 6 (")
    assert "unmapped 1, not enrolled 2" in summary
    assert "Traceback" not in "\n".join(err)


def test_replay_twice_is_byte_identical(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        assert main(["replay", *map(str, SCENARIO_FILES)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0]


def test_stdin_with_format_and_alerts_out_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = SCENARIOS / "igg_decline.ndjson"
    out = tmp_path / "alerts.ndjson"
    with open(scenario, encoding="utf-8") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert main(["replay", "-", "--format", "ndjson", "--alerts-out", str(out)]) == 0
    assert out.read_text() == scenario.with_suffix(".expected.ndjson").read_text()
    assert capsys.readouterr().out == ""


def test_now_runs_a_final_tick_for_monitoring_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = SCENARIOS / "bca_maintained.ndjson"  # last CD19 on day 180
    assert main(["replay", str(scenario), "--now", "2026-08-30T00:00:00Z"]) == 0
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gaps = [(a["rule"], a["action"], a["decided_at"]) for a in alerts]
    assert ("monitoring_gap", "raised", "2026-08-30T00:00:00Z") in gaps


def test_policy_file_changes_thresholds_and_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "site-3pct"\nbca_cd19_pct_threshold = 3.0\n')
    scenario = SCENARIOS / "bca_early_loss.ndjson"  # CD19 1.2-1.6 %: aplastic under a 3 % policy
    assert main(["replay", str(scenario), "--policy", str(policy)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "does-not-exist.ndjson"], "cannot read does-not-exist.ndjson"),
        (["replay", "x.txt"], "cannot tell the format of x.txt"),
        (["replay", "-"], "reading stdin needs --format"),
        (["replay", "a.ndjson", "--now", "yesterday"], "is not an ISO 8601 date-time"),
        (["replay", "a.ndjson", "--now", "2026-01-01T00:00:00"], "has no time zone"),
        (["replay", "a.ndjson", "--format", "xml"], "Invalid value for '--format'"),
        (["replay"], "Missing argument"),
        (["nonsense"], "No such command"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("carwatch: error: ") and message in err


def test_bad_policy_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("bca_cd19_pct_threshold = 7.0\n")
    data = SCENARIOS / "igg_decline.ndjson"
    assert main(["replay", str(data), "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bca_cd19_pct_threshold" in err


def test_cancellation_of_an_unknown_accession_is_ignored_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "cancel.ndjson"
    data.write_text(
        '{"type": "infusion", "patient_id": "P9", "infused_at": "2026-01-01T10:00:00Z"}\n'
        '{"type": "lab_result", "patient_id": "P9", "analyte": "igg", "value": 300, '
        '"unit": "mg/dL", "collected_at": "2026-02-01T08:00:00Z", "status": "cancelled", '
        '"accession": "NEVER-SEEN"}\n'
    )
    assert main(["replay", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{data}:2: ignored: unknown_accession" in captured.err
    assert "unknown accession 1" in captured.err.splitlines()[-1]


def test_progress_is_shown_on_a_terminal_only(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    data = tmp_path / "big.ndjson"
    line = (SCENARIOS / "hospital_feed_with_bad_lines.ndjson").read_text().splitlines()[1]
    data.write_text((line + "\n") * 40_000)
    command = [sys.executable, "-m", "streams.cli", "replay", str(data)]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "records/s" not in piped.stderr and "\r" not in piped.stderr

    leader, follower = pty.openpty()
    try:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=follower, timeout=120, check=True)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    text = shown.decode()
    assert "records/s" in text and "%" in text
    assert "carwatch replay: records read 40000" in text


EXTERNAL = Path(__file__).parents[2] / "data" / "external"


def test_hl7_local_times_need_no_option_and_feed_timezone_is_validated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = str(EXTERNAL / "hl7v2" / "cdc-dex_Hepatitis_V1_0_1_TM_TC02_HEP_B_ACUTE.hl7")
    assert main(["replay", message]) == 0
    err = capsys.readouterr().err
    assert "naive_datetime" not in err and "not enrolled 2" in err.splitlines()[-1]
    assert main(["replay", message, "--feed-timezone", "America/New_York"]) == 0
    assert "not enrolled 2" in capsys.readouterr().err.splitlines()[-1]
    assert main(["replay", message, "--feed-timezone", "Mars/Olympus"]) == 2
    assert "unknown time zone 'Mars/Olympus'" in capsys.readouterr().err


def corpus_files() -> list[Path]:
    return sorted(p for p in EXTERNAL.rglob("*") if p.suffix in (".hl7", ".json"))


def test_the_corpus_patients_enrolled_get_their_mapped_results_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from schemas.lab_result import LabResult
    from streams.core.policy import Policy
    from streams.ingest.fhir.observation import FhirConfig
    from streams.ingest.files import read_path
    from streams.ingest.hl7.oru import Hl7Config

    first: dict[str, datetime] = {}
    mapped = 0
    for path in corpus_files():
        for item in read_path(path, Policy(), Hl7Config(), FhirConfig()):
            if isinstance(item.outcome, LabResult):
                mapped += 1
                seen = first.get(item.outcome.patient_id, item.outcome.collected_at)
                first[item.outcome.patient_id] = min(seen, item.outcome.collected_at)
    assert len(first) >= 6 and mapped >= 30
    infusions = tmp_path / "infusions.ndjson"
    infusions.write_text(
        "".join(
            json.dumps(
                {
                    "type": "infusion",
                    "patient_id": patient,
                    "infused_at": (at - timedelta(days=1)).isoformat(),
                }
            )
            + "\n"
            for patient, at in sorted(first.items())
        )
    )
    files = [str(infusions), *map(str, corpus_files())]
    assert main(["replay", *files]) == 0
    err = capsys.readouterr().err
    assert "naive_datetime" not in err
    summary = err.splitlines()[-1]
    assert f"accepted {len(first) + mapped}," in summary
    assert "not enrolled 0," in summary
    # the only rejection of the corpus: a hemoglobin sent in g/mL (implausible)
    assert "rejected 1 (implausible_value=1)" in summary


def test_feed_config_gives_the_listener_mapping_and_strict_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = (
        "MSH|^~\\&|LIS|LAB|CW|H|20260105120000+0100||ORU^R01|C1|P|2.5.1\r"
        "PID|1||P1^^^KIDS^MR\r"
        "OBR|1||A1|X^X^L|||20260105080000\r"
        "OBX|1|NM|CD19PCT^CD19 %^L||0.4|%|||||F\r"
        "OBX|2|NM|8116-6^CD19 abs^LN||0.4|%|||||F\r"
        "OBX|3|NM|751-8^ANC^LN||12a|/uL|||||F\r"
    )
    feed = tmp_path / "feed.hl7"
    feed.write_text(message)
    config = tmp_path / "kids.toml"
    config.write_text('assigning_authority = "KIDS"\n[local_codes]\nCD19PCT = "cd19_pct"\n')
    assert main(["replay", str(feed)]) == 0
    assert "unmapped 1" in capsys.readouterr().err.splitlines()[-1]
    assert main(["replay", str(feed), "--feed-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "feed.hl7:message 1:OBX 2: note: code_unit_mismatch" in err
    assert "OBX 3: rejected: invalid_value (OBX-5)" in err
    assert "unmapped 0" in err.splitlines()[-1] and "code/unit mismatches 1" in err
    assert main(["replay", str(feed), "--feed-config", str(config), "--strict"]) == 1
    config.write_text("no_such_setting = 1\n")
    assert main(["replay", str(feed), "--feed-config", str(config)]) == 2
    assert "unknown setting 'no_such_setting'" in capsys.readouterr().err.splitlines()[-1]


def test_strict_passes_clean_input(capsys: pytest.CaptureFixture[str]) -> None:
    clean = SCENARIOS / "bca_early_loss.ndjson"
    assert main(["replay", str(clean), "--strict"]) == 0
