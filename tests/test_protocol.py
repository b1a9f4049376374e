"""The wire protocol's pure functions, without sockets."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import protocol as proto
from pipeline.errors import DecodeError
from pipeline.protocol import Cmd

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=12)
tasks = st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=16), "process": st.text(min_size=1, max_size=16),
    "args": st.dictionaries(st.text(max_size=8), values, max_size=4)})


@given(st.lists(tasks, max_size=5))
@settings(max_examples=200)
def test_submit_round_trip(task_list):
    frames = proto.encode(Cmd.SUBMIT, {"tasks": task_list})
    msg = proto.decode(frames)
    assert msg.cmd is Cmd.SUBMIT
    assert msg.header == {"tasks": task_list}
    for task in msg.header["tasks"]:
        assert proto.check_task(task) == task


@pytest.mark.parametrize("cmd", list(Cmd))
def test_every_command_round_trips_with_minimal_header(cmd):
    header = {name: ([] if typ is list else {} if typ is dict else 1 if typ is int else "x")
              for name, typ in proto.SCHEMA[cmd].items()}
    msg = proto.decode(proto.encode(cmd, header, b"blob"))
    assert (msg.cmd, msg.header, msg.blobs) == (cmd, header, [b"blob"])


@pytest.mark.parametrize(("frames", "reason"), [
    ([b"\x01"], "too-few-frames"),
    ([b"\x01", b"\x80"], "bad-prefix"),
    ([b"\x02\x01", b"\x80"], "version"),
    ([b"\x01\x99", b"\x80"], "unknown-command"),
    ([b"\x01\x01", b"\xc1"], "bad-msgpack"),
    ([b"\x01\x01", msgpack.packb([1, 2])], "header-not-map"),
    ([b"\x01\x01", msgpack.packb({"tasks": 3})], "header-field:tasks"),
    ([b"\x01\x01", msgpack.packb({})], "header-field:tasks"),
    ([b"\x01\x10", msgpack.packb({"credit": True})], "header-field:credit"),
    ([b"\x01\x01", msgpack.packb({1: 2})], "bad-msgpack"),
])
def test_malformed_messages_raise_decode_error(frames, reason):
    with pytest.raises(DecodeError) as info:
        proto.decode(frames)
    assert info.value.reason == reason


@pytest.mark.parametrize(("task", "reason"), [
    ("not a map", "task-not-map"),
    ({"process": "p", "args": {}}, "task-field:id"),
    ({"id": "1", "process": 3, "args": {}}, "task-field:process"),
    ({"id": "1", "process": "p", "args": []}, "task-field:args"),
    ({"id": "1", "process": "p", "args": {}, "heavy": 5}, "task-field:heavy"),
])
def test_bad_tasks_are_refused(task, reason):
    with pytest.raises(DecodeError) as info:
        proto.check_task(task)
    assert info.value.reason == reason


@given(st.binary(max_size=64), st.binary(max_size=256))
@settings(max_examples=500)
def test_decode_never_raises_anything_but_decode_error(prefix, header):
    with contextlib.suppress(DecodeError):
        proto.decode([prefix, header])


def test_router_envelope_split():
    ident, rest = proto.split_envelope([b"id", b"\x01\x12", b"\x80"])
    assert ident == b"id" and proto.decode(rest).cmd is Cmd.HEARTBEAT
    with pytest.raises(DecodeError):
        proto.split_envelope([b"id", b"\x01\x12"])


def test_error_carries_supported_versions():
    msg = proto.decode(proto.error("version", "speak 1"))
    assert msg.header["supported"] == [1]
