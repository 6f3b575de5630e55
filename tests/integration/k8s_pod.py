"""A container of deploy/k8s run on this machine as the kubelet would run it (issue #14).

What a cluster supplies comes from the test instead:

- Kafka: a broker of its own on 127.0.0.1 (deploy/kafka's jars) with a SASL_SSL listener -- TLS
  with a certificate of a CA the test makes, SCRAM-SHA-512 with every KafkaUser of users.yaml and
  the test's password, as Strimzi's listener of kafka.yaml would. With ``acls`` the simple
  authorizer enforces each user's ACLs of users.yaml, as Strimzi's user operator would set them.
  The topics of topics.yaml are created first (one replica: the broker is alone), as the topic
  operator would have. The operators' part goes over a PLAINTEXT listener whose (anonymous) user
  is the broker's super user.
- Secrets: ``secretKeyRef`` values and the files of secret volumes come from a mapping
  (secret name, key) → value: the users' passwords, the cluster CA and whatever the test adds.
- Volumes: a mount path ``/x`` is ``<root>/x``, and every ``env`` value under a mount path moves
  with it.
- Ports: every container port is a free port of this shared machine, in the ``env`` value that
  names it (the manifests' ports are checked by tests/ops/test_k8s_manifests.py); the 0.0.0.0
  hosts are kept, and the probes are tried on 127.0.0.1.

The process gets the container's ``env`` and nothing of this machine's environment but ``PATH``.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourceType,
)

from streams.settings import Settings
from tests.integration.conftest import REPO, free_port, wait_for

K8S = REPO / "deploy" / "k8s"
KAFKA_DIR = REPO / "deploy" / "kafka"
PASSWORD = "test-only-scram-password"


def documents(filename: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / filename).read_text()) if d]


def workload_container(filename: str, name: str) -> dict[str, Any]:
    """The one container of the Deployment or StatefulSet ``name`` in ``filename``."""
    for doc in documents(filename):
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == name:
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return dict(container)
    raise AssertionError(f"deploy/k8s/{filename} has no workload {name}")


def pod_volumes(filename: str, name: str) -> list[dict[str, Any]]:
    for doc in documents(filename):
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == name:
            return list(doc["spec"]["template"]["spec"].get("volumes", []))
    raise AssertionError(f"deploy/k8s/{filename} has no workload {name}")


def declared_topics() -> dict[str, int]:
    """topicName → partitions of every KafkaTopic in topics.yaml."""
    return {
        d["spec"].get("topicName", d["metadata"]["name"]): d["spec"]["partitions"]
        for d in documents("topics.yaml")
        if d["kind"] == "KafkaTopic"
    }


def kafka_users() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents("users.yaml") if d["kind"] == "KafkaUser"}


def cluster_ca_secret() -> str:
    """The Secret Strimzi writes the cluster CA to: ``<cluster>-cluster-ca-cert``, key ca.crt."""
    (kafka,) = [d for d in documents("kafka.yaml") if d["kind"] == "Kafka"]
    return f"{kafka['metadata']['name']}-cluster-ca-cert"


# ------------------------------------------------------------------------------- the broker


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
    plain: int
    ca_file: Path

    @property
    def operator(self) -> dict[str, Any]:
        """kafka-python connection of the operators (PLAINTEXT, the super user)."""
        return {"bootstrap_servers": [f"127.0.0.1:{self.plain}"]}

    def secrets(self) -> dict[tuple[str, str], str]:
        """The Secrets Strimzi writes: each user's password, the cluster CA."""
        found = {(user, "password"): PASSWORD for user in kafka_users()}
        found[(cluster_ca_secret(), "ca.crt")] = self.ca_file.read_text()
        return found


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


def broker_properties(plain: int, controller: int, secure: int, keystore: Path, data: Path) -> str:
    return "\n".join(
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
            f"log.dirs={data}",
            "",
        ]
    )


#: kafka.yaml's ``authorization: {type: simple}`` on a KRaft cluster; the PLAINTEXT and controller
#: listeners' anonymous user stands for the operators and the brokers themselves.
AUTHORIZER = (
    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
    "super.users=User:ANONYMOUS\n"
)


@contextmanager
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """One KRaft node with a SASL_SSL (SCRAM-SHA-512) listener, the topics of topics.yaml and the
    ACLs of users.yaml enforced. The jars must be there (the ``broker``
    fixture fetches them)."""
    ca_file, keystore = make_certificates(tmp_path / "pki")
    plain, controller, secure = free_port(), free_port(), free_port()
    config = tmp_path / "server.properties"
    config.write_text(
        (KAFKA_DIR / "server.properties").read_text()
        + broker_properties(plain, controller, secure, keystore, tmp_path / "kafka-data")
        + AUTHORIZER
    )
    # one id in 64 starts with "-": as "--cluster-id ID" the tool would take it for an option
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    scram = [
        arg
        for user in kafka_users()
        for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={PASSWORD}]")
    ]
    kafka_java("kafka.tools.StorageTool", "format", "--config", str(config),
               f"--cluster-id={cluster_id}", *scram)  # fmt: skip
    log = tmp_path / "secure-broker.log"
    process = kafka_java("kafka.Kafka", str(config), log=log, popen=True)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"secure broker exited:\n{log.read_text()[-3000:]}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", secure)) == 0

        wait_for(answers, 90, "the SASL_SSL listener")
        kafka = SecureBroker(secure, plain, ca_file)
        operators(kafka)
        yield kafka
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def operators(kafka: SecureBroker) -> None:
    """What Strimzi's topic and user operators would have done before any process starts."""
    admin = KafkaAdminClient(**kafka.operator, request_timeout_ms=30_000)
    try:
        admin.create_topics(
            [NewTopic(t, p, 1) for t, p in declared_topics().items()], validate_only=False
        )
        granted = [acl for name, user in kafka_users().items() for acl in user_acls(name, user)]
        result = admin.create_acls(granted)
        assert not result["failed"], result["failed"]
    finally:
        admin.close()


