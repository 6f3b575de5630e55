"""Just enough PromQL lexing to check which metrics and labels an expression uses.

Used by the dashboard and rule tests: every ``carwatch_*`` name in a Grafana ``expr`` or an
alerting rule must be a sample name that :class:`streams.metrics.PipelineMetrics` exports, every
label matcher must name a label of that metric, and every literal ``=`` value of a bounded label
must be one of ``ALLOWED_LABEL_VALUES``. Grafana variables (``$instance``, ``$__rate_interval``)
may stand in strings and ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import PipelineMetrics

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![A-Za-z0-9_]))
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)

#: Keywords followed by a parenthesised label list.
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Word operators and literals that are not metric names.
WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
#: Aggregation operators: `sum by (job) (...)` puts the grouping between name and parenthesis.
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)

#: Standard target labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
#: Non-carwatch metrics the rules and dashboard may use, with their labels (None: any label).
EXTERNAL_METRICS: dict[str, frozenset[str] | None] = {
    "up": TARGET_LABELS,
    "process_start_time_seconds": TARGET_LABELS,  # prometheus-client's process collector
    "ALERTS": None,  # Prometheus' own series of pending/firing alerts
}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    metric: str
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Parsed:
    selectors: list[Selector]
    #: label names in by/without/on/ignoring/group_left/group_right clauses
    grouping_labels: set[str]

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot lex PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
    return tokens


def _unquote(s: str) -> str:
    if s.startswith("`"):
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def _matching(tokens: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at ``i``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", open_):
            depth += 1
        elif tokens[j] == ("op", close):
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_!r}")


def _matchers(tokens: list[tuple[str, str]], start: int, end: int) -> list[Matcher]:
    out = []
    j = start
    while j < end:
        kind, text = tokens[j]
        if kind == "op" and text == ",":
            j += 1
            continue
        if kind not in ("ident", "string") or j + 2 >= end + 1:
            raise ValueError(f"bad label matcher near {text!r}")
        label = _unquote(text) if kind == "string" else text
        op_kind, op = tokens[j + 1]
        val_kind, value = tokens[j + 2]
        if op_kind != "op" or op not in ("=", "!=", "=~", "!~") or val_kind != "string":
            raise ValueError(f"bad label matcher {label}{op}{value}")
        out.append(Matcher(label, op, _unquote(value)))
        j += 3
    return out


def parse(expr: str) -> Parsed:
    tokens = tokenize(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "op" and text == "[":  # range or subquery: durations, Grafana variables
            i = _matching(tokens, i, "[", "]") + 1
            continue
        if kind == "op" and text == "{":  # bare selector {__name__="..."}
            end = _matching(tokens, i, "{", "}")
            ms = _matchers(tokens, i + 1, end)
            names = [m.value for m in ms if m.label == "__name__" and m.op == "="]
            if not names:
                raise ValueError(f"selector without a metric name in {expr!r}")
            selectors.append(Selector(names[0], [m for m in ms if m.label != "__name__"]))
            i = end + 1
            continue
        if kind != "ident":
            i += 1
            continue
        if text.lower() in GROUPING:
            if nxt == ("op", "("):
                end = _matching(tokens, i + 1, "(", ")")
                grouping.update(t for k, t in tokens[i + 2 : end] if k == "ident")
                i = end + 1
            else:
                i += 1
            continue
        if text.lower() in AGGREGATIONS and nxt[0] == "ident" and nxt[1].lower() in GROUPING:
            i += 1
            continue
        if text.lower() in WORDS or nxt == ("op", "("):  # operator, literal or function call
            i += 1
            continue
        selector = Selector(text)
        i += 1
        if i < len(tokens) and tokens[i] == ("op", "{"):
            end = _matching(tokens, i, "{", "}")
            selector.matchers = _matchers(tokens, i + 1, end)
            i = end + 1
        selectors.append(selector)
    return Parsed(selectors, grouping)


@dataclass(frozen=True)
class Exported:
    """What PipelineMetrics exports: sample name -> label names (without job/instance)."""

    samples: dict[str, frozenset[str]]

    @classmethod
    def from_pipeline_metrics(cls) -> Exported:
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry=registry)
        labels_by_family: dict[str, frozenset[str]] = {}
        for value in vars(metrics).values():
            if isinstance(value, MetricWrapperBase):
                labels_by_family[value._name] = frozenset(value._labelnames)
        samples: dict[str, frozenset[str]] = {}
        for family in registry.collect():
            labels = labels_by_family.get(family.name, frozenset())
            if family.type == "counter":
                samples[family.name + "_total"] = labels
            elif family.type == "gauge":
                samples[family.name] = labels
            elif family.type == "histogram":
                samples[family.name + "_bucket"] = labels | {"le"}
                samples[family.name + "_sum"] = labels
                samples[family.name + "_count"] = labels
            elif family.type == "summary":
                samples[family.name] = labels | {"quantile"}
                samples[family.name + "_sum"] = labels
                samples[family.name + "_count"] = labels
            elif family.type == "info":
                samples[family.name + "_info"] = labels
            else:
                samples[family.name] = labels
        return cls(samples)


def problems(expr: str, exported: Exported, allowed_values: dict[str, frozenset[str]]) -> list[str]:
    """Everything wrong with the metric and label references of ``expr`` (empty: fine)."""
    try:
        parsed = parse(expr)
    except ValueError as exc:
        return [str(exc)]
    out: list[str] = []
    known_labels: set[str] = set(TARGET_LABELS)
    any_label = False
    for sel in parsed.selectors:
        if sel.metric.startswith("carwatch_"):
            if sel.metric not in exported.samples:
                out.append(f"{sel.metric} is not exported by streams.metrics.PipelineMetrics")
                continue
            labels: frozenset[str] | None = exported.samples[sel.metric] | TARGET_LABELS
        elif sel.metric in EXTERNAL_METRICS:
            labels = EXTERNAL_METRICS[sel.metric]
        else:
            out.append(f"{sel.metric} is neither a carwatch_* metric nor an allowed external one")
            continue
        if labels is None:
            any_label = True
            continue
        known_labels |= labels
        for m in sel.matchers:
            if m.label not in labels:
                out.append(f"{sel.metric} has no label {m.label!r} (has {sorted(labels)})")
            elif (
                m.op == "="
                and "$" not in m.value
                and m.label in allowed_values
                and m.value not in allowed_values[m.label]
            ):
                out.append(f"{sel.metric}{{{m.label}={m.value!r}}}: not an allowed label value")
    if not any_label:
        for label in sorted(parsed.grouping_labels - known_labels):
            out.append(f"grouping label {label!r} belongs to none of the metrics used")
    return out
