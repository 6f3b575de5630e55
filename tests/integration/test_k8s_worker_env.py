"""The worker and the web start with exactly the environment deploy/k8s/ gives them (issue #14).

The worker's StatefulSet container (worker.yaml) and the web's Deployment container (web.yaml) are
taken as Kubernetes would run them: its command (``carwatch worker``
from the venv), its working directory and every ``env`` entry, and nothing else of this
machine's environment but ``PATH``. What a cluster would supply comes from the test instead:

- Kafka: a broker of its own on 127.0.0.1 (deploy/kafka's jars, the session broker's fetch) with a
  SASL_SSL listener -- TLS with a certificate of a CA the test makes, SCRAM-SHA-512 with the
  worker's user and password, as Strimzi's listener and KafkaUser of kafka.yaml/users.yaml would.
  Only the bootstrap address is replaced; the topics of topics.yaml are created first (with one
  replica: the broker is alone), as the topic operator would have.
- Secrets and volumes: ``secretKeyRef`` values are the test's password, files under a
  ``volumeMount`` live under the test's directory at the same relative path (the CA file).
- Ports: the metrics and web ports are free ports of this shared machine (the manifest's own are
  checked against the container ports by tests/ops/test_k8s_manifests.py); their 0.0.0.0 hosts
  are kept, and the probes' ports are tried on 127.0.0.1.

The worker must come up with the rocksdb:// store (rocksdict), report "Worker ready", answer its
probes, consume a record published over SASL_SSL, and stop cleanly on SIGTERM. The web must answer
its probes (``/healthz``), read that topic into its read model over SASL_SSL (its metrics show the
read model's lag) and stop on SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from streams.pipeline.topics import ensure_topics
from streams.settings import Settings
from streams.web.auth import hash_password
from tests.integration.conftest import REPO, Broker, free_port, wait_for

pytestmark = pytest.mark.integration

K8S = REPO / "deploy" / "k8s"
KAFKA_DIR = REPO / "deploy" / "kafka"
PASSWORD = "test-only-scram-password"


def container_of(manifest: str, kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all((K8S / manifest).read_text()):
        if doc and doc["kind"] == kind:
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return dict(container)
    raise AssertionError(f"deploy/k8s/{manifest} has no {kind}")


def worker_container() -> dict[str, Any]:
    return container_of("worker.yaml", "StatefulSet")


def web_container() -> dict[str, Any]:
    return container_of("web.yaml", "Deployment")


def sasl_user(container: dict[str, Any]) -> str:
    return str(next(e["value"] for e in container["env"] if e["name"] == "CARWATCH_SASL_USERNAME"))


def declared_topics() -> dict[str, int]:
    """topicName → partitions of every KafkaTopic in topics.yaml."""
    docs = yaml.safe_load_all((K8S / "topics.yaml").read_text())
    return {
        d["spec"].get("topicName", d["metadata"]["name"]): d["spec"]["partitions"]
        for d in docs
        if d and d["kind"] == "KafkaTopic"
    }


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and a broker certificate for 127.0.0.1 signed by it: (ca.crt, broker PEM keystore)."""
    directory.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "broker.key", "-out", "broker.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "broker.crt",
            cwd=directory)  # fmt: skip
    keystore = directory / "broker.pem"
    keystore.write_text(
        (directory / "broker.key").read_text() + (directory / "broker.crt").read_text()
    )
    return directory / "ca.crt", keystore


@dataclass
class SecureBroker:
    port: int
    ca_file: Path
    #: the SCRAM users the broker knows (the worker's and the web's KafkaUser), one password
    users: frozenset[str]


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


def kafka_java(*args: str, log: Path | None = None, popen: bool = False) -> Any:
    command = [
        java(),
        "-Xms128m",
        "-Xmx512m",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'tools-log4j2.properties'}",
        "-cp",
        f"{KAFKA_DIR / 'lib'}/*",
        *args,
    ]
    if popen:
        assert log is not None
        with log.open("wb") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
