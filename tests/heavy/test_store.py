"""Sink side: forged descriptors, zero-copy reads across processes, leases, reclaim, restart."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import numpy as np
import pytest

from pipeline.errors import HeavyError
from pipeline.heavy import HeavyAllocator, HeavyReader, HeavyStore, open_array, segment
from pipeline.heavy.names import POOL_DIR, namespace_dir

N = 100_000  # float64: 800 kB, well above the inline threshold


def _export(alloc: HeavyAllocator, value: float, n: int = N) -> dict[str, Any]:
    a = alloc.alloc((n,))
    a[:] = value
    return alloc.export(a)


def _files(ns: str) -> list[str]:
    return sorted(p.name for p in namespace_dir(ns).iterdir() if p.is_file())


FORGERIES: list[tuple[str, dict[str, Any], str]] = [
    ("another namespace", {"ns": "other"}, "namespace 'other'"),
    ("dot-dot", {"seg": "../pipeline-other/1-2-3"}, "contains a path"),
    ("absolute path", {"seg": "/dev/shm/pipeline-x/1-2-3"}, "contains a path"),
    ("NUL byte", {"seg": "1-2-3\x00"}, "NUL"),
    ("bad charset", {"seg": "1-2-3;rm"}, "not <pid>-<start>-<counter>"),
    ("segment missing", {"seg": "4242-1-1"}, "missing"),
    ("offset past the end", {"off": 1 << 30}, "past the end"),
    ("offset in header", {"off": 0}, "header"),
    ("misaligned offset", {"off": 4100}, "not aligned"),
    ("length overflow", {"len": 1 << 64}, "too large"),
    ("negative length", {"len": -8}, "negative"),
    ("length not shape x itemsize", {"len": 8 * N + 8}, "does not match"),
    ("strides past the bounds", {"strides": [16]}, "past the array's length"),
    ("negative stride", {"strides": [-8]}, "negative"),
    ("misaligned stride", {"strides": [4]}, "not a multiple"),
    ("wrong number of strides", {"strides": [8, 8]}, "strides must be a list of 1"),
    ("object dtype", {"dtype": "|O"}, "not allowed"),
    ("string dtype", {"dtype": "<U8"}, "not allowed"),
    ("big-endian dtype", {"dtype": ">f8"}, "not allowed"),
    ("shape not a list", {"shape": "100000"}, "shape must be a list"),
    ("negative dimension", {"shape": [-N]}, "negative"),
    ("float dimension", {"shape": [1.5]}, "must be an integer"),
    ("too many dimensions", {"shape": [1] * 33, "strides": [8] * 33}, "too many dimensions"),
    ("huge shape", {"shape": [1 << 40, 1 << 40], "strides": [8, 8]}, "exceeds the limit"),
    ("stale generation", {"gen": 99}, "stale generation"),
    ("bool generation", {"gen": True}, "must be an integer"),
    ("unexpected field", {"path": "/etc/passwd"}, "unexpected fields"),
]


@pytest.mark.parametrize(("what", "change", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_descriptor_is_rejected_with_its_reason(
        alloc: HeavyAllocator, store: HeavyStore, what: str, change: dict[str, Any],
        reason: str) -> None:
    good = _export(alloc, 3.0)
    with pytest.raises(HeavyError, match=reason):
        store.validate({**good, **change})
    store.reject({**good, **change})
    assert float(store.validate(good)[-1]) == 3.0  # the sink keeps working


def test_missing_field_and_non_map_are_rejected(alloc: HeavyAllocator, store: HeavyStore) -> None:
    good = _export(alloc, 1.0)
    with pytest.raises(HeavyError, match="lacks gen"):
        store.validate({k: v for k, v in good.items() if k != "gen"})
    with pytest.raises(HeavyError, match="must be a map"):
        store.validate([good])


def test_deleted_underneath_and_symlinked_segments(ns: str, alloc: HeavyAllocator,
                                                    store: HeavyStore) -> None:
    desc = _export(alloc, 1.0)
    os.unlink(namespace_dir(ns) / desc["seg"])
    with pytest.raises(HeavyError, match="missing"):
        store.validate(desc)
    target = _export(alloc, 2.0)
    os.symlink(target["seg"], namespace_dir(ns) / "1-1-1")
    with pytest.raises(HeavyError, match="symlink"):
        store.validate({**target, "seg": "1-1-1"})
    os.unlink(namespace_dir(ns) / "1-1-1")


def test_a_committed_segment_cannot_be_committed_twice_or_rejected(
        alloc: HeavyAllocator, store: HeavyStore) -> None:
    desc = _export(alloc, 5.0)
    store.commit("heavy.a", desc)
    with pytest.raises(HeavyError, match="already committed"):
        store.commit("heavy.b", desc)
    store.reject(desc)
    assert float(store.get("heavy.a")[0]) == 5.0


def test_child_exports_parent_reads_zero_copy(ns: str, store: HeavyStore, spawn) -> None:
    child = spawn("export", ns, str(N))
    desc = child.recv()
    view = store.validate(desc)
    assert view[12_345] == 12_345.0 and not view.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1.0
    raw = np.memmap(namespace_dir(ns) / desc["seg"], dtype=np.float64, mode="r+",
                    offset=desc["off"], shape=(N,))
    raw[12_345] = -1.0  # the same bytes, changed through another mapping
    assert view[12_345] == -1.0
    del raw
    child.send("stop")
    assert child.finish() == 0
    store.reject(desc)
    assert _files(ns) == []


def test_superseded_segment_is_freed_only_after_the_reader_releases(
        ns: str, alloc: HeavyAllocator, store: HeavyStore, spawn) -> None:
    first = _export(alloc, 1.0)
    store.commit("heavy.x", first)
    reader = spawn("read", ns, json.dumps(first))
    assert reader.recv() == {"sum": float(N)}
    store.commit("heavy.x", _export(alloc, 2.0))
    assert first["seg"] in _files(ns)
    assert store.stats()["pending"] == 1 and store.stats()["leased"] == 1
    reader.send("release")
    assert reader.recv() == {"released": True}
    assert store.collect() == 1
    assert first["seg"] not in _files(ns) and store.stats()["pooled"] == 1
    with pytest.raises(HeavyError, match="missing"):
        open_array(first, ns)
    assert reader.finish() == 0


def test_reader_lease_dies_with_the_reader(ns: str, alloc: HeavyAllocator,
                                           store: HeavyStore, spawn) -> None:
    first = _export(alloc, 1.0)
    store.commit("heavy.x", first)
    reader = spawn("read", ns, json.dumps(first))
    reader.recv()
    store.commit("heavy.x", _export(alloc, 2.0))
    assert store.collect() == 0
    reader.proc.kill()
    assert reader.finish() == -signal.SIGKILL
    assert store.collect() == 1


def test_reader_views_are_read_only_and_leases_follow_arrays(
        ns: str, alloc: HeavyAllocator, store: HeavyStore) -> None:
    desc = _export(alloc, 4.0)
    store.commit("heavy.x", desc)
    reader = HeavyReader(ns)
    a = reader.open_array(desc)
    b = reader.open_array(desc)[10:]
    assert np.shares_memory(a, b) and reader.leased() == [desc["seg"]]
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 0.0
    del a
    assert reader.leased() == [desc["seg"]]  # b still holds the mapping
    del b
    assert reader.leased() == []
    reader.close()


def test_sigkilled_worker_segments_are_reclaimed(ns: str, store: HeavyStore, spawn) -> None:
    keeper = spawn("export", ns, str(N))
    kept = keeper.recv()
    store.commit("heavy.kept", kept)
    victim = spawn("hold", ns, str(N))
    pid = victim.recv()["pid"]
    assert any(f.startswith(f"{pid}-") for f in _files(ns))
    assert store.reclaim() == 0  # owner alive: untouched
    victim.proc.kill()
    assert victim.finish() == -signal.SIGKILL
    keeper.proc.kill()
    keeper.finish()
    assert store.reclaim() == 1
    assert _files(ns) == [kept["seg"]]  # committed, although its owner is dead too
    assert float(store.get("heavy.kept")[-1]) == N - 1


def test_reject_frees_the_segment(ns: str, alloc: HeavyAllocator, store: HeavyStore) -> None:
    desc = _export(alloc, 1.0)
    store.validate(desc)
    store.reject(desc)
    assert _files(ns) == [] and store.stats()["pooled"] == 1


def test_reused_segment_refuses_the_stale_descriptor(alloc: HeavyAllocator,
                                                     store: HeavyStore) -> None:
    old = _export(alloc, 1.0)
    store.commit("heavy.x", old)
    store.commit("heavy.x", _export(alloc, 2.0))
    fresh = _export(alloc, 3.0)  # claims the pooled segment: new name, newer generation
    assert fresh["gen"] > old["gen"]
    with pytest.raises(HeavyError, match="missing"):
        store.validate(old)
    with pytest.raises(HeavyError, match="stale generation"):
        store.validate({**fresh, "gen": old["gen"]})


def test_restart_reattaches_committed_segments(ns: str, alloc: HeavyAllocator) -> None:
    first = HeavyStore(ns)
    desc = _export(alloc, 6.0)
    first.commit("heavy.x", desc)
    first.close()
    second = HeavyStore(ns)
    try:
        gone = {**_export(alloc, 1.0), "seg": "4242-1-1"}
        failed = second.reattach({"heavy.x": desc, "heavy.gone": gone})
        assert list(failed) == ["heavy.gone"] and "missing" in failed["heavy.gone"]
        assert second.reclaim() == 0
        assert float(second.get("heavy.x")[0]) == 6.0
    finally:
        second.destroy()


def test_pool_is_bounded(ns: str, alloc: HeavyAllocator) -> None:
    store = HeavyStore(ns, pool_max_bytes=0)
    try:
        store.commit("heavy.x", _export(alloc, 1.0))
        store.commit("heavy.x", _export(alloc, 2.0))
        assert store.stats()["pooled"] == 0 and len(_files(ns)) == 1
        assert os.listdir(namespace_dir(ns) / POOL_DIR) == []
    finally:
        store.destroy()


def test_inline_values_and_heavy_stats(alloc: HeavyAllocator, store: HeavyStore) -> None:
    small = alloc.export(np.ones(4, dtype=np.complex64))
    store.commit("heavy.small", small)
    assert store.get("heavy.small") is None
    assert np.array_equal(store.validate(small), np.ones(4, dtype=np.complex64))
    with pytest.raises(HeavyError, match="inline data has"):
        store.validate({**small, "inline": b"\x00"})
    stats = store.stats()
    assert stats["segments"] == 0 and stats["committed"] == 0
    assert segment.size_class(1) == segment.mmap.PAGESIZE
