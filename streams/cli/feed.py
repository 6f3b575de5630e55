"""``carwatch feed``: publish a synthetic cohort or an NDJSON file to the input topics."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from streams.cli.common import UsageFailure, settings_from_env

if TYPE_CHECKING:
    from streams.settings import Settings


@click.command()
@click.option("--cohort", "cohort_size", type=click.IntRange(min=1), help="Synthetic patients.")
@click.option("--file", "path", type=click.Path(dir_okay=False), help="NDJSON file to send.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Records per second.")
@click.option(
    "--not-enrolled-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Mix in never-infused patients' results (a hospital-wide feed is ~0.9).",
)
def feed(
    cohort_size: int | None, path: str | None, rate: float | None, not_enrolled_fraction: float
) -> None:
    """Publish a synthetic cohort (--cohort N) or an NDJSON file (--file) to the input topics.

    Infusions and clinical events go to the clinical topic, everything else to the labs topic,
    keyed by patient id; a patient's clinical record is flushed before the labs after it.
    """
    import json as jsonlib

    from streams import synthetic

    if (cohort_size is None) == (path is None):
        raise UsageFailure("give exactly one of --cohort N or --file PATH")
    settings = settings_from_env()
    lines: list[bytes]
    if cohort_size is not None:
        # a new prefix per run: patient ids (and accessions) of two runs never collide
        records = synthetic.cohort(cohort_size, prefix=time.strftime("SYN%H%M%S"))
        records = synthetic.hospital_feed(records, not_enrolled_fraction)
        lines = [jsonlib.dumps(r, separators=(",", ":")).encode() for r in records]
    else:
        try:
            raw_lines = Path(str(path)).read_bytes().splitlines()
        except OSError as exc:
            raise UsageFailure(f"cannot read {path}: {exc.strerror}") from exc
        lines = [line for line in raw_lines if line.strip()]
        if not_enrolled_fraction:
            filler = synthetic.hospital_labs(
                round(len(lines) * not_enrolled_fraction / (1 - not_enrolled_fraction))
            )
            lines += [jsonlib.dumps(r, separators=(",", ":")).encode() for r in filler]
    sent = _publish(settings, lines, rate)
    click.echo(f"carwatch feed: {sent.summary()}", err=True)


@dataclass
class _Sent:
    labs: int = 0
    clinical: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        total = self.labs + self.clinical
        rate = total / self.seconds if self.seconds > 0 else 0.0
        return (
            f"sent {total} records ({self.labs} to labs, {self.clinical} to clinical) "
            f"in {self.seconds:.1f} s ({rate:,.0f}/s)"
        )


def _route(line: bytes) -> tuple[bool, bytes | None]:
    """(is clinical, key) of one NDJSON line; unreadable lines go to labs without a key."""
    import json as jsonlib

    try:
        obj = jsonlib.loads(line)
    except ValueError:
        return False, None
    if not isinstance(obj, dict):
        return False, None
    patient_id = obj.get("patient_id")
    key = patient_id.strip().encode() if isinstance(patient_id, str) else None
    return obj.get("type") in ("infusion", "clinical_event"), key


def _publish(settings: "Settings", lines: list[bytes], rate: float | None) -> _Sent:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(
            acks="all", linger_ms=5, retries=5, **settings.kafka_python_config()
        )
    except KafkaError as exc:
        raise click.ClickException(
            f"cannot connect to {settings.bootstrap_servers}: {type(exc).__name__}"
        ) from exc
    sent = _Sent()
    started = time.monotonic()
    last_ms = 0
    try:
        for index, line in enumerate(lines):
            if rate is not None:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            clinical, key = _route(line)
            # Strictly increasing timestamps: the worker merges the two topics by timestamp.
            last_ms = max(int(time.time() * 1000), last_ms + 1)
            topic = settings.clinical_topic if clinical else settings.labs_topic
            producer.send(topic, value=line, key=key, timestamp_ms=last_ms)
            if clinical:
                sent.clinical += 1
                producer.flush(timeout=30)
            else:
                sent.labs += 1
        producer.flush(timeout=30)
    except KafkaError as exc:
        raise click.ClickException(f"publishing failed: {type(exc).__name__}") from exc
    finally:
        producer.close(timeout=10)
    sent.seconds = time.monotonic() - started
    return sent
