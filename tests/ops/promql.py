"""Just enough PromQL lexing to check which series an expression selects.

Used by the dashboard and rule tests: every ``carwatch_*`` selector in a Grafana ``expr``, an
alerting rule or a promtool test must name its job (``job="..."`` or ``job=~"a|b"``), and every
job it selects must export that metric -- each process serves only its own series
(streams/metrics.py), so a rule that reads a metric under another process's job can never fire.
Every label matcher must name a label of that metric, and every literal ``=`` value of a bounded
label must be one of ``ALLOWED_LABEL_VALUES``. Grafana variables (``$instance``,
``$__rate_interval``) may stand in strings and ranges.

What is exported comes either from the metric sets (``Exported.from_metric_sets``: fast, no
process) or from a real Prometheus that scraped the real processes
(``Exported.from_series``: tests/integration/test_exported_series.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import (
    FHIR_GATEWAY,
    MLLP,
    WEBHOOK,
    WORKER,
    DeliveryMetrics,
    ListenerMetrics,
    PipelineMetrics,
)

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
#: Series the rules may use that no job exports (label names; None: any label).
UNSCOPED_METRICS: dict[str, frozenset[str] | None] = {
    "ALERTS": None,  # Prometheus' own series of pending/firing alerts
}
#: The metric set each job's process serves (the clinician web's set lives in streams.web).
METRIC_SETS = {
    WORKER.job: PipelineMetrics,
    MLLP.job: ListenerMetrics,
    FHIR_GATEWAY.job: ListenerMetrics,
    WEBHOOK.job: DeliveryMetrics,
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


def sample_names(family_name: str, family_type: str) -> list[tuple[str, frozenset[str]]]:
    """The sample names of a family, with the extra label of its buckets/quantiles."""
    none: frozenset[str] = frozenset()
    if family_type == "counter":
        return [(family_name + "_total", none)]
    if family_type == "histogram":
        return [(family_name + "_bucket", frozenset({"le"})), *_sum_count(family_name)]
    if family_type == "summary":
        return [(family_name, frozenset({"quantile"})), *_sum_count(family_name)]
    if family_type == "info":
        return [(family_name + "_info", none)]
    return [(family_name, none)]


def _sum_count(name: str) -> list[tuple[str, frozenset[str]]]:
    return [(name + "_sum", frozenset()), (name + "_count", frozenset())]


@dataclass(frozen=True)
class Exported:
    """(sample name, job) → label names (without job/instance) of what the processes export."""

    pairs: dict[tuple[str, str], frozenset[str]]

    @property
    def jobs(self) -> frozenset[str]:
        return frozenset(job for _, job in self.pairs)

    @classmethod
    def from_metric_sets(cls) -> Exported:
        """Every family each job's metric set declares, its process collector, and ``up``."""
        pairs: dict[tuple[str, str], frozenset[str]] = {}
        for job, metric_set in METRIC_SETS.items():
            registry = CollectorRegistry()
            metrics = metric_set(registry)
            ProcessCollector(registry=registry)
            labels = {
                value._name: frozenset(value._labelnames)
                for value in vars(metrics).values()
                if isinstance(value, MetricWrapperBase)
            }
            for family in registry.collect():
                own = labels.get(family.name, frozenset())
                for name, extra in sample_names(family.name, family.type):
                    pairs[(name, job)] = own | extra
            pairs[("up", job)] = frozenset()
        pairs[("up", "prometheus")] = frozenset()  # Prometheus scrapes itself (prometheus.yml)
        return cls(pairs)

    @classmethod
    def from_series(cls, series: Iterable[Mapping[str, str]]) -> Exported:
        """From Prometheus' ``/api/v1/series`` answer: what was really scraped, by job."""
        pairs: dict[tuple[str, str], set[str]] = {}
        for labels in series:
            key = (labels["__name__"], labels["job"])
            pairs.setdefault(key, set()).update(set(labels) - TARGET_LABELS - {"__name__"})
        return cls({key: frozenset(names) for key, names in pairs.items()})


def selected_jobs(selector: Selector, jobs: frozenset[str]) -> tuple[set[str], str | None]:
    """The known jobs a selector's ``job`` matcher selects, or a problem."""
    matchers = [m for m in selector.matchers if m.label == "job"]
    if not matchers:
        return set(), f"{selector.metric} names no job: say which process's series it reads"
    chosen = set(jobs)
    for m in matchers:
        if m.op == "=":
            chosen &= {m.value}
        elif m.op == "=~":
            chosen &= {job for job in jobs if re.fullmatch(m.value, job)}
        else:
            return set(), f"{selector.metric}{{job{m.op}...}}: select jobs with = or =~"
    if not chosen:
        return set(), f"{selector.metric}: job matcher selects none of {sorted(jobs)}"
    return chosen, None


def problems(expr: str, exported: Exported, allowed_values: dict[str, frozenset[str]]) -> list[str]:
    """Everything wrong with the series ``expr`` selects (empty: fine)."""
    try:
        parsed = parse(expr)
    except ValueError as exc:
        return [str(exc)]
    out: list[str] = []
    known_labels: set[str] = set(TARGET_LABELS)
    any_label = False
    for sel in parsed.selectors:
        if sel.metric in UNSCOPED_METRICS and UNSCOPED_METRICS[sel.metric] is None:
            any_label = True
            continue
        jobs, problem = selected_jobs(sel, exported.jobs)
        if problem is not None:
            out.append(problem)
            continue
        missing = sorted(job for job in jobs if (sel.metric, job) not in exported.pairs)
        for job in missing:
            out.append(f'{sel.metric}{{job="{job}"}} is exported by no process')
        if missing:
            continue
        labels = frozenset().union(*(exported.pairs[(sel.metric, job)] for job in jobs))
        labels |= TARGET_LABELS
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