def secure_broker(broker: Broker, tmp_path: Path) -> Iterator[SecureBroker]:
    """One KRaft node with a SASL_SSL (SCRAM-SHA-512) listener; ``broker`` fetched the jars."""
    users = frozenset({sasl_user(worker_container()), sasl_user(web_container())})
    ca_file, keystore = make_certificates(tmp_path / "pki")
    plain, controller, secure = free_port(), free_port(), free_port()
    config = tmp_path / "server.properties"
    config.write_text(
        (KAFKA_DIR / "server.properties").read_text()
        + "\n".join(
            [
                "",
                f"listeners=PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller},"
                f"SASL_SSL://127.0.0.1:{secure}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                "listener.security.protocol.map="
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.location={keystore}",
                f"log.dirs={tmp_path / 'kafka-data'}",
                "",
            ]
        )
    )
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    kafka_java("kafka.tools.StorageTool", "format", "--config", str(config),
               "--cluster-id", cluster_id,
               *(arg for user in sorted(users)
                 for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={PASSWORD}]")))  # fmt: skip
    log = tmp_path / "secure-broker.log"
    process = kafka_java("kafka.Kafka", str(config), log=log, popen=True)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"secure broker exited:\n{log.read_text()[-3000:]}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", secure)) == 0

        wait_for(answers, 90, "the SASL_SSL listener")
        yield SecureBroker(secure, ca_file, users)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def manifest_environment(
    container: dict[str, Any], root: Path, kafka: SecureBroker
) -> dict[str, str]:
    """The container's env as the kubelet would set it, with the test's broker, secrets and
    volume paths, and free ports."""
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] in kafka.users and ref["key"] == "password", entry["name"]
            env[entry["name"]] = PASSWORD
            continue
        value = str(entry["value"])
        if any(value.startswith(mount + "/") or value == mount for mount in mounts):
            value = str(root) + value
        env[entry["name"]] = value
    scheme, _, address = env["CARWATCH_BROKER_URL"].partition("://")
    assert address.rsplit(":", 1)[1] == "9093", "the TLS listener of kafka.yaml"
    env["CARWATCH_BROKER_URL"] = f"{scheme}://127.0.0.1:{kafka.port}"
    for port in PORT_SETTINGS & set(env):
        env[port] = str(free_port())
    return env


#: The port settings a manifest may give: free ports here.
PORT_SETTINGS = {
    "CARWATCH_METRICS_PORT",
    "CARWATCH_WEB_PORT",
    "CARWATCH_UI_PORT",
    "CARWATCH_UI_METRICS_PORT",
}


def declare_topics(env: dict[str, str]) -> Settings:
    """The topic operator's part: every KafkaTopic of topics.yaml, over the manifest's SASL_SSL
    login (with one replica: the broker is alone); the settings the manifest's env makes."""
    settings = Settings(
        **{
            k.removeprefix("CARWATCH_").lower(): v
            for k, v in env.items()
            if k.startswith("CARWATCH_") and not k.startswith("CARWATCH_UI_")
        }
    )
    assert settings.security_protocol == "SASL_SSL"
    one_replica = settings.model_copy(update={"replication_factor": 1})
    for topic, partitions in declared_topics().items():
        ensure_topics(one_replica, [topic], partitions=partitions)
    return settings


