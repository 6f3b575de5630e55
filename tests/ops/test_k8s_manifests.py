"""The manifests under deploy/k8s/ would be accepted and would start (issues #5, #14).

Every document is validated offline against its schema: the Kubernetes kinds with
kubernetes-validate's strict schemas (unknown fields are errors), the Strimzi and Prometheus
Operator kinds against the CRDs vendored under tests/ops/crds/ (made strict the same way). Then
what no schema knows: all patient-data topics share one partition count, replicas 3 and
min.insync.replicas 2, no more workers than partitions, a Kafka version the Strimzi release runs,
every process has its KafkaUser with the ACLs its role needs and reads its password from that
user's Secret, every process serves metrics on the pod's address at the port its Service and
the ServiceMonitor scrape under the job the rules select, probes name real ports, every workload
has a PodDisruptionBudget, NetworkPolicies name real ports and admit only what should reach a
pod, and the PrometheusRule carries the rules of deploy/prometheus. The web's Kafka access is
derived from its code (the topics its ingester assigns, the ones it writes). That the worker and
the web really start with their manifests' environment is tests/integration/test_k8s_worker_env.py
and tests/integration/test_k8s_web_env.py.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.metrics import FHIR_GATEWAY, MLLP, WEB, WEBHOOK, WORKER
from streams.metrics import PROCESSES as ALL_PROCESSES
from streams.settings import Settings, known_variables
from streams.web.ingest import topic_names

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
CRDS = Path(__file__).resolve().parent / "crds"
RULES = REPO / "deploy/prometheus/rules/carwatch.rules.yml"
TOPICS = {"carwatch.labs", "carwatch.clinical", "carwatch.alerts", "carwatch.deadletter"}
NAMESPACE = "carwatch"
#: Kubernetes version the manifests are validated for (Strimzi 1.2 needs 1.30 or later).
KUBERNETES = "1.33"
#: Kafka versions Strimzi 1.2.0 runs (kafka-versions.yaml at its tag, `supported: true`).
STRIMZI_KAFKA_VERSIONS = {
    "4.2.0": "4.2-IV1",
    "4.2.1": "4.2-IV1",
    "4.3.0": "4.3-IV0",
    "4.3.1": "4.3-IV0",
}


def web_kafka_access() -> dict[str, set[str]]:
    """What ``carwatch web`` does on Kafka with the default topic names: it reads every topic its
    ingester assigns, and writes acknowledgements (streams/web/acks.py) and the dead letters of
    rejected alert and ack records (streams/web/ingest.py)."""
    settings = Settings.model_construct()  # defaults, whatever this machine's environment says
    access = {topic: {"Read"} for topic in topic_names(settings).values()}
    for topic in (settings.acks_topic, settings.deadletter_topic):
        access.setdefault(topic, set()).add("Write")
    return access


#: Workload name → the process's job, and its Kafka access (topic → operations it needs).
PROCESSES = {
    "carwatch-worker": (
        WORKER,
        {
            "carwatch.labs": {"Read"},
            "carwatch.clinical": {"Read"},
            "carwatch.alerts": {"Write"},
            "carwatch.deadletter": {"Write"},
            "carwatch-patient_state-changelog": {"Read", "Write"},
            "carwatch-__assignor-__leader": {"Read", "Write"},
        },
    ),
    "carwatch-mllp": (
        MLLP,
        {
            "carwatch.labs": {"Write"},
            "carwatch.deadletter": {"Write"},
            "carwatch.inbound": {"Write"},
        },
    ),
    "carwatch-fhir-gateway": (
        FHIR_GATEWAY,
        {
            "carwatch.labs": {"Write"},
            "carwatch.deadletter": {"Write"},
            "carwatch.inbound": {"Write"},
        },
    ),
    "carwatch-webhook": (WEBHOOK, {"carwatch.alerts": {"Read"}}),
    "carwatch-web": (WEB, web_kafka_access()),
}


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


def workloads() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind("StatefulSet") + of_kind("Deployment")}


def pod_spec(name: str) -> dict[str, Any]:
    return dict(workloads()[name]["spec"]["template"]["spec"])


def container(name: str) -> dict[str, Any]:
    (c,) = pod_spec(name)["containers"]
    return dict(c)


def env(name: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(name)["env"]}


@pytest.fixture(scope="module")
def worker() -> dict[str, Any]:
    return workloads()["carwatch-worker"]


# ------------------------------------------------------------------------- schemas


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the served version's openAPIV3Schema, made strict."""
    schemas = {}
    for path in CRDS.rglob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version["served"]:
                    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields become errors (the API server prunes them silently: a typo is lost)."""
    if schema.get("type") == "object" and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        schema["properties"].setdefault("apiVersion", {"type": "string"})
        schema["properties"].setdefault("kind", {"type": "string"})
        schema["properties"].setdefault("metadata", {"type": "object"})
    for value in schema.values():
        if isinstance(value, dict):
            strict(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    strict(item)
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in crd_schemas():
        validator = jsonschema.Draft7Validator(crd_schemas()[key])
        return [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
)
def test_every_manifest_is_valid_against_its_schema(doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == []


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """The check itself: a typo in a Kubernetes kind and in a custom resource is reported."""
    deployment = copy.deepcopy(workloads()["carwatch-mllp"])
    probe = deployment["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = probe
    assert schema_errors(deployment)
    kafka = copy.deepcopy(one("Kafka"))
    kafka["spec"]["kafka"]["listeners"][0]["authentification"] = {"type": "scram-sha-512"}
    assert schema_errors(kafka)
    user = copy.deepcopy(of_kind("KafkaUser")[0])
    user["spec"]["authentication"]["type"] = "scram-sha-256"  # Strimzi knows 512 only
    assert schema_errors(user)


def test_every_custom_kind_has_a_vendored_schema() -> None:
    """An operator's kind without its CRD here would skip validation silently."""
    custom = {(d["apiVersion"], d["kind"]) for _, d in DOCS if "strimzi.io" in d["apiVersion"]}
    custom |= {(d["apiVersion"], d["kind"]) for _, d in DOCS if "coreos.com" in d["apiVersion"]}
    assert custom and custom <= set(crd_schemas())


