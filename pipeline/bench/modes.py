"""The modes: each measures the pipeline and, in the same run and on the same tasks, the
two baselines (multiprocessing.Pool with per-task apply_async; bare pyzmq PUSH/PULL)."""

from __future__ import annotations

from typing import Any

from pipeline.bench import baselines, cluster

PERCENTILES = {"p50_us": 50.0, "p99_us": 99.0, "p999_us": 99.9}


def run(mode: str, tasks: int, workers: int, *, scan_bytes: int = 100_000_000
        ) -> dict[str, Any]:
    if mode == "engine":
        from pipeline.bench.engine import run_engine
        return run_engine(tasks, scan_bytes=scan_bytes)
    return {"throughput": throughput, "latency": latency, "scaling": scaling}[mode](
        tasks, workers)


def throughput(tasks: int, workers: int) -> dict[str, Any]:
    pool = baselines.pool_throughput("small", {}, tasks, workers)
    zmq = baselines.zmq_throughput("small", {}, tasks, workers)
    with cluster.running(workers) as c:
        pids = {"broker": _pid(c.broker_child), "sink": _pid(c.sink_child)}
        cpu: dict[str, float] = {}
        with cluster.RssSampler(pids) as rss:
            tput = cluster.throughput(c, "small", {}, tasks, cpu=cpu)
    return {"workers": workers, "tasks_per_s": tput, "pool_tasks_per_s": pool,
            "zmq_tasks_per_s": zmq, "vs_pool": tput / pool, "vs_zmq": tput / zmq,
            "broker_rss_mb": rss.max_mb["broker"], "sink_rss_mb": rss.max_mb["sink"],
            "cpu_us_per_task": cpu}


def latency(tasks: int, workers: int) -> dict[str, Any]:
    pool = percentiles(baselines.pool_latencies("small", tasks, workers))
    zmq = percentiles(baselines.zmq_latencies("small", tasks, workers))
    relay = percentiles(baselines.relay_latencies(tasks))
    raw_relay = percentiles(baselines.raw_relay_latencies(tasks))
    with cluster.running(workers) as c:
        ours = percentiles(cluster.latencies(c, "small", tasks))
    out: dict[str, Any] = {"workers": workers, **ours}
    out.update({f"pool_{k}": v for k, v in pool.items()})
    out.update({f"zmq_{k}": v for k, v in zmq.items()})
    out.update({f"relay_{k}": v for k, v in relay.items()})
    out.update({f"raw_relay_{k}": v for k, v in raw_relay.items()})
    out["p50_vs_pool"] = ours["p50_us"] / pool["p50_us"]
    out["p50_vs_zmq"] = ours["p50_us"] / zmq["p50_us"]
    out["p50_vs_relay"] = ours["p50_us"] / relay["p50_us"]
    return out


def scaling(tasks: int, max_workers: int) -> dict[str, Any]:
    counts = worker_counts(max_workers)
    ours, pool, zmq = [], [], []
    for w in counts:
        pool.append(baselines.pool_throughput("spin", {}, tasks, w))
        zmq.append(baselines.zmq_throughput("spin", {}, tasks, w))
        with cluster.running(w) as c:
            ours.append(cluster.throughput(c, "spin", {}, tasks, warmup=4 * w))
    return {"workers": counts, "tasks_per_s": ours, "speedup": _speedup(ours),
            "pool_tasks_per_s": pool, "pool_speedup": _speedup(pool),
            "zmq_tasks_per_s": zmq, "zmq_speedup": _speedup(zmq),
            "vs_pool": [a / b for a, b in zip(ours, pool, strict=True)],
            "vs_zmq": [a / b for a, b in zip(ours, zmq, strict=True)]}


def worker_counts(max_workers: int) -> list[int]:
    """1, 2, 4, ... up to max_workers, and max_workers itself."""
    counts, w = [], 1
    while w < max_workers:
        counts.append(w)
        w *= 2
    return [*counts, max_workers]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    last = len(ordered) - 1
    return {name: ordered[min(last, round(q / 100 * last))] * 1e6
            for name, q in PERCENTILES.items()}


def _speedup(values: list[float]) -> list[float]:
    return [v / values[0] for v in values]


def _pid(child: Any) -> int:
    if child is None:
        raise cluster.BenchError("the cluster has no such process")
    return int(child.pid)
