"""``carwatch alerts tail|webhook``: follow and deliver the alert topic."""

import time
from datetime import UTC
from typing import TYPE_CHECKING

import click

from streams.cli.common import (
    UsageFailure,
    log_level_option,
    metrics_port_option,
    settings_from_env,
)

if TYPE_CHECKING:
    pass


@click.group()
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

    settings = settings_from_env()
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
@metrics_port_option()
@log_level_option()
def webhook(
    urls: tuple[str, ...],
    secret_env: str,
    group: str,
    max_events: int | None,
    idle_timeout: float | None,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Deliver alert events to webhooks: signed (HMAC-SHA256), retried, at least once."""
    import asyncio
    import os

    from streams.delivery.webhook import WebhookDeliverer, aiohttp_sender, run_webhooks
    from streams.logs import configure_logging
    from streams.metrics import WEBHOOK, DeliveryMetrics, MetricsServerError, serve_metrics

    secret = os.environ.get(secret_env)
    if not secret:
        raise UsageFailure(f"set the signing secret in ${secret_env} (never on the command line)")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise UsageFailure(f"not an http(s) URL: {bad[0]}")
    settings = settings_from_env()
    configure_logging(log_level)
    metrics = DeliveryMetrics()
    host, port = settings.metrics_address(WEBHOOK.metrics_port, metrics_port)
    try:
        port = serve_metrics(metrics.registry, host, port)
    except MetricsServerError as exc:
        raise UsageFailure(str(exc)) from exc
    click.echo(f"carwatch alerts webhook: metrics on http://{host}:{port}/metrics", err=True)

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