def user_acls(name: str, user: dict[str, Any]) -> list[ACL]:
    """A KafkaUser's ``simple`` ACLs (allow rules on topics and groups) as Kafka ACL bindings."""
    pattern = {"literal": ACLResourcePatternType.LITERAL, "prefix": ACLResourcePatternType.PREFIXED}
    acls = []
    for rule in user["spec"]["authorization"]["acls"]:
        assert rule.get("type", "allow") == "allow" and rule.get("host", "*") == "*", rule
        resource = rule["resource"]
        assert resource["type"] in ("topic", "group"), resource
        for operation in rule["operations"]:
            acls.append(
                ACL(
                    principal=f"User:{name}",
                    host="*",
                    operation=ACLOperation[re.sub(r"(?<!^)(?=[A-Z])", "_", operation).upper()],
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(
                        ResourceType[resource["type"].upper()],
                        resource["name"],
                        pattern[resource.get("patternType", "literal")],
                    ),
                )
            )
    return acls


# ---------------------------------------------------------------------------------- the pod


@dataclass
class Pod:
    """A container's command, working directory and environment on this machine."""

    container: dict[str, Any]
    volumes: list[dict[str, Any]]
    root: Path
    kafka: SecureBroker
    secrets: Mapping[tuple[str, str], str]
    env: dict[str, str] = field(init=False)
    #: container port name → the free port it became
    ports: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = {**self.kafka.secrets(), **self.secrets}
        self._mount_volumes()
        self.ports = {p["name"]: free_port() for p in self.container["ports"]}
        self.env = self._environment()

    def _mount_volumes(self) -> None:
        """Mount points exist in a pod, with the files of their secret volumes."""
        volumes = {v["name"]: v for v in self.volumes}
        for mount in self.container["volumeMounts"]:
            directory = self.path(mount["mountPath"])
            directory.mkdir(parents=True, exist_ok=True)
            secret = volumes.get(mount["name"], {}).get("secret")  # or a claim template
            for item in (secret or {}).get("items", []):
                value = self.secrets[(secret["secretName"], item["key"])]
                (directory / item["path"]).write_text(value)

    def path(self, in_pod: str) -> Path:
        return self.root / in_pod.lstrip("/")

    def _environment(self) -> dict[str, str]:
        mounts = [m["mountPath"] for m in self.container["volumeMounts"]]
        by_number = {str(p["containerPort"]): p["name"] for p in self.container["ports"]}
        env: dict[str, str] = {}
        moved: set[str] = set()
        for entry in self.container["env"]:
            if "valueFrom" in entry:
                ref = entry["valueFrom"]["secretKeyRef"]
                env[entry["name"]] = self.secrets[(ref["name"], ref["key"])]
                continue
            value = str(entry["value"])
            if any(value.startswith(mount + "/") or value == mount for mount in mounts):
                value = str(self.path(value))
            if value in by_number:
                moved.add(by_number[value])
                value = str(self.ports[by_number[value]])
            env[entry["name"]] = value
        assert moved == set(self.ports), f"ports no setting names: {set(self.ports) - moved}"
        scheme, _, address = env["CARWATCH_BROKER_URL"].partition("://")
        assert address.rsplit(":", 1)[1] == "9093", "the TLS listener of kafka.yaml"
        env["CARWATCH_BROKER_URL"] = f"{scheme}://127.0.0.1:{self.kafka.port}"
        return env

    def settings(self) -> Settings:
        """The process's shared settings, as pydantic reads them from this environment."""
        return Settings(
            **{
                k.removeprefix("CARWATCH_").lower(): v
                for k, v in self.env.items()
                if k.startswith("CARWATCH_")
                and k.removeprefix("CARWATCH_").lower() in Settings.model_fields
            }
        )

    def run(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """``args`` (the container's command, or another one in the same pod) from the venv."""
        command = [str(Path(sys.executable).parent / args[0]), *args[1:]]
        workdir = self.path(self.container.get("workingDir", "/"))
        with log.open("wb") as out:
            return subprocess.Popen(
                command,
                cwd=workdir,
                env={"PATH": os.environ["PATH"], **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @contextmanager
    def running(self, log: Path) -> Iterator[subprocess.Popen[bytes]]:
        """The container's command, killed on the way out unless it stopped."""
        process = self.run(self.container["command"], log)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    @staticmethod
    def stop(process: subprocess.Popen[bytes], log: Path) -> None:
        """SIGTERM, as the kubelet stops a pod; the process must exit 0 within the grace period."""
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]

    def probe(self, kind: str) -> bool:
        """The container's ``kind`` probe (readinessProbe, ...) on 127.0.0.1, as the kubelet
        judges it: an HTTP status 200-399, or a TCP connection."""
        check = self.container[kind]
        if "httpGet" in check:
            get = check["httpGet"]
            url = f"http://127.0.0.1:{self.ports[get['port']]}{get['path']}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return 200 <= int(response.status) < 400
            except (urllib.error.URLError, OSError):
                return False
        with socket.socket() as connection:
            connection.settimeout(5)
            return connection.connect_ex(("127.0.0.1", self.ports[check["tcpSocket"]["port"]])) == 0
