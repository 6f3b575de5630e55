"""Settings every hospital feed has, whatever its format (HL7 v2 or FHIR)."""

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.vocab import Analyte, MrdMethod


class FeedConfig(BaseModel):
    """Per-interface settings.

    ``local_codes`` maps a site's test code (any coding system) to an analyte; ``mrd_methods`` maps
    such a code to the MRD method it implies. ``source`` names the feed and wins over what the
    message says. The time zone of local timestamps is HL7-only (``Hl7Config.default_timezone``):
    FHIR times carry their offset, and a FHIR date is a day of the policy's zone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_codes: dict[str, Analyte] = {}
    mrd_methods: dict[str, MrdMethod] = {}
    source: str | None = None


Config = TypeVar("Config", bound=FeedConfig)

#: Every setting a feed TOML may hold: ``Hl7Config`` and ``FhirConfig`` fields together (a unit
#: test keeps this in step with the two models).
FEED_KEYS = frozenset(
    {
        "local_codes",
        "mrd_methods",
        "source",
        "assigning_authority",
        "default_timezone",
        "patient_identifier_system",
    }
)


def load_feed_toml(path: str | None) -> dict[str, Any]:
    """The table of a feed's TOML file (``{}`` without one); ``ValueError`` with one line."""
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read feed config {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"feed config {path} is not TOML: {exc}") from exc


def feed_config_from(data: dict[str, Any], model: type[Config], path: str) -> Config:
    """``model`` from the keys of ``data`` it has; a key no feed format knows is an error, so one
    file serves the listener of its format and ``carwatch replay --feed-config`` alike."""
    unknown = sorted(set(data) - FEED_KEYS)
    if unknown:
        raise ValueError(f"feed config {path}: unknown setting {unknown[0]!r}")
    try:
        return model.model_validate({k: v for k, v in data.items() if k in model.model_fields})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise ValueError(f"feed config {path}: {where}: {error['msg']}") from exc


def load_feed_config(path: str | None, model: type[Config]) -> Config:
    """A feed configuration (``Hl7Config``/``FhirConfig``) from a TOML file; defaults without."""
    return feed_config_from(load_feed_toml(path), model, path or "")
