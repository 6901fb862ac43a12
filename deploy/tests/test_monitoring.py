"""deploy/monitoring: alert rules and the Grafana dashboard use the real metric names, the
alerts the issue asks for exist, and the PodMonitoring scrapes every Sapphire pod.

No Prometheus or promtool is available offline, so PromQL is not parsed; what is checked is
structure, metric names, and balanced brackets."""

from __future__ import annotations

import json
import re

import pytest
import yaml

import policy
from conftest import REPO

MONITORING = REPO / "deploy/monitoring"

# The old platform's names, kept as they were (ARCHITECTURE.md, "Risk").
PLATFORM_METRICS = {
    "agent_margin_remaining_usd",
    "agent_margin_utilization_ratio",
    "risk_limits_breached_total",
    "portfolio_drawdown_pct",
}
# Where /metrics is written: the engine's API (gateway/src/api/*.rs, tests excluded) and the
# sink and Redis sections that `sapphire run` adds (src/run.rs).
METRIC_SOURCES = sorted(p for p in (REPO / "gateway/src/api").glob("*.rs") if p.name != "tests.rs") + [REPO / "src/run.rs"]
CODE_METRIC = re.compile(r"\b((?:agent|risk|portfolio|sapphire)_[a-z0-9_]+)\b")
# Identifiers that match the pattern but are crate names, not metrics.
NOT_METRICS = {"sapphire_core", "sapphire_gateway", "sapphire_persistence", "sapphire_agents", "sapphire_benches"}


def code_metrics() -> set[str]:
    """Every metric name the code writes, found in the sources that render /metrics."""
    names = set()
    for path in METRIC_SOURCES:
        names |= set(CODE_METRIC.findall(path.read_text()))
    return names - NOT_METRICS


KNOWN = code_metrics() | {"up"}
METRIC_TOKEN = re.compile(r"\b((?:agent|risk|portfolio|sapphire)_[a-z0-9_]+|up)\b(?!\s*\()")


def metrics_in(expr: str) -> set[str]:
    # Strings, label matchers and grouping labels are not metric names.
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    return set(METRIC_TOKEN.findall(stripped))


def bracket_problems(expr: str) -> list[str]:
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stack, pairs = [], {")": "(", "}": "{", "]": "["}
    for ch in stripped:
        if ch in "({[":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return [f"unbalanced {ch} in {expr}"]
    return [f"unclosed {stack} in {expr}"] if stack else []


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    assert doc["apiVersion"] == "monitoring.googleapis.com/v1" and doc["kind"] == "Rules"
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((MONITORING / "sapphire-dashboard.json").read_text())


def dashboard_exprs(dashboard) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_rules_are_well_formed(rules):
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["runbook"].startswith("docs/runbook.md#")
        assert bracket_problems(r["expr"]) == []
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))


def test_rules_use_only_known_metrics(rules):
    for r in rules:
        unknown = metrics_in(r["expr"]) - KNOWN
        assert not unknown, f"{r['alert']}: unknown metrics {unknown}"


def alert_on(rules, metric: str, threshold: str) -> bool:
    return any(metric in r["expr"] and re.search(rf">\s*{re.escape(threshold)}\b", r["expr"]) for r in rules)


def test_the_alerts_the_issue_asks_for(rules):
    assert alert_on(rules, "agent_margin_utilization_ratio", "0.95"), "margin utilization > 95%"
    assert alert_on(rules, "portfolio_drawdown_pct", "25"), "drawdown > 25%"
    # A stale feed: no metric carries the age of the last event yet (docs/runbook.md, "Metrics").
    assert alert_on(rules, "sapphire_sink_lag_records", "10000"), "sink lag"
    assert alert_on(rules, "sapphire_stage_latency_ns", "1000"), "latency p99 over budget"
    assert any('stage="tick_to_order"' in r["expr"] and 'quantile="0.99"' in r["expr"] for r in rules), "latency p99 over budget"
    assert any("sapphire_redis_up" in r["expr"] for r in rules), "Redis down"
    assert any("risk_limits_breached_total" in r["expr"] for r in rules)
    assert any("agent_margin_remaining_usd" in r["expr"] for r in rules)


