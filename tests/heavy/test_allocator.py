"""Worker side: segments, alloc, export (in place, copied, inline), protection, pooling."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import HeavyError
from pipeline.heavy import HeavyAllocator, HeavyStore, names, segment
from pipeline.heavy.names import namespace_dir


def _inodes(ns: str) -> set[int]:
    path = namespace_dir(ns)
    found = {p.stat().st_ino for p in path.iterdir() if p.is_file()}
    return found | {p.stat().st_ino for p in (path / names.POOL_DIR).iterdir()}


def test_namespace_names_are_checked() -> None:
    for bad in ("", "a/b", "..", "x" * 65, "a b", "é"):
        with pytest.raises(HeavyError, match="invalid heavy namespace"):
            names.check_namespace(bad)


def test_segment_file_is_private_and_names_its_owner(ns: str, alloc: HeavyAllocator) -> None:
    alloc.alloc((10,), "int32")
    path = namespace_dir(ns)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (seg,) = [p for p in path.iterdir() if p.is_file()]
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    owner = names.segment_owner(seg.name)
    assert owner == names.current_owner()
    stat_line = Path("/proc/self/stat").read_text()
    assert owner.start == int(stat_line.rsplit(")", 1)[1].split()[19])


def test_recycled_pid_is_not_alive() -> None:
    me = names.current_owner()
    assert names.is_alive(me)
    assert not names.is_alive(names.Owner(me.pid, me.start + 1))


def test_alloc_is_writable_shared_memory_and_export_is_zero_copy(
        alloc: HeavyAllocator, store: HeavyStore) -> None:
    a = alloc.alloc((256, 64), "float32")
    assert a.flags.writeable and not a.flags.owndata
    a[:] = 2.5
    desc = alloc.export(a)
    assert set(desc) == {"seg", "off", "len", "dtype", "shape", "strides", "gen"}
    assert (desc["dtype"], desc["shape"], desc["len"]) == ("<f4", [256, 64], a.nbytes)
    assert desc["off"] % segment.HEADER == 0
    view = store.validate(desc)
    assert float(view.sum()) == 2.5 * a.size
    assert isinstance(view.base, segment.mmap.mmap)


def test_plain_write_after_export_raises(alloc: HeavyAllocator) -> None:
    a = alloc.alloc((100_000,))
    view = a[10:20]
    alloc.export(a)
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1.0
    assert view.flags.writeable  # taken before export; mprotect guards it (see child test)


def test_worker_cannot_change_bytes_after_export(ns: str, store: HeavyStore, spawn) -> None:
    child = spawn("export", ns, "100000")
    desc = child.recv()
    view = store.validate(desc)
    child.send("write")
    assert child.recv() == {"plain_write": "ValueError"}
    assert child.finish() == -signal.SIGSEGV
    assert view[0] == 0.0 and view[-1] == 99_999.0


def test_foreign_and_strided_arrays_are_copied_once(alloc: HeavyAllocator,
                                                    store: HeavyStore) -> None:
    src = np.arange(40_000, dtype=np.int64).reshape(200, 200)
    desc = alloc.export(src)
    assert np.array_equal(store.validate(desc), src)
    own = alloc.alloc((200, 200), "int64")
    own[:] = src
    strided = alloc.export(own[:, ::2])
    assert strided["seg"] != desc["seg"] and strided["strides"] == [800, 8]
    assert np.array_equal(store.validate(strided), src[:, ::2])
    fortran = alloc.export(own.T)
    assert fortran["strides"] == [8, 1600]
    assert np.array_equal(store.validate(fortran), src.T)


def test_small_arrays_travel_inline(alloc: HeavyAllocator, store: HeavyStore, ns: str) -> None:
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    desc = alloc.export(small)
    assert desc == {"inline": small.tobytes(), "dtype": "|u1", "shape": [3, 4]}
    view = store.validate(desc)
    assert np.array_equal(view, small) and not view.flags.writeable


@pytest.mark.parametrize("dtype", ["object", ">f8", "U4", "datetime64[s]"])
def test_non_numeric_dtypes_are_refused(alloc: HeavyAllocator, dtype: str) -> None:
    with pytest.raises(HeavyError, match="not allowed"):
        alloc.alloc((4,), dtype)
    with pytest.raises(HeavyError, match="not allowed"):
        alloc.export(np.zeros(100_000, dtype=dtype))


def test_dropped_array_is_reused_privately(ns: str, alloc: HeavyAllocator) -> None:
    a = alloc.alloc((1 << 16,))
    ino = os.fstat(alloc._live[next(iter(alloc._live))].mapped.fd).st_ino
    del a
    b = alloc.alloc((1 << 16,))
    assert _inodes(ns) == {ino}
    b[:] = 1.0


def test_pool_reuse_creates_no_new_files(ns: str, alloc: HeavyAllocator,
                                         store: HeavyStore) -> None:
    seen: set[int] = set()
    for i in range(8):
        a = alloc.alloc((100_000,))
        a[:] = i
        desc = alloc.export(a)
        del a
        store.commit("heavy.x", desc)
        seen |= _inodes(ns)
    assert len(seen) == 2  # the committed value and one pooled segment, forever
    assert float(store.get("heavy.x")[0]) == 7.0
    assert store.stats()["pooled"] == 1


def test_reserve_prefills_the_pool(ns: str, alloc: HeavyAllocator, store: HeavyStore) -> None:
    alloc.reserve(8 << 20, count=2)
    assert store.stats()["pooled"] == 2
    before = _inodes(ns)
    alloc.alloc((1 << 20,))
    assert _inodes(ns) == before and store.stats()["pooled"] == 1


def test_exporting_twice_copies_the_second_time(alloc: HeavyAllocator,
                                                 store: HeavyStore) -> None:
    a = alloc.alloc((100_000,))
    a[:] = 9.0
    first, second = alloc.export(a), alloc.export(a)
    assert first["seg"] != second["seg"]
    store.commit("heavy.a", first)
    store.commit("heavy.b", second)
    assert float(store.get("heavy.b")[-1]) == 9.0


def test_closed_allocator_refuses_work(ns: str, store: HeavyStore) -> None:
    al = HeavyAllocator(ns)
    al.close()
    with pytest.raises(HeavyError, match="closed"):
        al.alloc((4,))
