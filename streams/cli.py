"""The ``carwatch`` command (DESIGN.md "The carwatch command").

Invalid input never produces a traceback: unusable arguments or unreadable files print one line
``carwatch: error: ...`` on stderr and exit 2.
"""

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import click

from schemas.records import Rejection
from schemas.vocab import Outcome
from streams.core.policy import DEFAULT_POLICY, Policy, PolicyError
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.files import FORMATS, InputItem, format_for_path, read_items
from streams.ingest.hl7.oru import Hl7Config
from streams.replay import Replay

if TYPE_CHECKING:
    from streams.settings import Settings

EXIT_USAGE = 2


class UsageFailure(click.ClickException):
    exit_code = EXIT_USAGE


def parse_aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageFailure(f"--now {text!r} is not an ISO 8601 date-time") from exc
    if moment.tzinfo is None:
        raise UsageFailure(f"--now {text!r} has no time zone (naive_datetime); add Z or +hh:mm")
    return moment


def load_policy(path: str | None) -> Policy:
    if path is None:
        return DEFAULT_POLICY
    try:
        return Policy.from_toml(Path(path))
    except PolicyError as exc:
        raise UsageFailure(str(exc)) from exc


@click.group()
def cli() -> None:
    """CAR-T Watch: lab monitoring after CD19 CAR T-cell therapy for B-ALL."""


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Input format for all files.")
@click.option("--alerts-out", type=click.Path(dir_okay=False, writable=True), help="NDJSON file.")
@click.option("--now", help="Clock for a final tick (ISO 8601 with zone): monitoring gaps.")
@click.option("--policy", "policy_path", help="Policy TOML file with threshold overrides.")
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


# --- network listeners: streams/listeners/mllp.py and fhir_gateway.py (docs/feeds.md) -------------

_BROKER_HELP = "Kafka URL (default: $CARWATCH_BROKER_URL, else kafka://127.0.0.1:9092)."
_TIMEOUT_HELP = "Seconds to wait for Kafka's acknowledgement before answering 'retry'."
_FEED_HELP = "TOML file with the feed's settings (Hl7Config / FhirConfig fields)."
_LEVELS = click.Choice(["debug", "info", "warning", "error"])


