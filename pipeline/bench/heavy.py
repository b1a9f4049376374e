"""`pipeline bench heavy`: the cost of moving a large array from a worker's return to the
committed state, readable by a subscriber, against the two usual ways of moving it.

For 1, 10 and 100 MB float64 arrays:

* `overhead_ms`: a real cluster (worker, broker, sink as processes). The process fills an
  array it allocated in shared memory and stamps its return time; the figure is the time
  until a subscriber holding the commit event has the array mapped (zero-copy) and has read
  its last element: export, UPDATE, descriptor vetting, audit, journal, commit, publish and
  mapping. The process's own fill is not counted.
* `overhead_checked_ms`: the same with array rules on (finite and a value range over every
  element, scanned in Rust in the sink).
* `pickle_ms`: `multiprocessing.Pool`: a child fills the array and returns it (pickled).
* `zmq_bytes_ms`: a child sends the array's bytes over a zero-copy PUSH/PULL `ipc://`.
* `alloc_fill_100mb_ms` / `numpy_fill_100mb_ms`: steady-state `ctx.heavy.alloc` + fill
  against filling a fresh numpy array (pipeline.heavy.bench).

Each figure is the median of `repeat` runs after two warm-up runs, except the pipeline's:
they are cheap, and on a shared machine five runs of about a millisecond are mostly noise, so
they take at least PIPELINE_RUNS runs each (`overhead_p90_ms` gives their tail).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zmq

from pipeline.bench.cluster import BenchError
from pipeline.errors import TaskTimeout
from pipeline.producer import Producer
from pipeline.runner import Cluster
from pipeline.subscriber import Subscriber

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

SIZES_MB = (1, 10, 100)
WARMUP = 2
PIPELINE_RUNS = 30


def run_heavy(repeat: int, sizes: tuple[int, ...] = SIZES_MB) -> dict[str, Any]:
    from pipeline.heavy.bench import bench_alloc_fill

    out: dict[str, Any] = {"sizes_mb": list(sizes), "repeat": repeat}
    out.update(_pipeline(repeat, sizes))
    out["pickle_ms"] = {str(mb): _median(_pickle_runs(mb, repeat)) for mb in sizes}
    out["zmq_bytes_ms"] = {str(mb): _median(_zmq_runs(mb, repeat)) for mb in sizes}
    fill = bench_alloc_fill(100, repeat)
    out["alloc_fill_100mb_ms"] = fill["alloc_fill_100mb_ms"]
    out["numpy_fill_100mb_ms"] = fill["numpy_fill_100mb_ms"]
    out["alloc_fill_vs_numpy"] = fill["ratio"]
    big = str(max(sizes))
    out[f"pickle_vs_ours_{big}mb"] = out["pickle_ms"][big] / out["overhead_ms"][big]
    out[f"zmq_vs_ours_{big}mb"] = out["zmq_bytes_ms"][big] / out["overhead_ms"][big]
    return out


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


# -- the pipeline --------------------------------------------------------------------------
def _pipeline(repeat: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    run_dir = tempfile.mkdtemp(prefix="plh-")
    from pipeline.bench.heavy_app import RECIPE

    recipe = Path(run_dir) / "recipe.toml"
    recipe.write_text(RECIPE)
    cluster = Cluster(app="pipeline.bench.heavy_app", workers=1, run_dir=f"{run_dir}/c",
                      recipes=str(recipe), fsync="interval")
    try:
        cluster.start()
        ep = cluster.endpoints
        with Producer(ep.frontend) as producer, \
                Subscriber(ep.events, ep.sync, namespace=cluster.namespace) as sub:
            sub.wait_connected()
            runs = max(repeat, PIPELINE_RUNS)
            plain = {str(mb): _runs(producer, sub, "produce", "heavy.out", mb, runs)
                     for mb in sizes}
            checked = {str(mb): _runs(producer, sub, "produce_checked", "heavy.checked", mb, runs)
                       for mb in sizes}
    finally:
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"overhead_ms": _medians(plain), "overhead_p90_ms": _p90s(plain),
            "overhead_checked_ms": _medians(checked), "overhead_checked_p90_ms": _p90s(checked),
            "overhead_runs": runs}


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {mb: _median(v) for mb, v in times.items()}


def _p90s(times: dict[str, list[float]]) -> dict[str, float]:
    return {mb: round(sorted(v)[int(0.9 * (len(v) - 1))], 3) for mb, v in times.items()}


def _runs(producer: Producer, sub: Subscriber, process: str, key: str, mb: int,
          repeat: int) -> list[float]:
    """One timing per run: the subscriber waits for the commit event itself, maps the array,
    reads its last element and stamps. The producer's decision is collected only afterwards:
    it travels sink -> broker -> producer, a path that is not the one timed, and waiting for
    it first would add its latency whenever it is the slower of the two."""
    times = []
    for i in range(WARMUP + repeat):
        value = float(i + 1)
        handle = producer.submit(process, mb=mb, value=value)
        try:
            change = sub.next(timeout=60)
        except TaskTimeout:
            decision = handle.result(timeout=1)
            raise BenchError(f"{process} {mb} MB: no commit event ({decision.reason})") from None
        arr = sub.array(change, key)
        if arr[-1] != value or arr.nbytes != mb * 1_000_000:
            raise BenchError(f"{process} {mb} MB: the subscriber read the wrong array")
        elapsed = (time.monotonic_ns() - change.values["t_return_ns"]) / 1e6
        del arr
        decision = handle.result(timeout=120)
        if not decision.committed or change.task != handle.id:
            raise BenchError(f"{process} {mb} MB: not committed as seen: {decision.reason}")
        if i >= WARMUP:
            times.append(elapsed)
    return times


# -- baselines -----------------------------------------------------------------------------
def _filled(mb: int, value: float) -> tuple[int, np.ndarray]:
    arr = np.empty(mb * 1_000_000 // 8)
    arr.fill(value)
    return time.monotonic_ns(), arr


def _pickle_runs(mb: int, repeat: int) -> list[float]:
    times = []
    with mp.get_context("spawn").Pool(1) as pool:
        for i in range(WARMUP + repeat):
            t_return, arr = pool.apply_async(_filled, (mb, float(i + 1))).get(timeout=120)
            elapsed = (time.monotonic_ns() - t_return) / 1e6
            if arr[-1] != float(i + 1):
                raise BenchError("the pickle baseline read the wrong array")
            if i >= WARMUP:
                times.append(elapsed)
    return times


def _zmq_sender(endpoint: str, mb: int, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(endpoint)
    for i in range(count):
        t_return, arr = _filled(mb, float(i + 1))
        # an ndarray exports the buffer protocol on every Python, but numpy's stubs declare
        # its `__buffer__` (PEP 688) only from 3.12 (numpy/numpy#26783)
        sock.send_multipart([str(t_return).encode(), cast("Buffer", arr)], copy=False)
    sock.close(linger=-1)
    ctx.term()


def _zmq_runs(mb: int, repeat: int) -> list[float]:
    run_dir = tempfile.mkdtemp(prefix="plz-")
    endpoint = f"ipc://{run_dir}/bytes.sock"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(endpoint)
    child = mp.get_context("spawn").Process(target=_zmq_sender,
                                            args=(endpoint, mb, WARMUP + repeat))
    child.start()
    times = []
    try:
        for i in range(WARMUP + repeat):
            if not sock.poll(120_000):
                raise BenchError("the zmq baseline's sender went silent")
            stamp, data = sock.recv_multipart(copy=False)
            arr = np.frombuffer(data.buffer, dtype=np.float64)
            elapsed = (time.monotonic_ns() - int(bytes(stamp.buffer))) / 1e6
            if arr[-1] != float(i + 1):
                raise BenchError("the zmq baseline read the wrong array")
            if i >= WARMUP:
                times.append(elapsed)
    finally:
        child.join(timeout=60)
        sock.close(linger=0)
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)
        if child.is_alive():
            os.kill(child.pid or 0, 9)
    return times
