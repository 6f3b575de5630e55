"""Every alert's references name real sections of the review and quote it verbatim.

docs/sources/westhafen-2025.md lists the review's section headings, figures and table the product
names and the sentences it quotes (checked against the pre-proof when written). A reference that
names a section, figure or table not listed there, or quotes a sentence not there, fails here:
no sentence is attributed to the review that is not in it (rev. 2, item 6).
"""

import importlib
import re
from pathlib import Path

import pytest

from streams.core.engine import RULES

SOURCES = Path(__file__).parents[4] / "docs" / "sources" / "westhafen-2025.md"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _listed() -> tuple[set[str], str]:
    text = SOURCES.read_text(encoding="utf-8")
    headings_part = text.split("## Section headings")[1].split("## Figures and table")[0]
    headings = {line[2:].strip() for line in headings_part.splitlines() if line.startswith("- ")}
    quoted_part = text.split("## Figures and table")[1].split("## Consensus papers")[0]
    return headings, _norm(quoted_part)


REFERENCES = [
    (rule.name.value, reference)
    for rule in RULES
    for reference in importlib.import_module(type(rule).__module__).REFERENCES
]


def test_every_rule_cites_the_review_or_the_product_spec():
    for rule in RULES:
        refs = importlib.import_module(type(rule).__module__).REFERENCES
        assert any("Westhafen 2025" in r for r in refs), rule.name


@pytest.mark.parametrize(("rule", "reference"), REFERENCES)
def test_named_sections_figures_and_tables_exist(rule: str, reference: str):
    headings, listed = _listed()
    for section in re.findall(r"section '([^']+)'", reference):
        assert section in headings, f"{rule}: no section {section!r} in the review"
    for label in re.findall(r"((?:Figure \d|Table 1) '[^']+')", reference):
        number, _, title = label.partition(" '")
        assert _norm(f"{number}: {title.rstrip(chr(39))}") in listed, f"{rule}: {label}"


@pytest.mark.parametrize(("rule", "reference"), REFERENCES)
def test_quoted_sentences_are_the_reviews_own(rule: str, reference: str):
    _, listed = _listed()
    if "Westhafen 2025" not in reference:
        return
    for quote in re.findall(r'"([^"]+)"', reference):
        assert _norm(quote) in listed, f"{rule}: not a sentence of the review: {quote!r}"


def test_consensus_papers_carry_volume_and_pages():
    refs = " ".join(reference for _, reference in REFERENCES)
    assert "Blood 2023;142(10):865-877" in refs
    assert "Transplant Cell Ther 2023;29(7):438.e1-438.e16" in refs
