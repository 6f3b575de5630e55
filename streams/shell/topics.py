"""The Faust topics and table of the worker (``create_app`` declares them on its app).

- Both inputs (``carwatch.labs``, ``carwatch.clinical``) feed one agent: a patient's lab results
  and clinical events sit on the same partition number of the two topics, so one worker sees all
  of a patient's records. Values are raw bytes; the monitor decodes them.
- The table ``patient_state``: patient id (UTF-8 bytes) → ``streams.pipeline.store.pack`` bytes,
  enrolled patients only. Its changelog ``<app id>-patient_state-changelog`` is compacted (Faust
  creates it with ``cleanup.policy=compact``) and has the inputs' partition count
  (co-partitioning). With ``rocksdb://`` the rocksdict driver is named explicitly.
- Topics are created before the worker starts (``streams.pipeline.topics.ensure_topics``): Faust
  does not create source topics, and a broker that auto-creates them picks its own partition
  count (docs/architecture.md "Kafka and Faust facts").
"""

from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, AppT, TopicT

from streams.settings import Settings

TABLE = "patient_state"


@dataclass(frozen=True, slots=True)
class Topics:
    inputs: TopicT
    alerts: TopicT
    deadletter: TopicT


def declare_topics(app: AppT, settings: Settings) -> Topics:
    def raw(*names: str, **extra: Any) -> TopicT:
        return app.topic(
            *names,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            **extra,
        )

    return Topics(
        inputs=raw(settings.labs_topic, settings.clinical_topic, key_type=bytes, value_type=bytes),
        alerts=raw(settings.alerts_topic),
        deadletter=raw(settings.deadletter_topic),
    )


RecoveryCallback = Callable[[Set[TP]], Awaitable[None]]


class PatientTable(faust.Table):
    """``faust.Table`` that tells the shell when its active partitions are recovered.

    The shell then indexes the recovered patients (open alerts, tick entries) from the table
    itself: with RocksDB only the changelog's tail is replayed at start-up, so watching the
    changelog would miss every patient already on disk.
    """

    on_recovered: RecoveryCallback | None = None

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.on_recovered is not None:
            await self.on_recovered(active_tps)


def declare_table(app: AppT, settings: Settings) -> PatientTable:
    """The table (``create_app`` passes ``Table=PatientTable`` in the app's configuration)."""
    options = {"driver": "rocksdict"} if settings.store.startswith("rocksdb:") else None
    table = app.Table(
        TABLE,
        key_type=bytes,  # bytes → the "raw" serializer for keys and values
        value_type=bytes,
        partitions=settings.partitions,
        options=options,
    )
    assert isinstance(table, PatientTable)
    return table
