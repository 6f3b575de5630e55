"""The worker starts with exactly the environment deploy/k8s/worker.yaml gives it (issue #14).

The StatefulSet's container is run as Kubernetes would run it (tests/integration/k8s_pod.py): its
command (``carwatch worker`` from the venv), its working directory and every ``env`` entry, against
a broker like Strimzi's (SASL_SSL, SCRAM-SHA-512, the ACLs of users.yaml enforced), with free ports
and the volumes under the test's directory.

The worker must come up with the rocksdb:// store (rocksdict), report "Worker ready", answer its
probes, consume a record published over SASL_SSL, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.integration.conftest import wait_for
from tests.integration.k8s_pod import (
    Pod,
    SecureBroker,
    pod_volumes,
    workload_container,
)

pytestmark = pytest.mark.integration


def test_the_worker_starts_with_the_statefulsets_environment(
    strimzi_kafka: SecureBroker, tmp_path: Path
) -> None:
    pod = Pod(
        workload_container("worker.yaml", "carwatch-worker"),
        pod_volumes("worker.yaml", "carwatch-worker"),
        tmp_path / "pod",
        strimzi_kafka,
        {},
    )
    assert pod.env["CARWATCH_STORE"] == "rocksdb://"
    assert pod.env["CARWATCH_METRICS_HOST"] == pod.env["CARWATCH_WEB_HOST"] == "0.0.0.0"
    settings = pod.settings()
    assert settings.security_protocol == "SASL_SSL"

    log = tmp_path / "worker.log"
    with pod.running(log) as worker:

        def ready() -> bool:
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited {worker.returncode}:\n{log.read_text()[-4000:]}"
                )
            return b"Worker ready" in log.read_bytes()

        wait_for(ready, 180, "the worker to be ready")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert pod.probe(probe), probe
        assert (Path(pod.env["CARWATCH_DATA_DIR"])).is_dir(), "the store's directory"

        # a listener's write (the test writes as the operators' super user)
        producer = KafkaProducer(acks="all", **strimzi_kafka.operator)
        record = {"type": "lab_result", "patient_id": "K8S-1", "analyte": "anc", "value": 420,
                  "unit": "/uL", "collected_at": "2026-01-05T08:00:00Z", "status": "final"}  # fmt: skip
        producer.send(settings.labs_topic, key=b"K8S-1", value=json.dumps(record).encode())
        producer.flush(30)
        producer.close(10)
        metrics_url = f"http://127.0.0.1:{pod.ports['metrics']}/metrics"

        def consumed() -> bool:
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                text = response.read().decode()
            return 'carwatch_messages_consumed_total{topic="carwatch.labs"} 1.0' in text

        wait_for(consumed, 60, "the record to be consumed over SASL_SSL")
        pod.stop(worker, log)
