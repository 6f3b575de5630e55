"""The scale-out manifests under deploy/k8s/ are consistent (issue #5, docs/deploy.md).

Parses every YAML document there and checks what Kubernetes/Strimzi would only tell at deploy
time, or never: all patient-data topics share one partition count (co-partitioning with the
table changelog), replicas 3 and min.insync.replicas 2 everywhere, no more workers than
partitions, Services and the ServiceMonitor actually select the worker pods and ports, the
worker's CARWATCH_* settings, and that the PrometheusRule carries the same rules as
deploy/prometheus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
RULES = REPO / "deploy/prometheus/rules/carwatch.rules.yml"
TOPICS = {"carwatch.labs", "carwatch.clinical", "carwatch.alerts", "carwatch.deadletter"}
NAMESPACE = "carwatch"


def load_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = load_documents()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    found = of_kind(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def topic_name(topic: dict[str, Any]) -> str:
    return str(topic["spec"].get("topicName", topic["metadata"]["name"]))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def worker() -> dict[str, Any]:
    sts = [s for s in of_kind("StatefulSet") if s["metadata"]["name"] == "carwatch-worker"]
    assert len(sts) == 1
    return sts[0]


@pytest.fixture(scope="module")
def container(worker: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return c


def test_every_document_is_a_named_resource() -> None:
    assert DOCS, "deploy/k8s holds manifests"
    for filename, doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind"), filename
        assert doc["metadata"]["name"], filename
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (filename, doc["kind"])
    keys = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for _, d in DOCS]
    assert len(keys) == len(set(keys)), "duplicate resources"


def test_kafka_is_kraft_with_a_three_node_pool() -> None:
    kafka = one("Kafka")
    pool = one("KafkaNodePool")
    assert kafka["apiVersion"] == pool["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    config = kafka["spec"]["kafka"]["config"]
    assert int(config["min.insync.replicas"]) == 2
    assert int(config["default.replication.factor"]) == 3
    assert int(config["offsets.topic.replication.factor"]) == 3
    assert config["auto.create.topics.enable"] in (False, "false")
    assert "topicOperator" in kafka["spec"]["entityOperator"]


def test_topics_partitions_equal_replicas_3_min_isr_2() -> None:
    kafka_name = one("Kafka")["metadata"]["name"]
    topics = of_kind("KafkaTopic")
    names = {topic_name(t) for t in topics}
    assert names >= TOPICS, f"missing topics: {sorted(TOPICS - names)}"
    partitions = {topic_name(t): t["spec"]["partitions"] for t in topics}
    assert len(set(partitions.values())) == 1, f"partition counts differ: {partitions}"
    for t in topics:
        name = topic_name(t)
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka_name, name
        assert t["spec"]["replicas"] == 3, name
        assert int(t["spec"]["config"]["min.insync.replicas"]) == 2, name
        assert t["spec"]["partitions"] >= 1, name


def test_changelog_topic_is_compacted() -> None:
    changelogs = [t for t in of_kind("KafkaTopic") if topic_name(t).endswith("-changelog")]
    assert changelogs, "the patient_state changelog is declared"
    for t in changelogs:
        assert t["spec"]["config"]["cleanup.policy"] == "compact"


def test_worker_replicas_do_not_exceed_partitions(worker: dict[str, Any]) -> None:
    partitions = min(t["spec"]["partitions"] for t in of_kind("KafkaTopic"))
    replicas = worker["spec"]["replicas"]
    assert 1 <= replicas <= partitions, (
        f"{replicas} workers for {partitions} partitions: the extra ones would sit idle"
    )


def test_worker_runs_carwatch_worker_with_its_settings(container: dict[str, Any]) -> None:
    assert container["image"] == "carwatch:latest"
    assert container["command"] == ["carwatch", "worker"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CARWATCH_BROKER_URL"].startswith("kafka://")
    kafka = one("Kafka")
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap"
    assert bootstrap in env["CARWATCH_BROKER_URL"]
    listener_ports = {str(listener["port"]) for listener in kafka["spec"]["kafka"]["listeners"]}
    assert env["CARWATCH_BROKER_URL"].rsplit(":", 1)[1] in listener_ports
    assert env["CARWATCH_STORE"] == "rocksdict://"
    assert env["CARWATCH_METRICS_PORT"] == "9464"
    assert env["CARWATCH_WEB_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(env["CARWATCH_METRICS_PORT"])


def test_rocksdict_store_is_on_a_per_pod_volume(
    worker: dict[str, Any], container: dict[str, Any]
) -> None:
    templates = {t["metadata"]["name"]: t for t in worker["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "state" in templates and "state" in mounts
    assert templates["state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    data_dir = mounts["state"]
    assert container["workingDir"] == data_dir
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["APP_DATADIR"].startswith(data_dir + "/")


def test_services_select_the_worker_pods(worker: dict[str, Any], container: dict[str, Any]) -> None:
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert selects(worker["spec"]["selector"]["matchLabels"], pod_labels)
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    headless = services[worker["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    container_ports = {p["name"] for p in container["ports"]}
    for service in services.values():
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]
    # the metrics Service's name becomes the Prometheus job: the rules select that job
    metrics = services["carwatch-worker"]
    assert [p["name"] for p in metrics["spec"]["ports"]] == ["metrics"]


def test_servicemonitor_scrapes_the_metrics_service() -> None:
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = of_kind("Service")
    chosen = [
        s
        for s in services
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in chosen] == ["carwatch-worker"]
    service_ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_prometheusrule_carries_the_same_rules() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == expected, (
        "deploy/k8s/prometheusrule.yaml is out of date: "
        "run .venv/bin/python scripts/sync-k8s-rules.py"
    )


def test_disruption_budget_keeps_one_worker_down_at_most(worker: dict[str, Any]) -> None:
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(
        pdb["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"]
    )
