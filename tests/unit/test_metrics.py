"""Per-process metric sets (docs/runbook.md: jobs and ports): each process exports its own series, nothing else."""

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from streams.metrics import (
    DeliveryMetrics,
    IngestMetrics,
    ListenerMetrics,
    MetricsServerError,
    PipelineMetrics,
    serve_metrics,
)

SHARED = {"carwatch_results", "carwatch_rejected", "carwatch_deadletter_messages"}
WORKER_SERIES = {
    "carwatch_messages_consumed",
    "carwatch_alert_events",
    "carwatch_active_alerts",
    "carwatch_patients_monitored",
    "carwatch_collected_to_alert_seconds",
    "carwatch_received_to_alert_seconds",
    "carwatch_batch_processing_seconds",
    "carwatch_last_result_ingested_timestamp_seconds",
    "carwatch_consumer_lag_messages",
    "carwatch_table_recovery_seconds",
    "carwatch_table_recovery_in_progress",
}
LISTENER_SERIES = {
    "carwatch_code_unit_mismatch",
    "carwatch_last_result_ingested_timestamp_seconds",
    "carwatch_listener_messages",
    "carwatch_listener_connections_open",
    "carwatch_listener_connections",
    "carwatch_listener_received_bytes",
    "carwatch_listener_parse_seconds",
    "carwatch_listener_publish_failures",
    "carwatch_inbound_messages",
}
DELIVERY = {
    "carwatch_alert_deliveries",
    "carwatch_delivery_attempts",
    "carwatch_delivery_lag_messages",
}


def families(metrics: IngestMetrics | DeliveryMetrics) -> set[str]:
    return {family.name for family in metrics.registry.collect()}


@pytest.mark.parametrize(
    ("metric_set", "expected"),
    [
        (PipelineMetrics, SHARED | WORKER_SERIES),
        (ListenerMetrics, SHARED | LISTENER_SERIES),
        (DeliveryMetrics, DELIVERY),
    ],
)
def test_each_process_exports_the_contracts_names_and_no_others(
    metric_set: type[IngestMetrics] | type[DeliveryMetrics], expected: set[str]
) -> None:
    assert families(metric_set(CollectorRegistry())) == expected


def test_a_fresh_registry_per_set_by_default() -> None:
    """Two sets in one process (tests) never collide: nothing lands in a global registry."""
    assert PipelineMetrics().registry is not PipelineMetrics().registry


def test_serve_metrics_on_a_free_port_with_the_process_collector() -> None:
    metrics = DeliveryMetrics()
    port = serve_metrics(metrics.registry, "127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "carwatch_delivery_lag_messages 0.0" in text
    assert "process_start_time_seconds" in text


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError) as failure:
            serve_metrics(CollectorRegistry(), "127.0.0.1", port)
    message = str(failure.value)
    assert message.startswith(f"cannot serve metrics on 127.0.0.1:{port}: ")
    assert "\n" not in message and "in use" in message.lower()
