"""The work one message or body costs, as plain functions run in the parse pool (a process):
parse, decide the answer, encode the Kafka records. Nothing here touches a socket or Kafka.

A job returns only what the event loop needs: the answer and the encoded ``Plan``; the parsed
message itself stays in the worker.
"""

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig, FhirParse, parse_fhir
from streams.ingest.hl7.oru import Hl7Config, Hl7Header, Hl7Message, parse_oru
from streams.ingest.jsonsafe import clean_text, load_json
from streams.listeners.fhir_answers import (
    Answer,
    Endpoint,
    Format,
    decide_response,
    read_xml,
    render,
)
from streams.listeners.hl7_ack import AckDecision, decide_ack
from streams.listeners.plans import Plan, plan_message


@dataclass(frozen=True, slots=True)
class Hl7Outcome:
    """A parsed HL7 message: what its ACK needs, its records, and the seconds parsing took."""

    control_id: str | None
    header: Hl7Header | None
    decision: AckDecision
    plan: Plan
    seconds: float


def hl7_text(payload: bytes) -> str:
    """The message as text for a dead letter (8859/1 when MSH-18 says so, else UTF-8)."""
    encoding = "latin-1" if declares_latin1(payload) else "utf-8"
    return clean_text(payload.decode(encoding, errors="replace"))


def declares_latin1(payload: bytes) -> bool:
    first = payload.lstrip(b"\x0b\r\n\t ").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return False
    parts = first.split(first[3:4], 18)
    return len(parts) > 17 and parts[17].strip().upper() == b"8859/1"


def plan_hl7(
    message: Hl7Message,
    payload: bytes,
    *,
    source: str,
    received_at: datetime,
    inbound: str | None,
) -> Plan:
    """The records of one parsed message (shared by the listener and reprocessing)."""
    return plan_message(
        message.message_rejection,
        message.items,
        lambda: hl7_text(payload),
        source=source,
        location=f"message {message.control_id or '(no MSH-10)'}",
        received_at=received_at,
        inbound=inbound,
    )


def hl7_job(
    payload: bytes,
    config: Hl7Config,
    policy: Policy,
    source: str,
    received_at: datetime,
    inbound: str | None,
) -> Hl7Outcome:
    started = time.perf_counter()
    message = parse_oru(payload, config, policy)
    plan = plan_hl7(message, payload, source=source, received_at=received_at, inbound=inbound)
    return Hl7Outcome(
        message.control_id,
        message.header,
        decide_ack(message),
        plan,
        time.perf_counter() - started,
    )


@dataclass(frozen=True, slots=True)
class FhirOutcome:
    """A handled FHIR request: its answer (status, rendered body), records, parse seconds."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    plan: Plan
    seconds: float


def read_fhir_body(body: bytes, xml: bool) -> dict[str, Any] | Rejection:
    """A request body as a JSON object, or why it is not one."""
    try:
        document = read_xml(body) if xml else load_json(body)
    except ValueError as exc:
        return Rejection.of(RejectReason.MALFORMED_FHIR, str(exc))
    if not isinstance(document, dict):
        return Rejection.of(RejectReason.MALFORMED_FHIR, "a FHIR resource is a JSON object")
    return document


def parse_fhir_body(
    body: bytes, xml: bool, endpoint: Endpoint, path: str, config: FhirConfig, policy: Policy
) -> tuple[dict[str, Any] | None, FhirParse, bool]:
    """(document, parse, sent to the wrong endpoint) of one request body."""
    document = read_fhir_body(body, xml)
    if isinstance(document, Rejection):
        return None, FhirParse(document), False
    wanted = "Observation" if endpoint == "observation" else "Bundle"
    kind = document.get("resourceType")
    if isinstance(kind, str) and kind != wanted:
        article = "an" if wanted[0] == "O" else "a"
        rejection = Rejection.of(
            RejectReason.UNSUPPORTED_MESSAGE,
            f"POST {path} takes {article} {wanted}, got resourceType {kind[:40]!r}",
            "resourceType",
        )
        return document, FhirParse(rejection), True
    return document, parse_fhir(document, config, policy), False


def plan_fhir(
    parsed: FhirParse,
    body: bytes,
    *,
    source: str,
    path: str,
    received_at: datetime,
    inbound: str | None,
) -> Plan:
    """The records of one parsed body (shared by the gateway and reprocessing)."""
    return plan_message(
        parsed.document_rejection,
        parsed.items,
        lambda: clean_text(body.decode("utf-8", errors="replace")),
        source=source,
        location=path,
        received_at=received_at,
        inbound=inbound,
    )


def fhir_job(
    body: bytes,
    xml: bool,
    answer_format: Format,
    endpoint: Endpoint,
    path: str,
    config: FhirConfig,
    policy: Policy,
    source: str,
    received_at: datetime,
    inbound: str | None,
) -> FhirOutcome:
    started = time.perf_counter()
    document, parsed, wrong = parse_fhir_body(body, xml, endpoint, path, config, policy)
    plan = plan_fhir(
        parsed, body, source=source, path=path, received_at=received_at, inbound=inbound
    )
    answer: Answer = decide_response(endpoint, document, parsed, wrong_endpoint=wrong)
    rendered, content_type = render(answer.body, answer_format)
    seconds = time.perf_counter() - started
    return FhirOutcome(answer.status, rendered, content_type, answer.headers, plan, seconds)


def warm_up(hold_s: float) -> bool:
    """Run once per pool worker at start, so no message pays the imports; holding the worker a
    moment makes the pool hand the next warm-up to another worker."""
    time.sleep(hold_s)
    return True


def lower_priority() -> None:
    """Initializer of a parse process: parsing yields the CPU to the listener's event loop and
    the broker, so a large message slows down only itself."""
    os.nice(PARSE_NICENESS)


#: How much lower a parse process is scheduled than the listener (``nice`` increment).
PARSE_NICENESS: Final = 10