# ---------------------------------------------------------------------- the resources


def test_every_document_is_a_named_resource() -> None:
    assert DOCS, "deploy/k8s holds manifests"
    for filename, doc in DOCS:
        assert doc["metadata"]["name"], filename
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (filename, doc["kind"])
    keys = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for _, d in DOCS]
    assert len(keys) == len(set(keys)), "duplicate resources"


def test_kafka_is_kraft_with_a_version_strimzi_runs() -> None:
    kafka = one("Kafka")
    pool = one("KafkaNodePool")
    assert kafka["apiVersion"] == pool["apiVersion"] == "kafka.strimzi.io/v1"
    assert "zookeeper" not in kafka["spec"]
    version = kafka["spec"]["kafka"]["version"]
    assert STRIMZI_KAFKA_VERSIONS.get(version) == kafka["spec"]["kafka"]["metadataVersion"]
    pom = (REPO / "deploy/kafka/pom.xml").read_text()
    assert f"<kafka.version>{version}</kafka.version>" in pom, "the version the tests run"
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    config = kafka["spec"]["kafka"]["config"]
    assert int(config["min.insync.replicas"]) == 2
    assert int(config["default.replication.factor"]) == 3
    assert int(config["offsets.topic.replication.factor"]) == 3
    assert config["auto.create.topics.enable"] in (False, "false")
    assert {"topicOperator", "userOperator"} <= set(kafka["spec"]["entityOperator"])


def test_clients_reach_kafka_over_tls_as_authenticated_users_only() -> None:
    kafka = one("Kafka")["spec"]["kafka"]
    for listener in kafka["listeners"]:
        assert listener["tls"] is True, listener["name"]
        assert listener["authentication"]["type"] == "scram-sha-512", listener["name"]
    assert kafka["authorization"]["type"] == "simple"


def patient_topics() -> list[dict[str, Any]]:
    """Topics keyed by patient id (Faust's one-partition leader topic carries no patients)."""
    return [t for t in of_kind("KafkaTopic") if not topic_name(t).endswith("__assignor-__leader")]


def test_topics_partitions_equal_replicas_3_min_isr_2() -> None:
    kafka_name = one("Kafka")["metadata"]["name"]
    names = {topic_name(t) for t in of_kind("KafkaTopic")}
    assert names >= TOPICS | {"carwatch.inbound"}, f"missing: {sorted(TOPICS - names)}"
    partitions = {topic_name(t): t["spec"]["partitions"] for t in patient_topics()}
    assert len(set(partitions.values())) == 1, f"partition counts differ: {partitions}"
    for t in of_kind("KafkaTopic"):
        name = topic_name(t)
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka_name, name
        assert t["spec"]["replicas"] == 3, name
        assert int(t["spec"]["config"]["min.insync.replicas"]) == 2, name


def test_changelog_topic_is_compacted() -> None:
    changelogs = [t for t in of_kind("KafkaTopic") if topic_name(t).endswith("-changelog")]
    assert changelogs, "the patient_state changelog is declared"
    for t in changelogs:
        assert t["spec"]["config"]["cleanup.policy"] == "compact"


