"""Throughput of Engine.apply_batch: audited small commits per second (prints figures).

Usage: python engine-rs/bench_engine.py [n_updates] [batch_size]
Each update writes one small value to its own key after reading it (key-level CAS), so
every update commits; the run checks that the engine's version equals the commit count.
"""

import sys
import tempfile
import time

import msgpack

from pipeline._engine import Engine


def frames(n: int, batch: int, keys: int) -> list[list[bytes]]:
    """Batches of one frame each, `batch` updates per frame, cycling over `keys` keys."""
    versions = [0] * keys
    out = []
    for start in range(0, n, batch):
        ups = []
        for i in range(start, min(n, start + batch)):
            k = i % keys
            ups.append({"task": f"t{i}", "process": "p", "attempt": 1, "worker": "w",
                        "reads": {f"k{k}": versions[k]}, "data": {f"k{k}": i}, "run_us": 3})
            versions[k] = i + 1
        out.append([msgpack.packb({"updates": ups})])
    return out


def run(policy: str, batches: list[list[bytes]], n: int, keys: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        e = Engine(d, fsync=policy, fsync_interval_ms=10)
        e.register("p", [], [f"k{k}" for k in range(keys)])
        t0 = time.perf_counter()
        commits = sum(e.apply_batch(b).commits for b in batches)
        e.flush()
        dt = time.perf_counter() - t0
        assert commits == n == e.version, (commits, n, e.version)
        e.close()
    return n / dt


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    keys = 1000 if batch >= 1000 else batch
    batches = frames(n, batch, keys)
    for policy in ("never", "interval", "always"):
        rate = run(policy, batches, n, keys)
        print(f"fsync={policy:8s} batch={batch:5d}: {rate:12,.0f} commits/s")


if __name__ == "__main__":
    main()
