"""The sink's bounded de-duplication table, through a real sink process: it forgets the
oldest decisions past its bounds, refuses (expired) a task it can no longer check, still
answers `duplicate` for one it can, and rebuilds the same horizon from its journal."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline import protocol as proto
from pipeline.config import Endpoints
from pipeline.heavy import purge_namespace
from pipeline.heavy.names import namespace_dir
from pipeline.protocol import Cmd
from pipeline.runner import Child, spawn, stop_children
from tests.test_heavy_e2e import FakeBroker

APP = "tests.apps.counter"
BORN = 1_700_000_000_000


class Rig:
    """A real sink between a fake broker (its control endpoint) and a status client."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ep = Endpoints.embedded(run_dir / "ep")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.fake = FakeBroker(self.ctx, self.ep)
        self.sink: Child | None = None
        self.ns = f"p{os.getpid()}-dedup"

    def start(self, max_entries: int) -> None:
        ep = self.ep
        self.sink = spawn("sink", [
            "--app", APP, "--journal", str(self.run_dir / "journal"),
            "--namespace", self.ns, "--frontend", ep.frontend,
            "--backend", ep.backend, "--control", ep.control, "--updates", ep.updates,
            "--events", ep.events, "--sync", ep.sync],
            env={"PIPELINE_SINK_DEDUP_MAX_ENTRIES": str(max_entries),
                 "PIPELINE_SINK_DEDUP_WINDOW_S": "0"})

    def stop(self) -> None:
        if self.sink is not None:
            stop_children([self.sink])
            self.sink = None

    def decide(self, task: str, born: int | None) -> dict[str, Any]:
        update = {"task": task, "process": "put", "attempt": 1, "worker": "w", "reads": {},
                  "base": 0, "args": {}, "data": {}, "heavy": {}, "error": None,
                  "signals": [], "tasks": [], "born_ms": born}
        decision = self.fake.decide(update, None)
        assert decision is not None, "the sink dropped a well-formed update"
        return decision

    def status(self) -> dict[str, Any]:
        with self.ctx.socket(zmq.DEALER) as admin:
            admin.connect(self.ep.sync)
            admin.send_multipart(proto.encode(Cmd.STATUS_REQ, {}))
            assert admin.poll(10_000)
            header: dict[str, Any] = proto.decode(admin.recv_multipart()).header
            admin.close(0)
        return header

    def close(self) -> None:
        self.stop()
        self.fake.close()
        self.ctx.term()
        purge_namespace(namespace_dir(self.ns))


@pytest.fixture
def rig(run_dir: Path) -> Iterator[Rig]:
    r = Rig(run_dir)
    yield r
    r.close()


def test_the_sink_forgets_past_its_bound_and_refuses_what_it_cannot_check(rig: Rig) -> None:
    rig.start(max_entries=3)
    for i in range(5):
        assert rig.decide(f"t{i}", BORN + i)["status"] == "committed"
    dedup = rig.status()["dedup"]
    assert (dedup["entries"], dedup["forgotten"], dedup["horizon_ms"]) == (3, 2, BORN + 1)
    assert dedup["clock_ms"] == BORN + 4
    # t1 (born at the horizon) may have committed, and the table no longer knows: refused.
    old = rig.decide("t1", BORN + 1)
    assert (old["status"], old["rule"]) == ("expired", "dedup_horizon"), old
    assert "horizon" in old["reason"]
    # t2 is remembered: its repeat gets the original decision back, whatever the attempt.
    again = rig.decide("t2", BORN + 2)
    assert (again["status"], again["version"]) == ("duplicate", 3)
    # A task born after the horizon is new work; one without a stamp is not checked.
    assert rig.decide("t5", BORN + 5)["status"] == "committed"
    assert rig.decide("unstamped", None)["status"] == "committed"
    before = rig.status()
    assert before["version"] == 7 and before["dedup"]["entries"] == 3
    # A restart rebuilds the same table from the journal: same horizon, same answers.
    rig.stop()
    rig.start(max_entries=3)
    after = rig.status()["dedup"]
    assert {k: after[k] for k in ("entries", "horizon_ms", "clock_ms")} == {
        k: before["dedup"][k] for k in ("entries", "horizon_ms", "clock_ms")}
    assert rig.decide("t1", BORN + 1)["status"] == "expired"
    assert rig.decide("t5", BORN + 5)["status"] == "duplicate"
    assert rig.status()["version"] == 7  # nothing committed twice