def test_journal_disk_and_retention_alerts(rules):
    """Issue 19: the volume's use and a failing archive are alerts (the metric is written with
    or without retention, src/run.rs)."""
    by_name = {r["alert"]: r for r in rules}
    for name, metric in [("JournalDiskHigh", "sapphire_journal_disk_bytes"), ("JournalDiskCritical", "sapphire_journal_disk_bytes"),
                         ("JournalArchiveFailing", "sapphire_journal_retention_errors_total")]:
        assert name in by_name and metric in by_name[name]["expr"], name
    assert by_name["JournalDiskCritical"]["labels"]["severity"] == "critical"


# The limit_type label values the engine writes: RejectReason::label in core/src/event.rs.
LABEL_FN = re.compile(r"pub const fn label\(self\) -> &'static str \{(.*?)\n    \}", re.S)


def limit_types() -> set[str]:
    body = LABEL_FN.search((REPO / "core/src/event.rs").read_text()).group(1)
    return set(re.findall(r'=> "([a-z_]+)"', body))


def limit_types_used(exprs: list[str]) -> set[str]:
    return set().union(*(set(re.findall(r'limit_type\s*=~?\s*"([a-z_|]+)"', e)) for e in exprs)) if exprs else set()


def test_limit_types_in_monitoring_are_what_the_engine_writes(rules, dashboard):
    known = limit_types()
    assert {"agent_margin", "price_band", "reduce_only"} <= known and "agent_budget" not in known, known
    used = set()
    for value in limit_types_used([r["expr"] for r in rules] + dashboard_exprs(dashboard)):
        used |= set(value.split("|"))
    assert "agent_margin" in used, "the per-agent ladder's alert queries agent_margin"
    assert used <= known, f"limit_type values the engine never writes: {sorted(used - known)}"
    # The check can fail: the old name is not among them.
    assert limit_types_used(['risk_limits_breached_total{limit_type="agent_budget"}']) - known == {"agent_budget"}


def test_dashboard(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs(dashboard)
    used = set().union(*(metrics_in(e) for e in exprs))
    assert used <= KNOWN, used - KNOWN
    assert PLATFORM_METRICS <= used, PLATFORM_METRICS - used
    for e in exprs:
        assert bracket_problems(e) == []


def used_metrics(rules, dashboard) -> set[str]:
    return set().union(*(metrics_in(e) for e in [r["expr"] for r in rules] + dashboard_exprs(dashboard))) - {"up"}


def test_the_code_has_the_metrics_it_is_known_for():
    """The source scan finds what it must, so a change in how the code writes names cannot
    make KNOWN silently empty (and every rule then look wrong, or a typo look right)."""
    found = code_metrics()
    assert PLATFORM_METRICS <= found, PLATFORM_METRICS - found
    assert {"sapphire_events_total", "sapphire_stage_latency_ns", "sapphire_sink_lag_records", "sapphire_sink_up",
            "sapphire_redis_up", "sapphire_redis_ticks_dropped_total"} <= found
    assert "sapphire_sink_lag_seconds" not in found and "sapphire_core" not in found


def test_every_metric_used_in_monitoring_exists_in_the_code(rules, dashboard):
    """Rules and dashboard panels name only metrics that /metrics serves (the old rules used
    sapphire_sink_lag_seconds and sapphire_stage_latency_seconds, which never existed)."""
    missing = used_metrics(rules, dashboard) - code_metrics()
    assert not missing, f"deploy/monitoring uses metrics the code does not write: {sorted(missing)}"


def test_runbook_lists_every_metric(rules, dashboard):
    runbook = (REPO / "docs/runbook.md").read_text()
    for m in sorted(used_metrics(rules, dashboard) | PLATFORM_METRICS):
        assert f"`{m}`" in runbook, f"docs/runbook.md does not list {m}"


def test_pod_monitoring_scrapes_every_sapphire_pod(environments):
    docs = environments["gke"]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitoring"]
    selector = monitor["spec"]["selector"]
    port = monitor["spec"]["endpoints"][0]["port"]
    scraped = 0
    for doc, spec in policy.workloads(docs):
        labels = policy.pod_template(doc)["metadata"]["labels"]
        if doc["kind"] == "Job":
            continue
        assert policy.selector_matches(selector, labels), f"{policy.name_of(doc)} is not scraped"
        assert any(p.get("name") == port for c in spec["containers"] for p in c.get("ports", [])), policy.name_of(doc)
        scraped += 1
    assert scraped >= 4


def test_the_checks_can_fail():
    assert metrics_in('sum by (agent_id) (rate(sapphire_events_totl{shard="a"}[1m]))') - KNOWN == {"sapphire_events_totl"}
    assert bracket_problems("max(up{component=\"core\"}") != []
