"""Smoke test of `pipeline bench`: every mode runs end to end with tiny sizes, prints one
JSON object with its keys, and every figure is positive (the figures themselves are not
judged here: see docs/BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.modes import percentiles, worker_counts
from pipeline.cli import main

pytestmark = pytest.mark.timeout(120)


def _bench(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _positive(result: dict, keys: list[str]) -> None:
    for key in keys:
        values = result[key] if isinstance(result[key], list) else [result[key]]
        assert values and all(v > 0 for v in values), (key, result[key])


def test_throughput(capsys):
    r = _bench(capsys, "throughput", "--tasks", "300", "--workers", "1")
    _positive(r, ["tasks_per_s", "pool_tasks_per_s", "zmq_tasks_per_s", "broker_rss_mb",
                  "sink_rss_mb"])
    assert set(r["cpu_us_per_task"]) == {"producer", "broker", "sink", "worker"}


def test_latency(capsys):
    r = _bench(capsys, "latency", "--tasks", "30", "--workers", "1")
    _positive(r, ["p50_us", "p99_us", "p999_us", "pool_p50_us", "zmq_p50_us",
                  "relay_p50_us", "raw_relay_p50_us"])
    assert r["p50_us"] <= r["p99_us"] <= r["p999_us"]
    assert r["relay_p50_us"] <= r["relay_p99_us"] <= r["relay_p999_us"]
    assert r["raw_relay_p50_us"] <= r["raw_relay_p99_us"] <= r["raw_relay_p999_us"]


def test_scaling(capsys):
    r = _bench(capsys, "scaling", "--tasks", "20", "--workers", "1")
    assert r["workers"] == [1] and r["speedup"] == [1.0]
    _positive(r, ["tasks_per_s", "speedup"])


def test_engine(capsys):
    r = _bench(capsys, "engine", "--tasks", "2000", "--scan-mb", "1")
    _positive(r, ["commits_per_s_fsync_never", "commits_per_s_fsync_10ms",
                  "numpy_scan_gb_per_s"])


def test_soak(capsys):
    r = _bench(capsys, "soak", "--tasks", "3000", "--workers", "1")
    keys = [f"{role}_rss_mb_{at}" for role in ("broker", "sink") for at in ("start", "end",
                                                                          "max")]
    _positive(r, ["tasks_per_s", *keys])
    assert r["tasks"] == 3000 and isinstance(r["flat"], bool)
    for role in ("broker", "sink"):
        assert r[f"{role}_rss_mb_max"] >= max(r[f"{role}_rss_mb_start"],
                                              r[f"{role}_rss_mb_end"])
    assert r["samples"][0][0] == 0 and r["samples"][-1][0] == 3000


def test_helpers():
    assert worker_counts(1) == [1]
    assert worker_counts(6) == [1, 2, 4, 6]
    assert worker_counts(8) == [1, 2, 4, 8]
    p = percentiles([i / 1e6 for i in range(1, 1001)])
    assert p["p50_us"] == pytest.approx(500.5, abs=1) and p["p999_us"] >= 999
