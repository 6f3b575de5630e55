"""Settings every hospital feed has, whatever its format (HL7 v2 or FHIR)."""

from datetime import tzinfo
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

from schemas.vocab import Analyte, MrdMethod


class FeedConfig(BaseModel):
    """Per-interface settings.

    ``local_codes`` maps a site's test code (any coding system) to an analyte; ``mrd_methods`` maps
    such a code to the MRD method it implies. ``default_timezone`` (an IANA name) opts in to
    reading timestamps without an offset in that zone; left ``None``, they are rejected
    (``naive_datetime``). ``source`` names the feed and wins over what the message says.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_codes: dict[str, Analyte] = {}
    mrd_methods: dict[str, MrdMethod] = {}
    default_timezone: str | None = None
    source: str | None = None

    @field_validator("default_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @cached_property
    def tz(self) -> tzinfo | None:
        return ZoneInfo(self.default_timezone) if self.default_timezone else None
