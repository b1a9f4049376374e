"""Chaos: many tasks of known outcome while workers, the sink and the broker are SIGKILLed.

CHAOS_TASKS tasks (default 20,000) of `tests.chaos.app` (32 counters, task i adds 1 and i to
counter i % 32). During the run a random worker is SIGKILLed every second and replaced; the
sink is SIGKILLed once (at a third of the decisions) and the broker once (at two thirds),
each restarted on the same journal. The sink's de-duplication table is bounded far below
the run (DEDUP_MAX_ENTRIES), so it forgets most decisions while redeliveries go on.
Checked at the end: every task has a decision; the sink's journal commits each task at most
once; each task is committed (the counters equal the reference built from the journal's
commits, and the sink's global version equals their number) or is a dead letter with its
reason in the broker's DLQ (one refused by the de-duplication horizon may also have
committed, once: that is what the rule says); no process or shared-memory segment is left
(conftest).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline import Producer, Subscriber
from pipeline.cli_audit import read_decisions
from pipeline.errors import TaskTimeout
from pipeline.protocol import Cmd, decode, encode
from pipeline.runner import Child, Cluster
from tests.chaos.app import KEYS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = int(os.environ.get("CHAOS_TASKS", "20000"))
WORKERS = 4
RUN_LIMIT_S = 150.0
SUBMIT_CHUNK = 500
DEDUP_MAX_ENTRIES = 2_000


class Chaos:
    """Kills and restarts the cluster's processes on a schedule; counts what it did."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.kills: Counter[str] = Counter()
        self.next_worker_kill = time.monotonic() + 1.0

    def step(self, decided: int) -> None:
        if self.kills["sink"] == 0 and decided >= TASKS // 3:
            self._kill(self.cluster.sink_child)
            self.cluster.start_sink()
        elif self.kills["broker"] == 0 and decided >= 2 * TASKS // 3:
            self._kill(self.cluster.broker_child)
            self.cluster.start_broker()
        if time.monotonic() >= self.next_worker_kill:
            victim = self.rng.choice(self.cluster.worker_children)
            self._kill(victim)
            self.cluster.worker_children.remove(victim)
            self.cluster.add_worker()
            self.next_worker_kill = time.monotonic() + 1.0

    def _kill(self, child: Child | None) -> None:
        assert child is not None and child.alive(), "a process died on its own"
        os.kill(child.pid, signal.SIGKILL)
        child.proc.wait()
        self.kills[child.role] += 1


def _submit_all(producer: Producer) -> dict[str, int]:
    """Submit every task; return task id -> i."""
    by_id: dict[str, int] = {}
    for start in range(0, TASKS, SUBMIT_CHUNK):
        chunk = range(start, min(TASKS, start + SUBMIT_CHUNK))
        for k in range(KEYS):
            mine = [i for i in chunk if i % KEYS == k]
            handles = producer.submit_many(f"bump{k}", [{"i": i} for i in mine])
            by_id.update((h.id, i) for h, i in zip(handles, mine, strict=True))
        producer.poll(0)
    return by_id


def _collect(producer: Producer, handles: list[Any], chaos: Chaos) -> dict[str, Any]:
    decisions: dict[str, Any] = {}
    deadline = time.monotonic() + RUN_LIMIT_S
    while len(decisions) < len(handles) and time.monotonic() < deadline:
        remaining = [h for h in handles if h.id not in decisions]
        try:
            for d in producer.as_completed(remaining, timeout=0.5):
                decisions[d.task] = d
        except TaskTimeout:
            pass
        chaos.step(len(decisions))
    return decisions


