"""The context factory and the state replica (pure Python, no sockets)."""

from __future__ import annotations

import pytest

from pipeline import StateUpdate, process
from pipeline.api import FollowUp, Signal, load_app, spec_of
from pipeline.context import build_context, error_update, to_update
from pipeline.errors import ContractError
from pipeline.replica import StateReplica


@process(inputs=["a", "heavy.img"], outputs=["b"])
def proc(ctx, x: int):
    return {"b": ctx.get("a", 0) + x}


def _replica(**values) -> StateReplica:
    r = StateReplica()
    r.load_snapshot({"version": 5, "state": {k: [i + 1, v] for i, (k, v) in
                                             enumerate(values.items())}})
    return r


def test_context_reads_declared_inputs_and_records_versions():
    spec = spec_of(proc)
    ctx = build_context({"id": "t1", "process": "proc", "args": {}}, spec, _replica(a=2), None)
    update = to_update(ctx, spec.func(ctx, x=3), None)
    assert update["data"] == {"b": 5}
    assert update["reads"] == {"a": 1, "b": 0}
    assert update["base"] == 5 and update["task"] == "t1" and update["attempt"] == 1


def test_undeclared_input_is_a_contract_error():
    ctx = build_context({"id": "t", "process": "proc", "args": {}}, spec_of(proc),
                        _replica(secret=1), None)
    with pytest.raises(ContractError):
        ctx.get("secret")
    with pytest.raises(ContractError):
        ctx.heavy["other"]


def test_every_field_of_state_update_is_carried():
    ctx = build_context({"id": "t", "process": "proc", "args": {}}, spec_of(proc),
                        _replica(), None)
    result = StateUpdate(data={"b": 1}, signals=[Signal("done", b"x")],
                         tasks=[FollowUp("proc", {"x": 1})], assert_version=5)
    update = to_update(ctx, result, None)
    assert update["signals"] == [{"topic": "done", "payload": b"x"}]
    assert update["tasks"] == [{"process": "proc", "args": {"x": 1}}]
    assert update["expect"] == 5
    assert "expect" not in to_update(ctx, {"b": 1}, None)


def test_bad_return_type_is_a_contract_error():
    ctx = build_context({"id": "t", "process": "proc", "args": {}}, spec_of(proc),
                        _replica(), None)
    with pytest.raises(ContractError):
        to_update(ctx, 42, None)


def test_error_update_carries_type_message_traceback():
    upd = error_update({"id": "t", "process": "p", "attempt": 2}, ValueError("bad"), "tb")
    assert upd["error"] == {"type": "ValueError", "message": "bad", "traceback": "tb"}
    assert upd["attempt"] == 2 and upd["data"] == {}


def test_replica_applies_events_and_detects_gaps():
    r = _replica(a=1)
    assert r.apply([{"version": 6, "writes": {"a": 2}}, {"version": 7, "writes": {"b": 3}}])
    assert (r.get("a"), r.key_version("a"), r.version) == (2, 6, 7)
    assert r.apply([{"version": 7, "writes": {"b": 99}}])  # old: skipped
    assert r.get("b") == 3
    assert not r.apply([{"version": 9, "writes": {}}])
    assert not r.synced


def test_load_app_collects_processes():
    specs = load_app("tests.apps.counter")
    assert {"increment", "put", "append", "boom"} <= set(specs)
    assert specs["increment"].inputs == ("count",)


def test_key_gate_release_respects_ownership_and_deadlines():
    from pipeline.worker import KeyGate

    spec = spec_of(proc)  # declares a, heavy.img and b
    gate = KeyGate()
    gate.hold("t1", ["b"], deadline=10.0)
    assert gate.blocks(spec, now=5.0)
    assert not gate.blocks(spec, now=11.0)  # past its deadline
    gate.sweep(now=11.0)
    assert len(gate) == 0
    gate.hold("t2", ["b"], deadline=20.0)
    gate.release(["t1"])  # a late commit of t1 must not lift t2's hold
    assert gate.blocks(spec, now=12.0)
    gate.release(["t2"])
    assert not gate.blocks(spec, now=12.0) and len(gate) == 0
