"""Every clinical threshold, with its default from docs/clinical-spec.md, loadable from TOML.

An institution overrides settings in a TOML file (``carwatch replay --policy FILE``, env
``CARWATCH_POLICY_FILE`` for the worker); unknown keys are rejected so a typo never silently
keeps a default. ``version_tag`` = the declared ``version`` plus a fingerprint of every setting:
alert ids include it, so two policies that differ in any threshold never share an alert id.
"""

import hashlib
import json
import tomllib
from datetime import tzinfo
from functools import cached_property
from pathlib import Path
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.vocab import Analyte

#: Per-analyte plausibility limits in canonical units (inclusive). Outside → ``implausible_value``.
#: Wide on purpose: they catch unit mistakes (hemoglobin sent in g/mL), not abnormal patients.
DEFAULT_PLAUSIBILITY: dict[Analyte, tuple[float, float]] = {
    Analyte.CD19_PCT: (0.0, 100.0),
    Analyte.CD19_ABS: (0.0, 100_000.0),
    Analyte.IGG: (0.0, 10_000.0),
    Analyte.ANC: (0.0, 200_000.0),
    Analyte.FERRITIN: (0.0, 2_000_000.0),
    Analyte.MRD: (0.0, 1.0),
    Analyte.ALC: (0.0, 1_000_000.0),
    Analyte.WBC: (0.0, 1_500_000.0),
    Analyte.PLATELETS: (0.0, 5_000.0),
    Analyte.HEMOGLOBIN: (0.0, 30.0),
    Analyte.FIBRINOGEN: (0.0, 3_000.0),
    Analyte.ALT: (0.0, 50_000.0),
    Analyte.AST: (0.0, 50_000.0),
    Analyte.LDH: (0.0, 100_000.0),
    Analyte.BILIRUBIN: (0.0, 100.0),
    Analyte.TRIGLYCERIDES: (0.0, 20_000.0),
    Analyte.CRP: (0.0, 1_000.0),
}


class PolicyError(ValueError):
    """A policy file that cannot be used (unreadable, unknown key, out-of-range value)."""


