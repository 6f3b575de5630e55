"""Create the pipeline's topics before anything uses them (idempotent).

Faust creates only its own internal topics (the table changelog). A broker that auto-creates a
source topic on first use picks its own partition count, which then disagrees with the table's
and breaks co-partitioning (docs/architecture.md "Kafka and Faust facts"). So the worker, the feed and the tests call
``ensure_topics`` first: missing topics are created with the configured partition count, and an
existing topic with another count is an error with a clear message, never silently used.
"""

import logging
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.kafka_clients import require_reachable
from streams.settings import Settings

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    """Topics cannot be created or exist with the wrong partition count."""


def ensure_topics(
    settings: Settings,
    topics: Iterable[str] | None = None,
    *,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create missing ``topics`` (default: the four pipeline topics); return name → partitions.

    Retries while the broker is not reachable yet, for at most ``timeout_s`` seconds.
    """
    names = list(topics if topics is not None else settings.topics)
    wanted = partitions or settings.partitions
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _ensure(settings, names, wanted)
        except (KafkaError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise TopicError(
                    f"cannot create topics on {settings.bootstrap_servers}: {type(exc).__name__}"
                ) from exc
            time.sleep(0.5)


def _ensure(settings: Settings, names: list[str], partitions: int) -> dict[str, int]:
    require_reachable(settings.bootstrap_servers)  # else a failed client leaks its IO thread
    admin = KafkaAdminClient(
        client_id=f"{settings.app_id}-topics", **settings.kafka_python_config()
    )
    try:
        existing = _partition_counts(admin, names)
        missing = [name for name in names if name not in existing]
        if missing:
            configs = settings.topic_configs
            spec = {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": settings.replication_factor,
                    **({"configs": configs[name]} if name in configs else {}),
                }
                for name in missing
            }
            with suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
                admin.create_topics(spec, raise_errors=False, wait_for_metadata=True)
            log.info("created topics %s with %d partitions", ", ".join(missing), partitions)
            admin.wait_for_topics(names, timeout_ms=15_000)
            existing = _partition_counts(admin, names)
        counts = {name: existing.get(name, 0) for name in names}
    finally:
        admin.close()
    wrong = {name: n for name, n in counts.items() if n != partitions}
    if wrong:
        listed = ", ".join(f"{name}={n}" for name, n in sorted(wrong.items()))
        raise TopicError(
            f"topics exist with another partition count than {partitions}: {listed} "
            "(co-partitioning needs the same count everywhere)"
        )
    return counts


def _partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    described: list[dict[str, Any]] = admin.describe_topics(names)
    counts = {}
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["name"]] = len(topic["partitions"])
    return counts
