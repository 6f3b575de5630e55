"""``carwatch deadletter list|show|retry``: the dead-letter topic for the interface engineer.

A dead letter is named ``PARTITION:OFFSET`` on the dead-letter topic. ``retry`` re-submits what
it came from: a listener's dead letter names its whole message in the message store
(``DeadLetter.inbound``), which is parsed again with today's feed configuration and its
results published (duplicates of results already applied are ignored downstream); a dead
letter of an NDJSON record (``carwatch.labs``, replay) is decoded again and, if it now passes,
published to its input topic.
"""

import json
from datetime import timedelta
from typing import Any

import click

from streams.cli.common import (
    UsageFailure,
    feed_config_option,
    feed_configs,
    load_policy,
    parse_aware_datetime,
    policy_option,
    settings_from_env,
    since_option,
)


@click.group()
def deadletter() -> None:
    """Rejected inputs on the dead-letter topic: list, show, re-submit."""


@deadletter.command("list")
@since_option()
@click.option("--reason", help="Only this reject reason (e.g. unknown_unit).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_(since: str | None, reason: str | None, limit: int) -> None:
    """One line per dead letter: ID, received, reason, source, location (no patient data)."""
    from schemas.deadletter import DeadLetter
    from streams.listeners.inbound import read_topic

    settings = settings_from_env()
    start = parse_aware_datetime(since, "--since") if since else None
    shown = 0
    for stored in _records(read_topic, settings, settings.deadletter_topic, start):
        letter = _decode(DeadLetter, stored.value)
        if letter is None or (reason and letter.reason.value != reason):
            continue
        received = letter.received_at.isoformat() if letter.received_at else "-"
        click.echo(
            f"{stored.ref}\t{received}\t{letter.reason.value}\t{letter.source}\t"
            f"{letter.location or '-'}"
        )
        shown += 1
        if shown >= limit:
            break
    click.echo(f"carwatch deadletter: {shown} shown", err=True)


@deadletter.command()
@click.argument("letter_id", metavar="ID")
def show(letter_id: str) -> None:
    """The whole dead letter ID (PARTITION:OFFSET) as JSON, raw input included."""
    stored = _find(letter_id)
    click.echo(json.dumps(json.loads(stored.value), indent=2, ensure_ascii=False))


@deadletter.command()
@click.argument("letter_id", metavar="ID")
@feed_config_option()
@policy_option()
def retry(letter_id: str, feed_config_path: str | None, policy_path: str | None) -> None:
    """Re-submit dead letter ID with today's configuration; report what became of it."""
    import asyncio

    from schemas.deadletter import DeadLetter
    from streams.listeners.publisher import BrokerUnavailable, LabPublisher

    letter = _decode(DeadLetter, _find(letter_id).value)
    if letter is None:
        raise UsageFailure(f"{letter_id} is not a dead letter")
    settings = settings_from_env()
    hl7, fhir = feed_configs(feed_config_path, None)
    policy = load_policy(policy_path)
    topic, records, summary = _resubmission(letter, settings, hl7, fhir, policy)

    async def publish() -> None:
        async with LabPublisher(settings=settings) as publisher:
            await publisher.publish_records(topic, records)

    if records:
        try:
            asyncio.run(publish())
        except BrokerUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"carwatch deadletter retry {letter_id}: {summary}", err=True)


def _resubmission(
    letter: Any, settings: Any, hl7: Any, fhir: Any, policy: Any
) -> tuple[str, list[tuple[bytes | None, bytes]], str]:
    """(topic, records, summary) of re-submitting one dead letter."""
    from schemas.lab_result import LabResult
    from schemas.records import Rejection
    from streams.ingest.files import ndjson_outcome
    from streams.ingest.normalise import Unmapped
    from streams.listeners.inbound import Reprocessed, find_message, replan

    if letter.inbound:
        since = letter.received_at - timedelta(minutes=1) if letter.received_at else None
        stored = find_message(settings, letter.inbound, since)
        if stored is None:
            raise click.ClickException(
                f"message {letter.inbound} is no longer in {settings.inbound_topic} (retention)"
            )
        plan = replan(stored, hl7, fhir, policy)
        if plan is None:
            raise click.ClickException(f"message {letter.inbound} has an unknown content type")
        found = Reprocessed()
        found.add(plan)
        return settings.labs_topic, plan.results, found.summary()
    outcome, _ = ndjson_outcome(letter.raw.encode(), policy)
    if isinstance(outcome, Rejection):
        detail = outcome.details[0]
        return "", [], f"still rejected: {detail.reason.value}: {detail.message}"
    if isinstance(outcome, Unmapped):
        return "", [], f"not monitored: {outcome.reason}"
    topic = settings.labs_topic if isinstance(outcome, LabResult) else settings.clinical_topic
    record = (outcome.patient_id.encode(), outcome.model_dump_json().encode())
    return topic, [record], f"accepted, published to {topic}"


def _records(read: Any, settings: Any, topic: str, start: Any) -> Any:
    try:
        yield from read(settings, topic, start)
    except LookupError as exc:
        raise UsageFailure(str(exc)) from exc


def _find(letter_id: str) -> Any:
    from streams.listeners.inbound import read_topic

    partition, _, offset = letter_id.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise UsageFailure(f"{letter_id!r} is not a dead-letter ID (PARTITION:OFFSET)")
    settings = settings_from_env()
    for stored in _records(read_topic, settings, settings.deadletter_topic, None):
        if stored.partition == int(partition) and stored.offset == int(offset):
            return stored
    raise UsageFailure(f"no dead letter {letter_id} on {settings.deadletter_topic}")


def _decode(model: Any, value: bytes) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate_json(value)
    except ValidationError:
        return None
