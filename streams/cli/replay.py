"""``carwatch replay``: the engine offline over files (docs/architecture.md)."""

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

import click

from schemas.records import Rejection
from schemas.vocab import Outcome
from streams.cli.common import (
    UsageFailure,
    load_policy,
    parse_aware_datetime,
    policy_option,
)
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.files import FORMATS, InputItem, format_for_path, read_items
from streams.ingest.hl7.oru import Hl7Config
from streams.pipeline.replay import Replay

if TYPE_CHECKING:
    pass


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Input format for all files.")
@click.option("--alerts-out", type=click.Path(dir_okay=False, writable=True), help="NDJSON file.")
@click.option("--now", help="Clock for a final tick (ISO 8601 with zone): monitoring gaps.")
@policy_option()
@click.option(
    "--feed-timezone",
    help="IANA zone of HL7/FHIR timestamps sent without an offset (else they are rejected).",
)
def replay(
    files: tuple[str, ...],
    fmt: str | None,
    alerts_out: str | None,
    now: str | None,
    policy_path: str | None,
    feed_timezone: str | None,
) -> None:
    """Run the rule engine offline over FILES (- for stdin); alert events as NDJSON."""
    policy = load_policy(policy_path)
    clock = parse_aware_datetime(now) if now is not None else None
    with ExitStack() as stack:
        formats = [_format(name, fmt) for name in files]
        inputs = [(n, _open_input(stack, n), f) for n, f in zip(files, formats, strict=True)]
        out = (
            stack.enter_context(open(alerts_out, "w", encoding="utf-8"))
            if alerts_out
            else sys.stdout
        )
        engine = Replay(
            policy=policy,
            on_alert=lambda alert: _write_line(out, alert.model_dump_json()),
            on_reject=_report_reject,
            on_ignored=_report_ignored,
        )
        progress = _Progress() if sys.stderr.isatty() else None
        hl7, fhir = _feed_configs(feed_timezone)
        for name, stream, file_format in inputs:
            items = read_items(stream, file_format, name, policy, hl7, fhir)
            engine.feed(items if progress is None else progress.track(items, stream, name))
        engine.finish(clock)
        if progress is not None:
            progress.clear()
        out.flush()
    click.echo(f"carwatch replay: {engine.counts.summary()}", err=True)


def _write_line(out: TextIO, line: str) -> None:
    out.write(line + "\n")


def _feed_configs(timezone: str | None) -> tuple[Hl7Config, FhirConfig]:
    try:
        return Hl7Config(default_timezone=timezone), FhirConfig(default_timezone=timezone)
    except ValueError as exc:
        raise UsageFailure(f"--feed-timezone {timezone!r} is not a known IANA time zone") from exc


def _open_input(stack: ExitStack, name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    try:
        return stack.enter_context(open(name, "rb"))
    except OSError as exc:
        raise UsageFailure(f"cannot read {name}: {exc.strerror}") from exc


def _format(name: str, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    if name == "-":
        raise UsageFailure("reading stdin needs --format (ndjson, hl7 or fhir)")
    detected = format_for_path(Path(name))
    if detected is None:
        raise UsageFailure(f"cannot tell the format of {name} from its extension; use --format")
    return detected


def _report_reject(item: InputItem, rejection: Rejection) -> None:
    detail = rejection.details[0]
    where = f" ({detail.field})" if detail.field else ""
    click.echo(
        f"{item.location}: rejected: {detail.reason.value}{where}: {detail.message}", err=True
    )


def _report_ignored(item: InputItem, outcome: Outcome) -> None:
    click.echo(
        f"{item.location}: ignored: {outcome.value}: cancellation of a result that was never "
        "received (no stored result with this accession)",
        err=True,
    )


class _Progress:
    """Records/s and percent of bytes read, on a terminal only, at most twice a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0
        self.count = 0

    def track(self, items: Iterator[InputItem], stream: BinaryIO, name: str) -> Iterator[InputItem]:
        size = _size(stream)
        for item in items:
            self.count += 1
            now = time.monotonic()
            if now - self.shown >= 0.5:
                self.shown = now
                rate = self.count / max(now - self.started, 1e-9)
                percent = f" {100 * stream.tell() / size:5.1f} %" if size else ""
                sys.stderr.write(f"\r{name}:{percent} {self.count} records, {rate:,.0f} records/s ")
                sys.stderr.flush()
            yield item

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[K")


def _size(stream: BinaryIO) -> int:
    try:
        return Path(stream.name).stat().st_size if stream.seekable() else 0
    except (OSError, AttributeError, TypeError):
        return 0