class Policy(BaseModel):
    """Thresholds of every rule. Field names carry their units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = "westhafen-2025.1"
    timezone: str = "UTC"
    alert_on_preliminary: bool = False

    # history bounds (docs/architecture.md: state size stays flat over years of follow-up)
    history_window_days: int = Field(default=730, ge=60)
    max_results_per_analyte: int = Field(default=120, ge=16)

    # 1. bca_loss (Westhafen 2025 Table 1, Fig. 3)
    bca_cd19_pct_threshold: float = Field(default=1.0, ge=1.0, le=3.0)
    bca_cd19_abs_threshold_per_ul: float = Field(default=10.0, ge=10.0, le=50.0)
    bca_confirmations: int = Field(default=2, ge=1, le=2)
    bca_confirmation_min_days: int = Field(default=7, ge=0)
    bca_immediate_multiple: float = Field(default=2.0, gt=1.0)
    early_loss_max_day: int = Field(default=183, ge=0)
    #: bca_not_established: the first CD19 specimen on or after this day decides (rev. 2)
    bca_establish_check_day: int = Field(default=21, ge=1)

    # 2. hypogammaglobulinemia
    igg_threshold_mg_dl: float = Field(default=400.0, gt=0)
    #: an IgG within this many days after an IVIG dose reflects the infusion (rev. 2)
    ivig_effect_days: int = Field(default=28, ge=0)

    # 3. prolonged_neutropenia (EHA/EBMT ICAHT grading)
    icaht_alert_grade: int = Field(default=3, ge=1, le=4)
    anc_neutropenia_per_ul: float = 500.0
    anc_profound_per_ul: float = 100.0
    icaht_early_last_day: int = 30
    icaht_nonstable_recovery_days: int = 3
    icaht_stable_recovery_days: int = 3
    late_icaht_anc_per_ul: tuple[float, float, float, float] = (1500.0, 1000.0, 500.0, 100.0)
    platelets_low_k_per_ul: float = 50.0
    platelets_profound_k_per_ul: float = 20.0

    # 4. iec_hs (ASTCT, Hines 2023)
    iec_hs_earliest_day: int = Field(default=7, ge=0)
    ferritin_uln_ng_ml: float = 300.0
    ferritin_baseline_multiple: float = 2.0
    ferritin_rise_multiple: float = 2.0
    ferritin_rise_window_hours: float = 72.0
    iec_hs_support_window_days: int = 7
    cytopenia_fall_fraction: float = 0.5
    cytopenia_lookback_days: int = 7
    #: a new cytopenia must also fall by at least this much (rev. 2): noise within a profound
    #: aplasia (ANC 40 → 20) is not a new cytopenia
    cytopenia_min_fall_anc_per_ul: float = Field(default=250.0, ge=0)
    cytopenia_min_fall_plt_k_per_ul: float = Field(default=25.0, ge=0)
    fibrinogen_low_mg_dl: float = 150.0
    transaminase_uln_u_l: float = 40.0
    transaminase_multiple: float = 5.0
    triglycerides_high_mg_dl: float = 265.0
    ldh_uln_u_l: float = 250.0
    iec_hs_resolve_fraction: float = 0.5
    iec_hs_new_episode_multiple: float = 2.0

    # 5. mrd_positive: the sensitivity an MRD assay is taken to have when the lab does not say
    mrd_sensitivity_flow: float = Field(default=1e-4, gt=0, le=1)
    mrd_sensitivity_pcr: float = Field(default=1e-4, gt=0, le=1)
    mrd_sensitivity_ngs: float = Field(default=1e-6, gt=0, le=1)

    # 7. monitoring_gap
    first_year_last_day: int = 365
    cd19_gap_days_first_year: int = 35
    cd19_gap_days_after: int = 90
    igg_gap_days_first_year: int = 60
    igg_gap_days_after: int = 90
    anc_gap_days_open_neutropenia: int = 7

    plausibility: dict[Analyte, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PLAUSIBILITY)
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("plausibility")
    @classmethod
    def _complete_plausibility(
        cls, value: dict[Analyte, tuple[float, float]]
    ) -> dict[Analyte, tuple[float, float]]:
        return {**DEFAULT_PLAUSIBILITY, **value}

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> Self:
        if self.anc_profound_per_ul >= self.anc_neutropenia_per_ul:
            raise ValueError("anc_profound_per_ul must be below anc_neutropenia_per_ul")
        if list(self.late_icaht_anc_per_ul) != sorted(self.late_icaht_anc_per_ul, reverse=True):
            raise ValueError("late_icaht_anc_per_ul must be descending (grade 1..4)")
        return self

    @cached_property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def version_tag(self) -> str:
        """``version`` plus a fingerprint of all settings; recorded in every alert."""
        settings = self.model_dump(mode="json", exclude={"version"})
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{self.version}+{digest[:8]}"

    def fingerprint(self, settings: tuple[str, ...]) -> str:
        """Fingerprint of some settings (a rule's alert ids include the ones it reads)."""
        cache = self._fingerprints
        if settings not in cache:
            values = "\x1f".join(f"{name}={getattr(self, name)!r}" for name in sorted(settings))
            cache[settings] = hashlib.sha256(values.encode()).hexdigest()[:12]
        return cache[settings]

    @cached_property
    def _fingerprints(self) -> dict[tuple[str, ...], str]:
        return {}

    @classmethod
    def from_toml(cls, path: Path) -> "Policy":
        """Load a policy file; raises ``PolicyError`` with one clear line."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file {path} is not valid TOML: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else None
            if first is not None:
                where = ".".join(str(p) for p in first["loc"])
                raise PolicyError(f"policy file {path}: {where}: {first['msg']}") from exc
            raise PolicyError(f"policy file {path}: {exc}") from exc


DEFAULT_POLICY = Policy()
