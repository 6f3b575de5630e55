"""The clinician web starts with exactly the environment deploy/k8s/web.yaml gives it (issue #14).

The Deployment's container is run as Kubernetes would run it (tests/integration/k8s_pod.py): its
command (``carwatch web`` from the venv) and every ``env`` entry, against a broker like Strimzi's
(SASL_SSL, SCRAM-SHA-512, the ACLs of users.yaml enforced), with free ports and the volumes under
the test's directory. The users Secret the manifest asks the operator for holds one demo user.

The web must answer its probes on /healthz, export its series (the read model's lag per topic
among them), and do under its own Kafka user what its code does: read the four topics, dead-letter
a rejected alert record, publish an acknowledgement (`carwatch alerts ack` in the same pod) and
read it back; then stop cleanly on SIGTERM.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.testing import Timeline, run
from streams.web.metrics import WebMetrics
from streams.web.readmodel import Source
from tests.integration.conftest import wait_for
from tests.integration.k8s_pod import (
    Pod,
    SecureBroker,
    pod_volumes,
    workload_container,
)
from tests.integration.web.conftest import users_file

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def web_pod(kafka: SecureBroker, tmp_path: Path) -> Pod:
    users = {("carwatch-web-users", "users.toml"): users_file(tmp_path).read_text()}
    return Pod(
        workload_container("web.yaml", "carwatch-web"),
        pod_volumes("web.yaml", "carwatch-web"),
        tmp_path / "pod",
        kafka,
        users,
    )


def scrape(pod: Pod) -> tuple[set[str], Samples]:
    """Family names and samples of the web's /metrics."""
    url = f"http://127.0.0.1:{pod.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return {f.name for f in families}, samples


def events(samples: Samples, topic: str, outcome: str) -> float:
    key = ("carwatch_readmodel_events_total", (("outcome", outcome), ("topic", topic)))
    return samples.get(key, 0.0)


def test_the_web_starts_with_the_deployments_environment(
    strimzi_kafka: SecureBroker, tmp_path: Path
) -> None:
    pod = web_pod(strimzi_kafka, tmp_path)
    assert pod.env["CARWATCH_UI_HOST"] == pod.env["CARWATCH_UI_METRICS_HOST"] == "0.0.0.0"
    settings = pod.settings()
    assert settings.security_protocol == "SASL_SSL"
    assert not settings.create_topics

    log = tmp_path / "web.log"
    with pod.running(log) as web:

        def ready() -> bool:
            if web.poll() is not None:
                raise AssertionError(f"web exited {web.returncode}:\n{log.read_text()[-4000:]}")
            return pod.probe("readinessProbe")

        wait_for(ready, 60, "the web's readiness probe")
        assert pod.probe("livenessProbe")
        for kept in ("web.db", "access.log"):  # the read model and the audit log on the volume
            assert Path(pod.env["CARWATCH_UI_DATA_DIR"], kept).is_file(), kept

        # every series the web exports, the read model's lag per topic among them
        families, _ = scrape(pod)
        assert {f.name for f in WebMetrics().registry.collect()} <= families
        wait_for(
            lambda: (
                {
                    dict(labels)["topic"]
                    for (name, labels) in scrape(pod)[1]
                    if name == "carwatch_readmodel_lag_messages"
                }
                == {s.value for s in Source}
            ),
            30,
            "the lag of every topic the web reads",
        )

        # the topics' other writers (the worker, the listeners), as the operators' super user
        timeline = Timeline("K8S-WEB").infusion()
        timeline.igg(-3, 700).igg(30, 350).igg(45, 300).ferritin(-1, 400).anc(2, 300).anc(3, 0)
        alerts = run(timeline.events)
        assert alerts, "the story raises alerts"
        producer = KafkaProducer(acks="all", **strimzi_kafka.operator)
        for event in timeline.events:
            topic = settings.labs_topic if event.type == "lab_result" else settings.clinical_topic
            producer.send(topic, key=b"K8S-WEB", value=event.model_dump_json().encode())
        for alert in alerts:
            producer.send(
                settings.alerts_topic, key=b"K8S-WEB", value=alert.model_dump_json().encode()
            )
        producer.send(settings.alerts_topic, key=b"K8S-WEB", value=b"not an alert event")
        producer.flush(30)
        producer.close(10)

        def read() -> bool:
            _, samples = scrape(pod)
            lag = [
                v for (name, _), v in samples.items() if name == "carwatch_readmodel_lag_messages"
            ]
            return (
                sum(lag) == 0
                and events(samples, Source.LABS, "applied") > 0
                and events(samples, Source.CLINICAL, "applied") > 0
                and events(samples, Source.ALERTS, "applied") == len(alerts)
                and events(samples, Source.ALERTS, "rejected") == 1
            )

        wait_for(read, 60, "the web to read every topic under its ACLs")
        checker = KafkaConsumer(**strimzi_kafka.operator)
        try:
            topic = settings.deadletter_topic
            partitions = [TopicPartition(topic, p) for p in checker.partitions_for_topic(topic)]
            letters = sum(checker.end_offsets(partitions).values())
        finally:
            checker.close()
        assert letters == 1, "the rejected alert record, dead-lettered by the web"

        # an acknowledgement, as a clinician would make it with `kubectl exec ... carwatch alerts ack`
        ack = pod.run(
            ["carwatch", "alerts", "ack", alerts[0].alert_id, "--by", "k8s"], tmp_path / "ack.log"
        )
        try:
            assert ack.wait(60) == 0, (tmp_path / "ack.log").read_text()
        finally:
            if ack.poll() is None:
                ack.kill()
                ack.wait(10)
        wait_for(
            lambda: events(scrape(pod)[1], Source.ACKS, "applied") == 1,
            60,
            "the acknowledgement to come back from carwatch.acks",
        )
        pod.stop(web, log)