def _listener_options(command: Callable[..., None]) -> Callable[..., None]:
    """Options every feed listener has: Kafka, topics, feed settings, policy, metrics, logs."""
    options = [
        click.option("--broker", "broker_url", help=_BROKER_HELP),
        click.option("--labs-topic", help="Default: $CARWATCH_LABS_TOPIC, else carwatch.labs."),
        click.option(
            "--deadletter-topic",
            help="Default: $CARWATCH_DEADLETTER_TOPIC, else carwatch.deadletter.",
        ),
        click.option(
            "--publish-timeout", type=click.FloatRange(min=0.1), default=10.0, help=_TIMEOUT_HELP
        ),
        click.option("--feed-config", "feed_config_path", help=_FEED_HELP),
        click.option("--policy", "policy_path", help="Policy TOML file (plausibility limits)."),
        click.option(
            "--metrics-port", type=click.IntRange(1, 65535), help="Metrics on 127.0.0.1:PORT."
        ),
        click.option("--log-level", type=_LEVELS, default="info", show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_listener(
    name: str, run: Callable[..., None], policy_path: str | None, **options: Any
) -> None:
    from streams.listeners.publisher import ListenerSetupError

    try:
        run(
            policy=load_policy(policy_path),
            ready=lambda line: click.echo(f"carwatch {name}: {line}", err=True),
            **options,
        )
    except ListenerSetupError as exc:
        raise UsageFailure(str(exc)) from exc


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=2575, show_default=True)
@click.option("--max-frame-bytes", type=click.IntRange(min=1024), default=1024 * 1024)
@click.option(
    "--broker-down",
    type=click.Choice(["ar", "close"]),
    default="ar",
    show_default=True,
    help="While Kafka cannot confirm: answer AR (retry), or close without an ACK.",
)
@_listener_options
def mllp(policy_path: str | None, **options: Any) -> None:
    """Receive HL7 v2 ORU^R01 over MLLP; ACK AA only once Kafka has the results."""
    from streams.listeners import mllp as listener

    _run_listener("mllp", listener.main, policy_path, **options)


@cli.command("fhir-gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=8 * 1024 * 1024)
@_listener_options
def fhir_gateway(policy_path: str | None, **options: Any) -> None:
    """Receive FHIR R4 Observations and Bundles over HTTP; 2xx only once Kafka has them."""
    from streams.listeners import fhir_gateway as gateway

    _run_listener("fhir-gateway", gateway.main, policy_path, **options)


# --- the streaming pipeline: worker, feed, alerts tail (streams/app.py, agents.py) ---------------


def _settings(**overrides: Any) -> "Settings":
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageFailure(f"CARWATCH_{where.upper()}: {first['msg']}") from exc


@cli.command()
@click.option("--loglevel", type=_LEVELS, default="info", show_default=True)
def worker(loglevel: str) -> None:
    """Run the Faust worker: monitor agent, tick timer and /metrics (settings: CARWATCH_*)."""
    from streams.topics import TopicError, ensure_topics

    settings = _settings()
    try:
        settings.load_policy()
    except PolicyError as exc:
        raise UsageFailure(str(exc)) from exc
    if settings.create_topics:
        try:
            ensure_topics(settings)
        except TopicError as exc:
            raise click.ClickException(str(exc)) from exc
    sys.setswitchinterval(settings.gil_switch_interval_seconds)

    import faust

    from streams.app import app

    faust.Worker(app, loglevel=loglevel).execute_from_commandline()


@cli.command()
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
    settings = _settings()
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


@cli.group()
def alerts() -> None:
    """Alert events on the alerts topic."""


@alerts.command()
@click.option("--json", "as_json", is_flag=True, help="Print the events as NDJSON.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained event.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after N events.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop after S s.")
def tail(
    as_json: bool, from_beginning: bool, max_events: int | None, timeout: float | None
) -> None:
    """Follow the alerts topic: one line per event (time, severity, rule, action, patient).

    Re-delivered events (same ``event_id``) are printed once.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    settings = _settings()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        consumer = KafkaConsumer(
            group_id=None, enable_auto_commit=False, **settings.kafka_python_config()
        )
    except KafkaError as exc:
        raise click.ClickException(
            f"cannot connect to {settings.bootstrap_servers}: {type(exc).__name__}"
        ) from exc
    seen: set[str] = set()
    shown = 0
    try:
        partitions = consumer.partitions_for_topic(settings.alerts_topic)
        if not partitions:
            raise click.ClickException(f"topic {settings.alerts_topic} does not exist")
        assigned = [TopicPartition(settings.alerts_topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        while max_events is None or shown < max_events:
            wait_ms = 500
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            for records in consumer.poll(timeout_ms=wait_ms).values():
                for record in records:
                    line = _alert_line(record.value, as_json, seen)
                    if line is None:
                        continue
                    click.echo(line)
                    shown += 1
                    if max_events is not None and shown >= max_events:
                        break
                if max_events is not None and shown >= max_events:
                    break
    except KeyboardInterrupt:
        pass
    except KafkaError as exc:
        raise click.ClickException(
            f"reading {settings.alerts_topic}: {type(exc).__name__}"
        ) from exc
    finally:
        consumer.close()


@alerts.command()
@click.option("--url", "urls", multiple=True, required=True, help="Receiver URL (repeatable).")
@click.option(
    "--secret-env",
    default="CARWATCH_WEBHOOK_SECRET",
    show_default=True,
    help="Environment variable holding the HMAC signing secret.",
)
@click.option("--group", default="carwatch-webhooks", show_default=True, help="Consumer group.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after N events.")
@click.option("--idle-timeout", type=click.FloatRange(min=1), help="Stop after S idle seconds.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Metrics on 127.0.0.1:PORT.")
def webhook(
    urls: tuple[str, ...],
    secret_env: str,
    group: str,
    max_events: int | None,
    idle_timeout: float | None,
    metrics_port: int | None,
) -> None:
    """Deliver alert events to webhooks: signed (HMAC-SHA256), retried, at least once."""
    import asyncio
    import os

    from prometheus_client import CollectorRegistry, start_http_server

    from streams.delivery.webhook import WebhookDeliverer, aiohttp_sender, run_webhooks
    from streams.metrics import PipelineMetrics

    secret = os.environ.get(secret_env)
    if not secret:
        raise UsageFailure(f"set the signing secret in ${secret_env} (never on the command line)")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise UsageFailure(f"not an http(s) URL: {bad[0]}")
    settings = _settings()
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    async def run() -> int:
        send, close = aiohttp_sender()
        deliverer = WebhookDeliverer(urls=urls, secret=secret.encode(), send=send, metrics=metrics)
        try:
            return await run_webhooks(
                settings.aiokafka_config(),
                settings.alerts_topic,
                group,
                deliverer,
                max_events=max_events,
                idle_timeout_s=idle_timeout,
            )
        finally:
            await close()

    handled = asyncio.run(run())
    click.echo(f"carwatch alerts webhook: {handled} events handled", err=True)


def _alert_line(value: bytes | None, as_json: bool, seen: set[str]) -> str | None:
    from pydantic import ValidationError

    from schemas.alert import AlertEvent

    if value is None:
        return None
    try:
        alert = AlertEvent.model_validate_json(value)
    except ValidationError:
        click.echo("carwatch alerts tail: skipped a message that is not an alert event", err=True)
        return None
    if alert.event_id in seen:
        return None
    seen.add(alert.event_id)
    if as_json:
        return value.decode("utf-8", "replace").strip()
    decided = alert.decided_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{decided}  {alert.severity.value.upper():<8} {alert.rule.value:<22} "
        f"{alert.action.value:<9} {alert.patient_id}  {alert.summary}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for unusable arguments."""
    try:
        cli.main(args=argv, prog_name="carwatch", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        click.echo(f"carwatch: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"carwatch: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("carwatch: aborted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
