"""Micro benchmarks of the heavy zone (for `pipeline bench heavy`).

`bench_alloc_fill` measures what a worker pays to get a fresh output array and fill it,
in steady state (the segment comes back through export -> commit -> supersede -> pool),
against the baseline measured in the same run: a fresh numpy array filled the same way.

`bench_inline` measures the two ways a small array can travel (inline in the message, or
through a segment) over the whole worker -> sink round trip, to place the inline threshold.

Every figure is a median in milliseconds (or microseconds where named `_us`); each run
checks that the bytes that arrive are the bytes that were written.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import msgpack
import numpy as np

from pipeline.heavy import descriptor
from pipeline.heavy.allocator import HeavyAllocator
from pipeline.heavy.store import HeavyStore

KEY = "heavy.bench"


def _namespace(tag: str) -> str:
    return f"bench-{tag}-{os.getpid()}-{time.monotonic_ns()}"


def _ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _numpy_fill(shape: tuple[int, ...]) -> float:
    t0 = time.perf_counter()
    a = np.empty(shape)
    a[:] = 1.0
    dt = (time.perf_counter() - t0) * 1e3
    del a
    return dt


def _numpy_full(shape: tuple[int, ...]) -> float:
    t0 = time.perf_counter()
    a = np.full(shape, 1.0)
    dt = (time.perf_counter() - t0) * 1e3
    del a
    return dt


def _cycle(al: HeavyAllocator, store: HeavyStore, shape: tuple[int, ...]) -> tuple[float, bool]:
    """One steady-state round: alloc + fill (timed), then export, validate, commit."""
    t0 = time.perf_counter()
    a = al.alloc(shape, "float64")
    a[:] = 1.0
    dt = (time.perf_counter() - t0) * 1e3
    desc = al.export(a)
    del a
    view = store.validate(desc)
    ok = bool(view[0] == 1.0 and view[-1] == 1.0)
    del view
    store.commit(KEY, desc)
    return dt, ok


def _alloc_fill(al: HeavyAllocator, shape: tuple[int, ...]) -> None:
    al.alloc(shape).fill(1.0)


def _cold(shape: tuple[int, ...], repeat: int) -> list[float]:
    """alloc + fill of a brand-new segment (empty pool): the page faults are paid here."""
    out = []
    for _ in range(repeat):
        ns = _namespace("cold")
        store = HeavyStore(ns)
        al = HeavyAllocator(ns)
        try:
            out.append(_ms(partial(_alloc_fill, al, shape)))
        finally:
            al.close()
            store.destroy()
    return out


def _foreign(store: HeavyStore, ns: str, shape: tuple[int, ...], repeat: int) -> list[float]:
    """alloc + fill of a pooled segment this process has never mapped (another worker's)."""
    out = []
    for _ in range(repeat):
        with HeavyAllocator(ns, keep_mapped=0) as al:
            dt, _ = _cycle(al, store, shape)
            out.append(dt)
    return out


def bench_alloc_fill(size_mb: int = 100, repeat: int = 5) -> dict[str, Any]:
    """Steady-state `alloc` + fill of a float64 array of `size_mb` MB vs numpy's fill."""
    shape = (size_mb * 1_000_000 // 8,)
    ns = _namespace("fill")
    store = HeavyStore(ns)
    try:
        with HeavyAllocator(ns) as al:
            for _ in range(3):
                _cycle(al, store, shape)
            runs = [_cycle(al, store, shape) for _ in range(repeat)]
        foreign = _foreign(store, ns, shape, repeat)
    finally:
        store.destroy()
    numpy_fill = [_numpy_fill(shape) for _ in range(repeat)]
    numpy_full = [_numpy_full(shape) for _ in range(repeat)]
    alloc_fill = statistics.median(dt for dt, _ in runs)
    return {
        "size_mb": size_mb,
        "repeat": repeat,
        "alloc_fill_ms": round(alloc_fill, 3),
        "numpy_fill_ms": round(statistics.median(numpy_fill), 3),
        "numpy_full_ms": round(statistics.median(numpy_full), 3),
        "ratio": round(alloc_fill / statistics.median(numpy_fill), 3),
        "foreign_pool_alloc_fill_ms": round(statistics.median(foreign), 3),
        "cold_alloc_fill_ms": round(statistics.median(_cold(shape, min(repeat, 3))), 3),
        "correct": all(ok for _, ok in runs),
        f"alloc_fill_{size_mb}mb_ms": round(alloc_fill, 3),
        f"numpy_fill_{size_mb}mb_ms": round(statistics.median(numpy_fill), 3),
    }


def _inline_round(arr: np.ndarray, store: HeavyStore, al: HeavyAllocator) -> bool:
    wire = msgpack.packb({"heavy": {KEY: descriptor.encode_inline(arr)}}, use_bin_type=True)
    desc = msgpack.unpackb(wire, raw=False)["heavy"][KEY]
    view = store.validate(desc)
    store.commit(KEY, desc)
    return bool(view[-1] == arr[-1])


def _segment_round(arr: np.ndarray, store: HeavyStore, al: HeavyAllocator) -> bool:
    out = al.alloc(arr.shape, arr.dtype)
    out[...] = arr
    wire = msgpack.packb({"heavy": {KEY: al.export(out)}}, use_bin_type=True)
    del out
    desc = msgpack.unpackb(wire, raw=False)["heavy"][KEY]
    view = store.validate(desc)
    ok = bool(view[-1] == arr[-1])
    del view
    store.commit(KEY, desc)
    return ok


def _median_us(fn: Callable[..., bool], args: tuple[Any, ...], repeat: int) -> tuple[float, bool]:
    fn(*args)
    times, ok = [], True
    for _ in range(repeat):
        t0 = time.perf_counter()
        ok &= fn(*args)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times), ok


def bench_inline(sizes: Iterable[int] = (1 << 10, 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 20),
                 repeat: int = 200) -> dict[str, Any]:
    """Worker -> sink round trip (encode, msgpack, decode, validate, commit), both paths."""
    ns = _namespace("inline")
    store = HeavyStore(ns)
    rows = []
    try:
        with HeavyAllocator(ns, inline_threshold_bytes=0) as al:
            for size in sizes:
                arr = np.arange(size // 8, dtype=np.float64)
                inline_us, ok1 = _median_us(_inline_round, (arr, store, al), repeat)
                seg_us, ok2 = _median_us(_segment_round, (arr, store, al), repeat)
                rows.append({"bytes": size, "inline_us": round(inline_us, 1),
                             "segment_us": round(seg_us, 1), "correct": ok1 and ok2})
    finally:
        store.destroy()
    cross = next((r["bytes"] for r in rows if r["inline_us"] >= r["segment_us"]), None)
    return {"rows": rows, "crossover_bytes": cross}


def main() -> None:
    """Print both benchmarks (python -m pipeline.heavy.bench)."""
    import json

    print(json.dumps(bench_inline(), indent=1))
    print(json.dumps(bench_alloc_fill(), indent=1))


if __name__ == "__main__":
    main()
