"""docker-compose.yml runs every process the way the rest of the deployment expects.

Docker is not available to the tests, so what compose would only tell at `up` is checked with
the project's own parsers: every carwatch command line parses with the real CLI, every
``CARWATCH_*`` variable is a setting some process reads, and every Prometheus job of the shipped
prometheus.yml scrapes a compose service at the port that service serves its metrics on, on all
of its container's interfaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from streams.cli import cli
from streams.metrics import FHIR_GATEWAY, MLLP, WEB, WEBHOOK, WORKER
from streams.settings import check_environment

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CARWATCH = {name: s for name, s in SERVICES.items() if s.get("image") == "carwatch:latest"}


def parse(args: list[str]) -> click.Context:
    """What ``carwatch ARGS`` would parse to (raises ``click.UsageError`` as the CLI would)."""
    command: click.Command = cli
    args = list(args)
    while isinstance(command, click.Group) and (args or not command.invoke_without_command):
        command = command.commands[args.pop(0)]
    return command.make_context(command.name or "", args)


@pytest.mark.parametrize("name", sorted(CARWATCH))
def test_every_carwatch_service_has_a_valid_command_and_known_settings(name: str) -> None:
    service = CARWATCH[name]
    parse(service.get("command", ["worker"]))
    check_environment({k: str(v) for k, v in service.get("environment", {}).items()})


@pytest.mark.parametrize("process", [WORKER, MLLP, FHIR_GATEWAY, WEBHOOK, WEB], ids=lambda p: p.job)
def test_prometheus_scrapes_each_process_of_compose(process: Any) -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    (files,) = [sd["files"] for sd in jobs[process.job]["file_sd_configs"]]
    mounted = {
        c["target"]: COMPOSE["configs"][c["source"]]["content"]
        for c in SERVICES["prometheus"]["configs"]
    }
    (content,) = [mounted[f"/etc/prometheus/{f}"] for f in files]
    (target,) = yaml.safe_load(content)[0]["targets"]
    host, port = target.split(":")
    environment = SERVICES[host]["environment"]
    assert (
        SERVICES[host].get("command", ["worker"])[: len(process.command.split()) - 1]
        == (process.command.split()[1:])
    )
    host_variable, port_variable = process.metrics_variables
    assert environment[host_variable] == "0.0.0.0"
    assert int(environment[port_variable]) == int(port) == process.metrics_port
