"""Heavy arrays when the worker is on another host than the sink, with the remote mode forced
on over ipc:// (tests/test_heavy_netns.py does it across network namespaces): outputs travel
as blob frames and land in the sink's own segments, array rules apply to them, heavy inputs
are fetched from the sink once per (key, version), bad placeholders are refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from pipeline import Producer, Status, Subscriber
from pipeline import protocol as proto
from pipeline.config import Endpoints
from pipeline.heavy import names, purge_namespace
from pipeline.heavy.remote import c_strides, is_remote
from pipeline.protocol import Cmd
from pipeline.runner import spawn, stop_children
from tests.test_heavy_e2e import FakeBroker

pytestmark = pytest.mark.timeout(120)
APP = "tests.apps.heavy_remote"
RECIPE = str(Path(__file__).parent / "recipes" / "frames.toml")
REMOTE = {"PIPELINE_WORKER_HEAVY_REMOTE": "on"}
N = 200_000  # 1.6 MB of float64: well above the inline threshold


def _status(sync: str) -> dict[str, Any]:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(sync)
        sock.send_multipart(proto.encode(Cmd.STATUS_REQ, {}))
        assert sock.poll(10_000), "no STATUS from the sink"
        return proto.decode(sock.recv_multipart()).header


def _segments(namespace: str) -> list[str]:
    path = names.namespace_dir(namespace)
    return sorted(p.name for p in path.iterdir() if names.SEGMENT_RE.fullmatch(p.name))


def test_auto_mode_is_remote_only_for_tcp_to_another_host() -> None:
    assert not is_remote("auto", "ipc:///tmp/x/updates.sock")
    assert not is_remote("auto", "tcp://127.0.0.1:5558")
    assert not is_remote("auto", "tcp://localhost:5558")
    assert is_remote("auto", "tcp://192.0.2.7:5558")  # TEST-NET-1: never on this host
    assert is_remote("on", "ipc:///tmp/x/updates.sock")
    assert not is_remote("off", "tcp://192.0.2.7:5558")


def test_remote_outputs_are_committed_audited_and_read_zero_copy(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1, recipes=RECIPE, env=REMOTE).start()
    with Producer(cluster.endpoints.frontend) as producer:
        ok = producer.submit("fill", n=N, value=3.0).result(timeout=30)
        assert ok.committed, ok.reason
        bad = [producer.submit("fill", n=N, value=500.0) for _ in range(3)]
        for d in producer.results(bad, timeout=30):  # the array rule saw the placed bytes
            assert d.status is Status.REJECTED and d.rule == "bounded", d.reason
        plain = producer.submit("given", n=N, value=2.0).result(timeout=30)
        assert plain.committed, plain.reason
    status = _status(cluster.endpoints.sync)
    assert status["counters"]["heavy_placed"] == 5  # every output crossed as a frame
    assert status["heavy"]["committed"] == 1
    assert status["heavy"]["segments"] == 1, status["heavy"]  # rejected and superseded freed
    sink_pid = str(cluster.sink_child.pid)
    assert all(s.startswith(f"{sink_pid}-") for s in _segments(cluster.namespace))
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0,
                    namespace=cluster.namespace) as sub:
        snap = sub.next(timeout=10)
        arr = sub.array(snap, "heavy.result")
        assert arr.shape == (N,) and np.all(arr == 2.0)
        assert not arr.flags.writeable
        del arr


def test_remote_worker_cannot_change_bytes_after_sending(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1, env=REMOTE).start()
    with Producer(cluster.endpoints.frontend) as producer:
        assert producer.submit("fill", n=N, value=7.0, keep=True).result(timeout=30).committed
        tampered = producer.submit("tamper").result(timeout=30)
    assert tampered.status is Status.FAILED and tampered.error_type == "ValueError"
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0,
                    namespace=cluster.namespace) as sub:
        arr = sub.array(sub.next(timeout=10), "heavy.result")
        assert np.all(arr == 7.0)
        del arr


def test_remote_inputs_are_fetched_once_per_version(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1, env=REMOTE).start()
    served = lambda: _status(cluster.endpoints.sync)["counters"].get("heavy_served", 0)  # noqa: E731
    with Producer(cluster.endpoints.frontend) as producer:
        assert producer.submit("fill", n=N, value=3.0).result(timeout=30).committed
        peeks = [producer.submit("peek") for _ in range(5)]
        assert all(d.committed for d in producer.results(peeks, timeout=30))
        assert served() == 1  # one fetch, then the worker's cache
        assert producer.submit("fill", n=N, value=4.0).result(timeout=30).committed
        assert producer.submit("peek").result(timeout=30).committed
        assert served() == 2  # a new version is fetched again
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0) as sub:
        assert sub.next(timeout=10).values["peek_sum"] == 4.0 * N


# -- placeholders sent straight to a real sink ----------------------------------------------
class FakeWorker(FakeBroker):
    """Pushes hand-made UPDATEs with blob frames to the sink; reads its decisions as the
    broker would."""

    def decide_blobs(self, task: str, value: Any, blobs: list[Any]) -> dict[str, Any] | None:
        update = {"task": task, "process": "fill", "attempt": 1, "worker": "remote",
                  "reads": {"heavy.result": 0}, "base": 0, "args": {}, "data": {},
                  "heavy": {"heavy.result": value}, "error": None, "signals": [], "tasks": [],
                  "run_us": 1}
        return self.exchange([*proto.encode(Cmd.UPDATE, {"updates": [update]}),
                              proto.pack([value]), *blobs])


def _placeholder(frame: int = 3, n: int = N, **change: Any) -> dict[str, Any]:
    ph = {"frame": frame, "dtype": "<f8", "shape": [n], "strides": [8]}
    ph.update(change)
    return ph


def test_bad_placeholders_are_refused_and_the_sink_keeps_running(run_dir):
    ep = Endpoints.embedded(run_dir / "ep")
    ns = f"p{os.getpid()}-remote"
    ctx = zmq.Context()
    fake = FakeWorker(ctx, ep)
    sink = spawn("sink", ["--app", APP, "--journal", str(run_dir / "journal"), "--namespace",
                          ns, "--frontend", ep.frontend, "--backend", ep.backend, "--control",
                          ep.control, "--updates", ep.updates, "--events", ep.events, "--sync",
                          ep.sync])
    blob = np.ones(N)
    try:
        cases = {
            "frame past the end": (_placeholder(frame=4), [blob]),
            "frame of the index": (_placeholder(frame=2), [blob]),
            "frame not an int": (_placeholder(frame="3"), [blob]),
            "object dtype": (_placeholder(dtype="|O"), [blob]),
            "string dtype": (_placeholder(dtype="<U8"), [blob]),
            "blob too short": (_placeholder(n=N + 1), [blob]),
            "blob too long": (_placeholder(n=N - 1), [blob]),
            "strides not C order": (_placeholder(strides=[16]), [blob]),
            "negative shape": (_placeholder(shape=[-1]), [blob]),
            "huge shape": (_placeholder(shape=[1 << 40, 1 << 20]), [blob]),
            "extra field": ({**_placeholder(), "seg": "x"}, [blob]),
            "missing strides": ({k: v for k, v in _placeholder().items() if k != "strides"},
                                [blob]),
        }
        for i, (case, (ph, blobs)) in enumerate(cases.items()):
            d = fake.decide_blobs(f"bad-{i}", ph, blobs)
            assert d is not None, case
            assert (d["status"], d["rule"]) == ("rejected", "heavy"), (case, d)
            assert "heavy frame refused" in d["reason"], (case, d["reason"])
        status = _status(ep.sync)
        assert status["malformed"].get("heavy-placeholder") == len(cases)
        assert status["heavy"]["segments"] == 0  # nothing placed, nothing left
        fine = fake.decide_blobs("fine", _placeholder(), [blob])
        assert fine is not None and fine["status"] == "committed", fine
        assert _status(ep.sync)["heavy"]["segments"] == 1
        assert sink.alive()
    finally:
        stop_children([sink])
        fake.close()
        ctx.term()
        purge_namespace(names.namespace_dir(ns))


def test_c_strides() -> None:
    assert c_strides((2, 3, 4), 8) == [96, 32, 8]
    assert c_strides((), 8) == []
    assert c_strides((0, 5), 4) == [20, 4]


def test_blob_frames_are_numbered_across_a_batch() -> None:
    from pipeline.heavy.remote import RemoteHeavy
    from pipeline.worker import encode_updates

    with zmq.Context() as ctx:
        heavy = RemoteHeavy(ctx, "inproc://unused")
        a = heavy.alloc((N,), "float64")
        a[:] = 1.0
        first = heavy.export(a, defer_seal=True)
        second = heavy.export(np.arange(N, dtype=np.int32))  # not ours: copied once
        lost = heavy.export(np.zeros(N))  # its update became an error below
        small = heavy.export(np.ones(4))
        assert (first["frame"], second["frame"], lost["frame"]) == (3, 4, 5)
        assert "inline" in small and second["strides"] == [4]
        with pytest.raises(ValueError):
            a[0] = 2.0  # flagged read-only at export
        heavy.seal()
        updates = [{"heavy": {"heavy.a": first}}, {"heavy": {"heavy.b": second,
                                                             "heavy.c": small}}]
        frames = encode_updates(updates, heavy.take_frames())
        assert len(frames) == 6 and frames[5] == b""
        assert proto.unpack(frames[2]) == [first, second, small]
        assert np.shares_memory(frames[3], a)  # the array itself, sent without a copy
        assert heavy.take_frames() == []
        heavy.close()