def _admin(cluster: Cluster, cmd: Cmd) -> dict[str, Any]:
    """DLQ_LIST (dead letters by id) or STATUS_REQ (the broker's figures)."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(cluster.endpoints.control)
        sock.send_multipart(encode(cmd, {}))
        assert sock.poll(10_000), f"no answer to {cmd.name}"
        header = decode(sock.recv_multipart()).header
    finally:
        sock.close()
        ctx.term()
    return {d["id"]: d for d in header["items"]} if cmd is Cmd.DLQ_LIST else header


def _sink_dedup(cluster: Cluster) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(cluster.endpoints.sync)
        sock.send_multipart(encode(Cmd.STATUS_REQ, {}))
        assert sock.poll(10_000), "no STATUS from the sink"
        dedup: dict[str, Any] = decode(sock.recv_multipart()).header["dedup"]
    finally:
        sock.close()
        ctx.term()
    return dedup


def _final_state(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0) as sub:
        snap = sub.next(timeout=20)
    return snap.version, snap.values


def test_chaos_every_task_once_or_dead_lettered(cluster_factory: Any, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "5")))
    cluster = cluster_factory(app="tests.chaos.app", workers=WORKERS, credit=32,
                              heartbeat_interval_ms=250, log_dir=str(tmp_path / "logs"),
                              broker_args=["--max-attempts", "40"],
                              env={"PIPELINE_SINK_DEDUP_MAX_ENTRIES": str(DEDUP_MAX_ENTRIES)})
    started = time.monotonic()
    try:
        cluster.start()
        with Producer(cluster.endpoints.frontend, ack_timeout_s=2.0) as producer:
            by_id = _submit_all(producer)
            handles = [_Handle(t) for t in by_id]
            chaos = Chaos(cluster, rng)
            decisions = _collect(producer, handles, chaos)
        elapsed = time.monotonic() - started
        dead, broker = _admin(cluster, Cmd.DLQ_LIST), _admin(cluster, Cmd.STATUS_REQ)
        version, state = _final_state(cluster)
        dedup = _sink_dedup(cluster)
        journaled = [r["task"] for r in read_decisions(Path(str(cluster.journal_dir)))
                     if r["status"] == "committed"]
    finally:
        cluster.stop()
    print(f"broker at the end: tasks {broker['tasks']}, queues {broker['queues']}, in flight "
          f"{broker['in_flight']}, delayed {broker['delayed']}, parked {broker['parked']}, "
          f"workers {[(w['name'], w['credit'], w['in_flight']) for w in broker['workers']]}, "
          f"counters {broker['counters']}")
    _check(by_id, decisions, dead, version, state, journaled)
    assert dedup["entries"] <= DEDUP_MAX_ENTRIES and dedup["forgotten"] > 0, dedup
    statuses = Counter(d.status.value for d in decisions.values())
    print(f"chaos: {TASKS} tasks in {elapsed:.1f}s; kills {dict(chaos.kills)}; "
          f"decisions {dict(statuses)}; dead letters {len(dead)}; version {version}; "
          f"dedup {dedup}")
    assert chaos.kills["sink"] == 1 and chaos.kills["broker"] == 1
    # one a second, but each replacement takes about a second to start and report ready
    assert chaos.kills["worker"] >= max(1, int(elapsed / 3))


class _Handle:
    """What Producer.as_completed needs of a handle: its id."""

    __slots__ = ("id",)

    def __init__(self, task_id: str) -> None:
        self.id = task_id


def _check(by_id: dict[str, int], decisions: dict[str, Any], dead: dict[str, dict[str, Any]],
           version: int, state: dict[str, Any], journaled: list[str]) -> None:
    missing = set(by_id) - set(decisions)
    assert not missing, f"{len(missing)} tasks without a decision"
    twice = [t for t, n in Counter(journaled).items() if n > 1]
    assert not twice, f"committed twice: {twice[:10]}"
    said = {t for t, d in decisions.items() if d.status.value in ("committed", "duplicate")}
    failed = {t: d for t, d in decisions.items() if d.status.value == "failed"}
    others = Counter(d.status.value for d in decisions.values()) - Counter(
        {"committed": len(decisions), "duplicate": len(decisions), "failed": len(decisions)})
    assert not others, f"unexpected statuses: {others}"
    assert set(failed) == set(dead), "every failed task is a dead letter and vice versa"
    assert all(d.rule in ("max_attempts", "dedup_horizon") and dead[t]["reason"]
               for t, d in failed.items())
    committed = set(journaled)
    assert said <= committed, "a task reported committed is not in the journal"
    # Committed without being reported so: only a task the horizon refused (it may have
    # committed earlier: that is why it was refused).
    assert all(failed[t].rule == "dedup_horizon" for t in committed - said)
    assert set(by_id) == committed | set(dead), "a task neither committed nor a dead letter"
    expected: dict[str, list[int]] = {}
    for t in committed:
        i = by_id[t]
        count, total = expected.get(f"c{i % KEYS}", [0, 0])
        expected[f"c{i % KEYS}"] = [count + 1, total + i]
    assert {k: list(v) for k, v in state.items()} == expected
    assert version == len(committed), "one global version per committed task"
    versions = [decisions[t].version for t in said]
    assert len(set(versions)) == len(said), "two tasks share a commit"