def test_faust_finds_the_topics_it_would_create() -> None:
    """The worker's user may not create topics: Faust's changelog and leader topics, named after
    the app id, must be declared."""
    app_id = env("carwatch-worker")["CARWATCH_APP_ID"]
    names = {topic_name(t) for t in of_kind("KafkaTopic")}
    assert {f"{app_id}-patient_state-changelog", f"{app_id}-__assignor-__leader"} <= names
    assert env("carwatch-worker")["CARWATCH_CREATE_TOPICS"] == "false"
    partitions = {t["spec"]["partitions"] for t in patient_topics()}
    assert {int(env("carwatch-worker")["CARWATCH_PARTITIONS"])} == partitions


def test_worker_replicas_do_not_exceed_partitions(worker: dict[str, Any]) -> None:
    partitions = min(t["spec"]["partitions"] for t in patient_topics())
    replicas = worker["spec"]["replicas"]
    assert 1 <= replicas <= partitions, (
        f"{replicas} workers for {partitions} partitions: the extra ones would sit idle"
    )


def test_every_long_running_process_is_deployed() -> None:
    """Each process of streams.metrics has its workload here, named after its job."""
    assert {p.job for p in ALL_PROCESSES} == {process.job for process, _ in PROCESSES.values()}
    assert set(PROCESSES) <= set(workloads())
    assert all(PROCESSES[name][0].job == name for name in PROCESSES)


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_runs_its_command_with_known_settings(name: str) -> None:
    process, _ = PROCESSES[name]
    c = container(name)
    assert c["image"] == "carwatch:latest"
    assert " ".join(c["command"]).startswith(process.command), c["command"]
    unknown = {v for v in env(name) if v.startswith("CARWATCH_") and v not in known_variables()}
    assert not unknown, f"settings no process reads: {unknown}"
    assert env(name)["CARWATCH_BROKER_URL"] == "kafka://carwatch-kafka-bootstrap.carwatch.svc:9093"


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_is_a_kafka_user_with_the_acls_of_its_role(name: str) -> None:
    _, needs = PROCESSES[name]
    settings = env(name)
    users = {u["metadata"]["name"]: u for u in of_kind("KafkaUser")}
    user = users[settings["CARWATCH_SASL_USERNAME"]]
    assert settings["CARWATCH_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    # Strimzi writes the password to a Secret named like the user
    assert settings["CARWATCH_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": user["metadata"]["name"], "key": "password"}
    }
    # the CA file comes from the cluster CA Secret, mounted where the setting says
    mounts = {m["mountPath"]: m["name"] for m in container(name)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(name)["volumes"]}
    ca_dir, ca_file = settings["CARWATCH_SSL_CAFILE"].rsplit("/", 1)
    secret = volumes[mounts[ca_dir]]["secret"]
    assert secret["secretName"] == f"{one('Kafka')['metadata']['name']}-cluster-ca-cert"
    assert {"key": "ca.crt", "path": ca_file} in secret["items"]
    granted: dict[str, set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if resource["type"] != "topic":
            continue
        for topic in needs:
            literal = resource["patternType"] == "literal" and topic == resource["name"]
            prefix = resource["patternType"] == "prefix" and topic.startswith(resource["name"])
            if literal or prefix:
                granted.setdefault(topic, set()).update(acl["operations"])
    declared = {topic_name(t) for t in of_kind("KafkaTopic")}
    for topic, operations in needs.items():
        assert operations | {"Describe"} <= granted.get(topic, set()), (name, topic)
        assert topic in declared, f"{name} uses {topic}, which topics.yaml does not declare"
    all_operations = {
        op for acl in user["spec"]["authorization"]["acls"] for op in acl["operations"]
    }
    assert not all_operations & {"Create", "Delete", "Alter", "All"}, name


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_serves_metrics_where_probes_and_the_servicemonitor_look(name: str) -> None:
    process, _ = PROCESSES[name]
    settings = env(name)
    host_variable, port_variable = process.metrics_variables
    assert settings[host_variable] == "0.0.0.0", "127.0.0.1 is unreachable in a pod"
    ports = {p["name"]: p["containerPort"] for p in container(name)["ports"]}
    assert ports["metrics"] == int(settings[port_variable]) == process.metrics_port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container(name):
            check = container(name)[probe]
            port = (check.get("httpGet") or check.get("tcpSocket"))["port"]
            assert port in ports, (name, probe, port)
    assert "livenessProbe" in container(name) and "readinessProbe" in container(name)
    monitor = one("ServiceMonitor")
    scraped = [
        s
        for s in of_kind("Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
        and selects(
            s["spec"]["selector"], workloads()[name]["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert len(scraped) == 1, f"{name}: {len(scraped)} metrics Services"
    (service,) = scraped
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == process.job
    (metrics_port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert metrics_port["targetPort"] == "metrics"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_services_select_pods_and_name_their_ports() -> None:
    pods = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workloads().items()}
    for service in of_kind("Service"):
        name = service["metadata"]["name"]
        chosen = [w for w, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert len(chosen) == 1, f"{name} selects {chosen}"
        ports = {p["name"] for p in container(chosen[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, name
    worker = workloads()["carwatch-worker"]
    headless = {s["metadata"]["name"]: s for s in of_kind("Service")}[worker["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"


def test_rocksdict_store_is_on_a_per_pod_volume(worker: dict[str, Any]) -> None:
    templates = {t["metadata"]["name"]: t for t in worker["spec"]["volumeClaimTemplates"]}
    c = container("carwatch-worker")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert templates["state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert env("carwatch-worker")["CARWATCH_STORE"] == "rocksdb://"
    assert env("carwatch-worker")["CARWATCH_DATA_DIR"].startswith(mounts["state"] + "/")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_workload_has_a_disruption_budget() -> None:
    budgets = of_kind("PodDisruptionBudget")
    for name, workload in workloads().items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, name
        assert workload["spec"]["replicas"] > mine[0]["spec"].get("minAvailable", 0), name
    worker_budget = [b for b in budgets if b["metadata"]["name"] == "carwatch-worker"]
    assert worker_budget[0]["spec"]["maxUnavailable"] == 1


def test_network_policies_deny_by_default_and_name_real_ports() -> None:
    policies = of_kind("NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in p["spec"]
    ]
    assert deny and deny[0]["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/part-of": "carwatch"}
    }
    for policy in policies:
        for name, workload in workloads().items():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            selector = policy["spec"]["podSelector"]
            if not pod_selected(selector, labels):
                continue
            ports = {p["name"] for p in container(name)["ports"]}
            for rule in policy["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    assert port["port"] in ports, (policy["metadata"]["name"], name)
    # every workload can be scraped by Prometheus
    scrape = [p for p in policies if p["metadata"]["name"] == "carwatch-allow-prometheus"]
    assert scrape and all(
        pod_selected(scrape[0]["spec"]["podSelector"], w["spec"]["template"]["metadata"]["labels"])
        for w in workloads().values()
    )


def policies_of(name: str, direction: str) -> list[dict[str, Any]]:
    """The rules of every NetworkPolicy of ``direction`` (ingress, egress) that selects ``name``."""
    labels = workloads()[name]["spec"]["template"]["metadata"]["labels"]
    return [
        rule
        for p in of_kind("NetworkPolicy")
        if pod_selected(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get(direction, [])
    ]


def test_the_web_talks_to_kafka_and_dns_only() -> None:
    kafka = {
        "podSelector": {"matchLabels": {"strimzi.io/cluster": one("Kafka")["metadata"]["name"]}}
    }
    egress = policies_of("carwatch-web", "egress")
    assert [r["to"] for r in egress if r["to"] != [kafka]] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    ]
    ports = {(port["port"], port["protocol"]) for r in egress for port in r["ports"]}
    assert ports == {(9093, "TCP"), (53, "UDP"), (53, "TCP")}


def test_the_web_keeps_its_database_and_access_log_on_one_volume() -> None:
    """SQLite and the access log are files one process writes: one replica, the old pod gone
    before the new one mounts the ReadWriteOnce claim; the users come from a Secret."""
    web = workloads()["carwatch-web"]
    assert web["spec"]["replicas"] == 1
    assert web["spec"]["strategy"] == {"type": "Recreate"}
    settings = env("carwatch-web")
    volumes = {v["name"]: v for v in pod_spec("carwatch-web")["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container("carwatch-web")["volumeMounts"]}
    claim = volumes[mounts[settings["CARWATCH_UI_DATA_DIR"]]]["persistentVolumeClaim"]
    claims = {c["metadata"]["name"]: c for c in of_kind("PersistentVolumeClaim")}
    assert claims[claim["claimName"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "CARWATCH_UI_DATABASE_URL" not in settings, "the SQLite file under the data dir"
    users_dir, users_file = settings["CARWATCH_UI_USERS_FILE"].rsplit("/", 1)
    users = volumes[mounts[users_dir]]["secret"]
    assert users["secretName"] == "carwatch-web-users"
    assert users_file in {item["path"] for item in users["items"]}
    assert settings["CARWATCH_CREATE_TOPICS"] == "false"


def pod_selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_prometheusrule_carries_the_same_rules() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == expected, (
        "deploy/k8s/prometheusrule.yaml is out of date: "
        "run .venv/bin/python scripts/sync-k8s-rules.py"
    )


def test_only_the_ingress_controller_reaches_the_web_pages() -> None:
    peers: dict[str, list[dict[str, Any]]] = {}
    for rule in policies_of("carwatch-web", "ingress"):
        for port in rule["ports"]:
            peers.setdefault(port["port"], []).extend(rule["from"])
    assert set(peers) == {"web", "metrics"}, peers
    assert peers["web"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
