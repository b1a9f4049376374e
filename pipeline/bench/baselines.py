"""The two baselines every mode measures on the same tasks, in the same run.

* `multiprocessing.Pool` with one `apply_async` per task (W processes).
* A bare pyzmq pipeline: PUSH tasks to W worker processes, PULL results back, each task and
  each result one msgpack message. No broker, no acknowledgement, no audit, no journal:
  the ceiling for this architecture in Python.

The Pool uses the platform's default start method on Linux (fork; it runs before any
ZeroMQ context of the bench exists or after it is closed). The pyzmq workers are fresh
interpreters (subprocess: no inherited ZeroMQ context). Every process is joined or killed
before a function returns.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import zmq

from pipeline.bench.apps import WORK

FORK = mp.get_context("fork")  # what `multiprocessing.Pool()` is on Linux; no resource tracker
STOP = b""
WORKER_CODE = ("import sys; from pipeline.bench.baselines import _zmq_worker; "
               "_zmq_worker(*sys.argv[1:])")


# -- multiprocessing.Pool -------------------------------------------------------------------
@contextmanager
def _pool(workers: int) -> Iterator[Any]:
    pool = FORK.Pool(workers)
    try:
        pool.map(WORK["small"], range(workers * 4))  # every process up before timing
        yield pool
    finally:
        pool.terminate()
        pool.join()


def pool_throughput(process: str, args: dict[str, Any], tasks: int, workers: int) -> float:
    """Tasks per second with one `apply_async` per task, every result collected."""
    func = WORK[process]
    with _pool(workers) as pool:
        t0 = time.perf_counter()
        pending = [pool.apply_async(func, (), args) for _ in range(tasks)]
        for r in pending:
            r.get()
        return tasks / (time.perf_counter() - t0)


def pool_latencies(process: str, tasks: int, workers: int) -> list[float]:
    """Round-trip seconds of `tasks` tasks submitted one at a time."""
    func = WORK[process]
    out = []
    with _pool(workers) as pool:
        for _ in range(tasks):
            t0 = time.perf_counter()
            pool.apply_async(func).get()
            out.append(time.perf_counter() - t0)
    return out


# -- bare pyzmq PUSH/PULL -------------------------------------------------------------------
def _zmq_worker(tasks_ep: str, results_ep: str) -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.connect(tasks_ep)
    push.connect(results_ep)
    push.send(msgpack.packb({"hello": os.getpid()}))
    try:
        while True:
            raw = pull.recv()
            if raw == STOP:
                break
            task = msgpack.unpackb(raw)
            result = WORK[task["process"]](**task["args"])
            push.send(msgpack.packb({"id": task["id"], "result": result}))
    finally:
        pull.close(0)
        push.close(0)
        ctx.term()


class ZmqPipeline:
    """A PUSH socket to W spawned workers and a PULL socket for their results."""

    def __init__(self, workers: int) -> None:
        self._dir = tempfile.mkdtemp(prefix="plz-")
        self.tasks_ep = f"ipc://{self._dir}/tasks"
        self.results_ep = f"ipc://{self._dir}/results"
        self.ctx = zmq.Context()
        self.push, self.pull = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.push.bind(self.tasks_ep)
        self.pull.bind(self.results_ep)
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> ZmqPipeline:
        try:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
            for _ in range(self.workers):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER_CODE, self.tasks_ep, self.results_ep],
                    env=env))
            for _ in self.procs:  # every worker connected before timing
                if not self.pull.poll(30_000):
                    raise RuntimeError("zmq baseline: a worker did not start")
                self.pull.recv()
            self.throughput("small", {}, 200 * len(self.procs))  # warm-up
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for _ in self.procs:
            with contextlib.suppress(zmq.Again):
                self.push.send(STOP, zmq.NOBLOCK)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.push.close(0)
        self.pull.close(0)
        self.ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)

    def throughput(self, process: str, args: dict[str, Any], tasks: int) -> float:
        """Tasks per second: all sent as fast as the sockets take them, all results read."""
        packb, push, pull = msgpack.packb, self.push, self.pull
        sent = received = 0
        t0 = time.perf_counter()
        while received < tasks:
            while sent < tasks:
                try:
                    push.send(packb({"id": sent, "process": process, "args": args}), zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
            if pull.poll(1000 if sent == tasks else 0):
                while received < tasks:
                    try:
                        msgpack.unpackb(pull.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    received += 1
        return tasks / (time.perf_counter() - t0)

    def latencies(self, process: str, tasks: int) -> list[float]:
        out = []
        for i in range(tasks):
            t0 = time.perf_counter()
            self.push.send(msgpack.packb({"id": i, "process": process, "args": {}}))
            msgpack.unpackb(self.pull.recv())
            out.append(time.perf_counter() - t0)
        return out


def zmq_throughput(process: str, args: dict[str, Any], tasks: int, workers: int) -> float:
    with ZmqPipeline(workers) as z:
        return z.throughput(process, args, tasks)


def zmq_latencies(process: str, tasks: int, workers: int) -> list[float]:
    with ZmqPipeline(workers) as z:
        return z.latencies(process, tasks)
