"""Untrusted JSON: every problem a ``ValueError``, never a crash (streams.ingest.jsonsafe)."""

import pytest

from streams.ingest.config import FEED_KEYS
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.ingest.jsonsafe import MAX_DEPTH, clean_text, load_json


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b"[" * 100_000, "nested deeper"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"a": NaN}', "not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8 at byte 0"),
        (b"{", "not JSON"),
        # which one was meant is unknown: json keeps the last, other parsers the first
        (b'{"value": 0.42, "value": 4.2}', "'value' occurs twice"),
        (b'[{"a": {"b": 1, "c": 2, "b": 1}}]', "'b' occurs twice"),
    ],
)
def test_hostile_json_is_a_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_json(data)


def test_clean_json_passes_including_surrogate_pairs() -> None:
    assert load_json(b'\xef\xbb\xbf{"a": ["\\ud83d\\ude00"]}') == {"a": ["\U0001f600"]}
    nested = load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        nested = nested[0]
    assert nested == []


def test_clean_text_replaces_lone_surrogates() -> None:
    assert clean_text("a\ud800b") == "a?b"


def test_feed_keys_are_the_settings_of_both_formats() -> None:
    assert set(Hl7Config.model_fields) | set(FhirConfig.model_fields) == FEED_KEYS
