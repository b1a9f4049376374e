"""Prometheus endpoints of a running cluster, scraped and parsed; JSON logs with task ids."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline import Producer, Status
from pipeline.metrics import BatchHistogram, heavy_usage

pytestmark = pytest.mark.timeout(120)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def await_scrape(port: int, done: Callable[[Samples], bool], timeout_s: float = 15) -> Samples:
    """Scrape until `done` holds (the broker refreshes its figures once a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port)
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"metrics never got there: {samples}"
        time.sleep(0.1)  # pacing between scrapes; each scrape itself is bounded


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def ports() -> dict[str, int]:
    return {role: free_port() for role in ("broker", "sink", "worker")}


def test_endpoints_report_throughput_latency_and_decisions(cluster_factory: Any,
                                                           ports: dict[str, int],
                                                           tmp_path: Path) -> None:
    env = {f"PIPELINE_METRICS_{r.upper()}_PORT": str(p) for r, p in ports.items()}
    env.update(PIPELINE_METRICS_HOST="127.0.0.1", PIPELINE_LOG_JSON="1",
               PIPELINE_LOG_LEVEL="INFO")
    cluster = cluster_factory(workers=1, env=env, log_dir=str(tmp_path / "logs")).start()
    with Producer(cluster.endpoints.frontend) as producer:
        handles = [producer.submit("increment") for _ in range(50)]
        rejected = producer.submit("put", key="x", value=1)
        failed = producer.submit("boom")
        decisions = producer.results([*handles, rejected, failed], timeout=30)
    assert [d.status for d in decisions[-2:]] == [Status.REJECTED, Status.FAILED]
    _check_sink(ports["sink"])
    _check_worker(ports["worker"])
    _check_broker(ports["broker"])
    cluster.stop()
    _check_json_log(tmp_path / "logs" / "worker.log", failed.id)


def _check_sink(port: int) -> None:
    s = await_scrape(port, lambda s: value(s, "pipeline_sink_state_version") == 50)
    assert value(s, "pipeline_sink_commits_total") == 50
    decided = sum(v for k, v in s.items() if k[0] == "pipeline_sink_decisions_total")
    assert value(s, "pipeline_sink_updates_total") == decided >= 52  # conflicts are retried
    assert value(s, "pipeline_sink_decisions_total", status="committed", level="",
                 rule="") == 50
    rejected = [k for k in s if k[0] == "pipeline_sink_decisions_total"
                and ("status", "rejected") in k[1]]
    assert rejected and ("rule", "contract") in rejected[0][1]
    assert value(s, "pipeline_sink_batch_seconds_count") == value(
        s, "pipeline_sink_batches_total") > 0
    assert value(s, "pipeline_sink_batch_size_sum") == decided
    assert value(s, "pipeline_sink_journal_sync_seconds_count") >= 1
    assert value(s, "pipeline_sink_journal_bytes") > 0
    assert ("pipeline_heavy_segments", ()) in s


def _check_worker(port: int) -> None:
    s = scrape(port)
    ran = sum(v for k, v in s.items() if k[0] == "pipeline_worker_tasks_total")
    assert value(s, "pipeline_worker_tasks_total", process="increment") >= 50
    assert value(s, "pipeline_worker_tasks_total", process="put") == 1
    assert value(s, "pipeline_worker_errors_total") == 1
    assert value(s, "pipeline_worker_task_seconds_count") == ran
    assert value(s, "pipeline_worker_task_seconds_bucket", le="+Inf") == ran


def _check_broker(port: int) -> None:
    s = await_scrape(port, lambda s: value(s, "pipeline_broker_decisions_total",
                                           status="committed") == 50)
    assert value(s, "pipeline_broker_tasks_total", event="accepted") == 52
    assert value(s, "pipeline_broker_decisions_total", status="failed") == 1
    assert value(s, "pipeline_broker_workers") == 1
    assert value(s, "pipeline_broker_in_flight") == 0
    assert value(s, "pipeline_broker_blocked_processes") == 0
    workers = [k for k in s if k[0] == "pipeline_broker_worker_credit"]
    assert len(workers) == 1 and s[workers[0]] > 0


def _check_json_log(path: Path, task_id: str) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert all({"t", "level", "logger", "pid", "msg"} <= set(r) for r in records)
    raised = [r for r in records if r.get("task") == task_id]
    assert raised and raised[0]["logger"] == "pipeline.worker"
    assert "boom" in raised[0]["msg"] and "RuntimeError" in raised[0]["msg"]


def test_metrics_are_off_by_default(cluster_factory: Any) -> None:
    cluster = cluster_factory(workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        assert producer.submit("increment").result(timeout=20).committed


def test_batch_histogram_counts_cumulatively() -> None:
    registry = CollectorRegistry()
    hist = BatchHistogram("h_seconds", "test", (0.1, 1.0), registry)
    hist.observe_many([0.05, 0.1, 0.5, 3.0])
    hist.observe_many([])
    assert registry.get_sample_value("h_seconds_bucket", {"le": "0.1"}) == 2
    assert registry.get_sample_value("h_seconds_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value("h_seconds_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("h_seconds_count") == 4
    assert registry.get_sample_value("h_seconds_sum") == pytest.approx(3.65)


def test_heavy_usage_counts_segments_and_pool(tmp_path: Path) -> None:
    ns = tmp_path / "pipeline-x"
    (ns / "pool").mkdir(parents=True)
    (ns / "1-2-3").write_bytes(b"a" * 8192)
    (ns / "pool" / "4096-1-2-4").write_bytes(b"b" * 4096)
    segments, used = heavy_usage("x", root=tmp_path)
    assert segments == 2 and used >= 12288