def start(container: dict[str, Any], env: dict[str, str], cwd: Path, log: Path) -> Any:
    """The container's command from this venv, with nothing of this machine's env but PATH."""
    command = [
        str(Path(sys.executable).parent / container["command"][0]),
        *container["command"][1:],
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={"PATH": os.environ["PATH"], **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def publish_lab(settings: Settings) -> None:
    producer = KafkaProducer(acks="all", **settings.kafka_python_config())
    record = {"type": "lab_result", "patient_id": "K8S-1", "analyte": "anc", "value": 420,
              "unit": "/uL", "collected_at": "2026-01-05T08:00:00Z", "status": "final"}  # fmt: skip
    producer.send(settings.labs_topic, key=b"K8S-1", value=json.dumps(record).encode())
    producer.flush(30)
    producer.close(10)


def metrics_text(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def prepare_volumes(container: dict[str, Any], root: Path) -> None:
    """Mount points exist in a pod (the kubelet makes them); what is below them does not."""
    for mount in container["volumeMounts"]:
        (root / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)


def test_the_worker_starts_with_the_statefulsets_environment(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    container = worker_container()
    root = tmp_path / "pod"
    prepare_volumes(container, root)
    env = manifest_environment(container, root, secure_broker)
    ca_target = Path(env["CARWATCH_SSL_CAFILE"])
    ca_target.write_bytes(secure_broker.ca_file.read_bytes())
    assert env["CARWATCH_STORE"] == "rocksdb://"
    assert env["CARWATCH_METRICS_HOST"] == env["CARWATCH_WEB_HOST"] == "0.0.0.0"
    settings = declare_topics(env)
    log = tmp_path / "worker.log"
    worker = start(container, env, root / container["workingDir"].lstrip("/"), log)
    try:

        def ready() -> bool:
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited {worker.returncode}:\n{log.read_text()[-4000:]}"
                )
            return b"Worker ready" in log.read_bytes()

        wait_for(ready, 180, "the worker to be ready")
        metrics_url = f"http://127.0.0.1:{env['CARWATCH_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # liveness probe
            assert response.status == 200
        with socket.create_connection(("127.0.0.1", int(env["CARWATCH_WEB_PORT"])), 5):
            pass  # readiness probe: TCP on the web port
        assert (Path(env["CARWATCH_DATA_DIR"])).is_dir(), "the store's directory"

        publish_lab(settings)

        def consumed() -> bool:
            text = metrics_text(env["CARWATCH_METRICS_PORT"])
            return 'carwatch_messages_consumed_total{topic="carwatch.labs"} 1.0' in text

        wait_for(consumed, 60, "the record to be consumed over SASL_SSL")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def test_the_web_starts_with_the_deployments_environment(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    container = web_container()
    root = tmp_path / "pod"
    prepare_volumes(container, root)
    env = manifest_environment(container, root, secure_broker)
    Path(env["CARWATCH_SSL_CAFILE"]).write_bytes(secure_broker.ca_file.read_bytes())
    # the users Secret, as the kubelet mounts it
    Path(env["CARWATCH_UI_USERS_FILE"]).write_text(
        f'[users.nurse]\nname = "Nurse"\npassword_hash = "{hash_password("x" * 12)}"\n'
    )
    assert env["CARWATCH_UI_HOST"] == env["CARWATCH_UI_METRICS_HOST"] == "0.0.0.0"
    assert env["CARWATCH_CREATE_TOPICS"] == "false", "its KafkaUser may not create topics"
    settings = declare_topics(env)
    publish_lab(settings)
    log = tmp_path / "web.log"
    web = start(container, env, root, log)
    try:

        def healthy() -> bool:
            if web.poll() is not None:
                raise AssertionError(f"web exited {web.returncode}:\n{log.read_text()[-4000:]}")
            url = f"http://127.0.0.1:{env['CARWATCH_UI_PORT']}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # both probes
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(healthy, 120, "the web's /healthz")
        assert Path(env["CARWATCH_UI_DATA_DIR"], "web.db").is_file(), "the read model on the volume"

        seen = [""]

        def read() -> bool:
            text = seen[0] = metrics_text(env["CARWATCH_UI_METRICS_PORT"])
            read = (
                'carwatch_readmodel_events_total{outcome="not_enrolled",topic="carwatch.labs"} 1.0'
            )
            return (
                read in text
                and 'carwatch_readmodel_lag_messages{topic="carwatch.labs"} 0.0' in text
            )

        try:
            wait_for(read, 90, "the lab record read into the read model over SASL_SSL")
        except AssertionError as exc:
            readmodel = [line for line in seen[0].splitlines() if "readmodel" in line]
            raise AssertionError(f"{exc}\n{readmodel}\n{log.read_text()[-3000:]}") from None
        web.send_signal(signal.SIGTERM)
        web.wait(60)
    finally:
        if web.poll() is None:
            web.kill()
            web.wait(10)
