"""The Grafana dashboard and the Prometheus alerts in ops/ only use metrics workers expose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from attune_pg.worker.metrics import QueueCollector, WorkerMetrics

OPS = Path(__file__).resolve().parents[2] / "ops"
NAME = re.compile(r"\b(attune_[a-z_]+)")


def exposed() -> set[str]:
    metrics = WorkerMetrics("test:1:abc", 4)
    metrics.watch_slots(lambda: 1, 4)
    # Labelled series appear once used; touch one of each.
    metrics.executions_started.labels("w").inc()
    metrics.executions_finished.labels("w", "succeeded").inc()
    metrics.tasks_claimed.labels("a").inc()
    metrics.tasks_finished.labels("a", "succeeded").inc()
    metrics.task_duration.labels("a").observe(0.1)
    metrics.timer_fired("t")
    metrics.event_emitted("e")
    names = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.update(sample.name for sample in family.samples)
    names.update(name for _, name, _ in QueueCollector._GAUGES)
    names.add("attune_queue_up")
    return names


def test_worker_metrics_render_and_count() -> None:
    metrics = WorkerMetrics("test:1:abc", 4)
    metrics.watch_slots(lambda: 3, 4)
    text = generate_latest(metrics.registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["attune_tasks_running"] == 3.0
    assert samples["attune_worker_slots_free"] == 1.0
    assert samples["attune_worker_slots"] == 4.0


def test_dashboard_uses_only_exposed_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "attune-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in NAME.findall(target["expr"])
    }
    assert used, "no metrics in the dashboard"
    assert used <= exposed(), used - exposed()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_alerts_use_only_exposed_metrics() -> None:
    rules = yaml.safe_load((OPS / "prometheus" / "attune-alerts.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in NAME.findall(rule["expr"])
    }
    assert used and used <= exposed(), used - exposed()
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert {c["job_name"] for c in scrape["scrape_configs"]} == {
        "attune-worker",
        "attune-worker-k8s",
    }


def test_automation_hooks_count_when_metrics_are_on_and_cost_nothing_otherwise() -> None:
    from attune_pg.worker.observe import Observer

    off = Observer("w:1:a", 2)
    off.timer_fired("core.intervaltimer", 3)  # no metrics endpoint: a no-op
    off.event_emitted("core.webhook")
    on = Observer("w:1:b", 2)
    on.metrics = WorkerMetrics("w:1:b", 2)
    on.timer_fired("every_minute", 3)
    on.event_emitted("webhook")
    on.event_emitted("webhook", 2)
    registry = on.metrics.registry
    assert registry.get_sample_value("attune_timers_fired_total", {"timer": "every_minute"}) == 3
    assert registry.get_sample_value("attune_events_emitted_total", {"trigger": "webhook"}) == 3
