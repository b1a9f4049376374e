"""The two baselines every mode measures on the same tasks, in the same run.

* `multiprocessing.Pool` with one `apply_async` per task (W processes).
* A bare pyzmq pipeline: PUSH tasks to W worker processes, PULL results back, each task and
  each result one msgpack message. No broker, no acknowledgement, no audit, no journal:
  the ceiling for this architecture in Python.

The latency mode also measures the floor of the pipeline's own path: a message relayed,
with no work, along the hops a lone task takes (producer -> broker -> worker -> sink ->
broker -> producer, five ZeroMQ hops through four processes). See `relay_latencies`. And
the same five hops over bare Unix-domain sockets (`raw_relay_latencies`): what a transport
without ZeroMQ's I/O threads would cost on this path.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import zmq

from pipeline.bench.apps import WORK

FORK = mp.get_context("fork")  # what `multiprocessing.Pool()` is on Linux; no resource tracker
STOP = b""
# What the relays carry: a lone task's SUBMIT (prefix and header; one packet when raw)
RELAY_MESSAGE = bytes((1, 1)) + msgpack.packb({"tasks": [{"id": "x" * 22, "process": "small",
                                                         "args": {}}]})
STOP_PACKET = b"stop"  # the raw relays' STOP (a zero-length packet reads as a closed peer)
WORKER_CODE = ("import sys; from pipeline.bench.baselines import _zmq_worker; "
               "_zmq_worker(*sys.argv[1:])")
RELAY_CODE = ("import sys; from pipeline.bench.baselines import _relay; "
              "_relay(*sys.argv[1:])")
RAW_RELAY_CODE = ("import sys; from pipeline.bench.baselines import _raw_relay; "
                  "_raw_relay(*map(int, sys.argv[1:]))")


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


def _spawn(code: str, *argv: str, pass_fds: tuple[int, ...] | list[int] = ()
           ) -> subprocess.Popen[bytes]:
    """A fresh interpreter running `code` (no inherited ZeroMQ context)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, pass_fds=pass_fds)


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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
            for _ in range(self.workers):
                self.procs.append(_spawn(WORKER_CODE, self.tasks_ep, self.results_ep))
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
        _reap(self.procs)
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


# -- the pipeline's path with no work: the floor of a lone task's latency -------------------
def _relay(*endpoints: str) -> None:
    """Forward every message from each PULL endpoint to the PUSH endpoint after it (the
    arguments are pairs: in, out). One thread and one poller, as the pipeline's roles."""
    ctx = zmq.Context()
    routes = {}
    poller = zmq.Poller()
    for src, dst in zip(endpoints[::2], endpoints[1::2], strict=True):
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind(src)
        push.connect(dst)
        routes[pull] = push
        poller.register(pull, zmq.POLLIN)
    try:
        while True:
            for sock, _ in poller.poll():
                frames = sock.recv_multipart()
                routes[sock].send_multipart(frames)
                if frames == [STOP]:
                    return
    finally:
        for pull, push in routes.items():
            pull.close(0)
            push.close(0)
        ctx.term()


def _round_trips(send: Callable[[], Any], recv: Callable[[], Any], tasks: int,
                 warmup: int = 200) -> list[float]:
    """Seconds of `tasks` round trips (send, then wait for the reply), after `warmup`."""
    for _ in range(warmup):
        send()
        recv()
    out = []
    for _ in range(tasks):
        t0 = time.perf_counter()
        send()
        recv()
        out.append(time.perf_counter() - t0)
    return out


def relay_latencies(tasks: int) -> list[float]:
    """Round-trip seconds of a small message (two frames, as a pipeline message) relayed
    along a lone task's five hops: to a "broker", a "worker", a "sink", the "broker" again,
    and back. No work at any hop: the transport's floor for the pipeline's path."""
    run_dir = tempfile.mkdtemp(prefix="plr-")
    ep = {name: f"ipc://{run_dir}/{name}" for name in
          ("frontend", "worker", "sink", "decisions", "producer")}
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind(ep["producer"])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_spawn(RELAY_CODE, ep["frontend"], ep["worker"],
                            ep["decisions"], ep["producer"]))  # the broker: both ways
        procs.append(_spawn(RELAY_CODE, ep["worker"], ep["sink"]))
        procs.append(_spawn(RELAY_CODE, ep["sink"], ep["decisions"]))
        push.connect(ep["frontend"])
        msg = [RELAY_MESSAGE[:2], RELAY_MESSAGE[2:]]
        push.send_multipart(msg)  # the first waits for every relay to bind
        if not pull.poll(30_000):
            raise RuntimeError("relay baseline: a relay did not start")
        pull.recv_multipart()
        return _round_trips(lambda: push.send_multipart(msg), pull.recv_multipart, tasks)
    finally:
        with contextlib.suppress(zmq.Again):
            push.send_multipart([STOP], zmq.NOBLOCK)
        _reap(procs)
        push.close(0)
        pull.close(0)
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)


def _raw_relay(*fds: int) -> None:
    """`_relay` over inherited Unix-domain SOCK_SEQPACKET sockets (pairs of descriptors: in,
    out): one blocking epoll, no ZeroMQ, so one wake-up per hop instead of three."""
    import select
    import socket

    socks = [socket.socket(fileno=fd) for fd in fds]
    routes = {src.fileno(): (src, dst) for src, dst in zip(socks[::2], socks[1::2],
                                                           strict=True)}
    poller = select.epoll()
    for fd in routes:
        poller.register(fd, select.EPOLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                src, dst = routes[fd]
                data = src.recv(65536)
                if not data or data == STOP_PACKET:  # told to stop, or the peer is gone
                    with contextlib.suppress(OSError):
                        dst.send(STOP_PACKET)
                    return
                dst.send(data)
    finally:
        poller.close()
        for s in socks:
            s.close()


def raw_relay_latencies(tasks: int) -> list[float]:
    """`relay_latencies` over bare Unix-domain sockets (SOCK_SEQPACKET, one packet per
    message) instead of ZeroMQ: the same five hops through the same four processes."""
    import socket

    def pair() -> tuple[socket.socket, socket.socket]:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    hops = [pair() for _ in range(5)]  # producer->broker->worker->sink->broker->producer
    (pb_out, pb_in), (bw_out, bw_in), (ws_out, ws_in), (sb_out, sb_in), (bp_out, bp_in) = hops
    relays = [(pb_in, bw_out, sb_in, bp_out), (bw_in, ws_out), (ws_in, sb_out)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for socks in relays:
            fds = [s.fileno() for s in socks]
            procs.append(_spawn(RAW_RELAY_CODE, *map(str, fds), pass_fds=fds))
        for socks in relays:  # the children hold them now
            for s in socks:
                s.close()
        pb_out.settimeout(30)
        bp_in.settimeout(30)

        def reply() -> bytes:
            data = bp_in.recv(65536)
            if not data or data == STOP_PACKET:
                raise RuntimeError("raw relay baseline: a relay is gone")
            return data

        return _round_trips(lambda: pb_out.send(RELAY_MESSAGE), reply, tasks)
    finally:
        with contextlib.suppress(OSError):
            pb_out.send(STOP_PACKET)
        _reap(procs)
        for a, b in hops:
            a.close()
            b.close()
