"""Rule carries outlive a release (streams/core/carry.py): a field appended to an accumulator
decodes with its default from a carry stored before it existed; a carry with more values than the
accumulator has fields is refused, never read into the wrong fields."""

from datetime import UTC, datetime

import pytest

from schemas.vocab import MrdMethod, ResultStatus
from streams.core.carry import decode, encode
from streams.core.rules.mrd_positive import MrdAcc, MrdEpisode
from streams.core.state import StoredResult


def _positive(day: int) -> StoredResult:
    return StoredResult(
        collected_at=datetime(2026, 1, day, 8, tzinfo=UTC),
        value=1e-4,
        status=ResultStatus.FINAL,
        accession=f"M-{day}",
        source="lab-main",
        detected=True,
        method=MrdMethod.NGS,
    )


def test_a_carry_stored_before_a_field_was_appended_decodes_with_its_default():
    first, later = _positive(5), _positive(20)
    episode = MrdEpisode(first, first, later, 1e-6, MrdMethod.NGS, None, 1, [later.collected_at])
    stored = encode(MrdAcc(episode=episode))
    stored[0] = stored[0][:-1]  # the episode as the release before ``rose_at`` stored it
    decoded = decode(MrdAcc, stored)
    assert decoded.episode is not None
    assert (decoded.episode.rises, decoded.episode.rose_at) == (1, [])
    assert decoded.episode.latest.accession == "M-20"


def test_a_carry_with_more_values_than_fields_is_refused():
    stored = encode(MrdAcc(episode=MrdEpisode(*([_positive(5)] * 3), 1e-6, None)))
    stored[0].append("unexpected")
    with pytest.raises(TypeError, match="values for the"):
        decode(MrdAcc, stored)
