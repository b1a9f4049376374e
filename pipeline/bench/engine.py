"""`pipeline bench engine`: the Rust engine alone, through its batch API.

* Audited small commits per second: pre-encoded UPDATE headers (many updates per header),
  each update writing one small value after reading the key's current version, keys
  distinct within a header, an audit recipe with two input rules on; fsync `never`, then
  fsync every 10 ms (`interval`). Every update must commit (checked).
* Array-check throughput on a 100 MB float64 array (finite + min/max): the engine's fused
  Rust scan (`pipeline._engine.scan_f64`, the kernel the array rules run, split across cores
  without the GIL) against numpy's `np.isfinite(a).all()`, `a.min()`, `a.max()`, measured
  in the same run on the same array (best of 5 each; both answers are checked).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

PROCESS = "bench"
RECIPE = f"""
[process.{PROCESS}]
level = "B"
rules = [
  {{ name = "n_positive", field = "input.n", min = 0 }},
  {{ name = "tag_short", field = "input.tag", max_len = 16 }},
]
"""
SCAN_BYTES = 100_000_000


def encode_headers(updates: int, per_header: int) -> tuple[list[bytes], int]:
    """UPDATE headers for `updates` updates; keys cycle over `per_header` keys, each read at
    the version its previous write committed, so every update commits. Returns (headers, keys)."""
    keys = per_header
    versions = [0] * keys
    headers = []
    for start in range(0, updates, per_header):
        ups = []
        for i in range(start, min(updates, start + per_header)):
            k = f"k{i % keys}"
            ups.append({"task": f"t{i}", "process": PROCESS, "attempt": 1, "worker": "w",
                        "reads": {k: versions[i % keys]}, "base": None, "data": {k: i},
                        "heavy": {}, "error": None, "signals": [], "tasks": [],
                        "args": {"n": i, "tag": "bench"}, "run_us": 1})
            versions[i % keys] = i + 1
        headers.append(msgpack.packb({"updates": ups}, use_bin_type=True))
    return headers, keys


def commits_per_s(headers: list[bytes], updates: int, keys: int, fsync: str,
                  frames_per_call: int = 8) -> float:
    from pipeline._engine import Engine

    with tempfile.TemporaryDirectory(prefix="plb-engine-") as d:
        recipe = Path(d, "recipe.toml")
        recipe.write_text(RECIPE)
        engine = Engine(str(Path(d, "journal")), fsync=fsync,  # type: ignore[arg-type]
                        fsync_interval_ms=10, recipes=str(recipe))
        try:
            engine.register(PROCESS, ["n", "tag"], [f"k{k}" for k in range(keys)])
            t0 = time.perf_counter()
            commits = 0
            for at in range(0, len(headers), frames_per_call):
                commits += engine.apply_batch(headers[at:at + frames_per_call]).commits
                engine.tick()
            engine.flush()
            elapsed = time.perf_counter() - t0
            if commits != updates or engine.version != updates:
                raise RuntimeError(f"engine bench: {commits} commits of {updates} updates")
        finally:
            engine.close()
    return updates / elapsed


def numpy_scan_gb_per_s(a: np.ndarray[Any, Any], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        ok = bool(np.isfinite(a).all())
        lo, hi = float(a.min()), float(a.max())
        best = min(best, time.perf_counter() - t0)
    if not ok or lo > hi:
        raise RuntimeError("numpy scan gave an impossible answer")
    return a.nbytes / best / 1e9


def run_engine(updates: int, per_header: int = 1000, scan_bytes: int = SCAN_BYTES
               ) -> dict[str, Any]:
    per_header = min(per_header, updates)
    headers, keys = encode_headers(updates, per_header)
    out: dict[str, Any] = {
        "updates": updates, "updates_per_header": per_header,
        "commits_per_s_fsync_never": commits_per_s(headers, updates, keys, "never"),
        "commits_per_s_fsync_10ms": commits_per_s(headers, updates, keys, "interval"),
    }
    a = np.random.default_rng(1).standard_normal(max(1, scan_bytes // 8))
    out["scan_mb"] = a.nbytes / 1e6
    out["numpy_scan_gb_per_s"] = numpy_scan_gb_per_s(a)
    out["scan_gb_per_s"] = rust_scan_gb_per_s(a)
    out["scan_vs_numpy"] = out["scan_gb_per_s"] / out["numpy_scan_gb_per_s"]
    return out


def rust_scan_gb_per_s(a: np.ndarray[Any, Any], repeat: int = 5) -> float:
    from pipeline._engine import scan_f64

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        finite, lo, hi = scan_f64(a)
        best = min(best, time.perf_counter() - t0)
    if not finite or (lo, hi) != (float(a.min()), float(a.max())):
        raise RuntimeError("the Rust scan gave a wrong answer")
    return a.nbytes / best / 1e9
