"""Worker side: allocate arrays in shared memory, export them as descriptors.

`HeavyAllocator.alloc(shape, dtype)` returns a writable numpy array backed by one segment
(one segment per array, data page aligned). `export(array)` turns an array returned by a
process into its wire descriptor:

* below `inline_threshold_bytes` it travels inline (`{"inline", "dtype", "shape"}`): a
  segment's fixed costs (files, mappings, a header page, lifecycle bookkeeping) outweigh
  copying a few KiB through the message; see `bench.bench_inline` for the measurement;
* a C- or F-contiguous array that lies in a segment from `alloc` is exported in place
  (no copy): only its descriptor travels;
* anything else (a numpy array from elsewhere, a strided view) is copied once into a fresh
  segment, then exported.

After export the worker can no longer change the bytes:

* the segment's pages are `mprotect`ed read-only in this process, so any write through any
  array or view of it faults (the kernel enforces it, not a numpy flag); views taken before
  export still *claim* to be writable, and a write through one kills the worker with SIGSEGV
  (its task is then redelivered) rather than corrupting the value the sink audits;
* the array returned by `alloc` and the exported view are flagged read-only, so the common
  mistake (`out[...] = x` after returning `out`) raises ValueError instead;
* limit: this guards against bugs, not against a hostile worker. A process running as the
  same user can open the file again, or mprotect the pages back. Isolation from a hostile
  worker needs another uid for the sink (it would copy into its own segments) or memfd
  seals, which cannot travel over ZeroMQ.

While the exported array (or any view of it) is alive in the worker, the worker holds a
reader lease on the segment, so the sink will not recycle it under the worker's feet.

Pooling: a segment goes back to a pool (the namespace's `pool/` directory, or this
allocator's private free list for arrays that were never exported) instead of being
unlinked; its pages stay touched. `alloc` takes a segment of the same size class from the
private list, else claims one from the pool by `rename` (atomic across processes),
preferring one it still has mapped (no page faults at all), else creates one with
MAP_POPULATE (the page faults are paid once, in the kernel, at creation).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import HeavyError
from pipeline.heavy import descriptor, names, segment
from pipeline.heavy.reader import HeavyReader

log = logging.getLogger(__name__)

# Measured with bench.bench_inline (see docs/HEAVY.md): below ~64 KiB the inline path
# (tobytes + msgpack + frombuffer) costs less than a segment's round trip.
INLINE_THRESHOLD = 64 * 1024


@dataclass
class _Slot:
    name: str
    mapped: segment.Mapped
    gen: int
    anchor: weakref.ref[np.ndarray] | None = None


class HeavyAllocator:
    """Allocates shared-memory arrays for one worker process and exports them."""

    def __init__(self, namespace: str, *, inline_threshold_bytes: int = INLINE_THRESHOLD,
                 root: Path = names.SHM_ROOT, populate: bool = True, keep_mapped: int = 16,
                 max_private_bytes: int = 1 << 30) -> None:
        self.namespace = names.check_namespace(namespace)
        self.inline_threshold_bytes = inline_threshold_bytes
        path = names.ensure_namespace(namespace, root)
        self._dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._pool_fd = os.open(path / names.POOL_DIR, os.O_RDONLY | os.O_DIRECTORY)
        self._populate = populate
        self._keep_mapped = keep_mapped
        self._max_private = max_private_bytes
        self._live: dict[str, _Slot] = {}
        self._free: list[_Slot] = []
        self._parked: OrderedDict[tuple[int, int], segment.Mapped] = OrderedDict()
        self._unsealed: list[segment.Mapped] = []
        self._dead: deque[str] = deque()
        self._lock = threading.RLock()
        self._reader = HeavyReader(namespace, root=root)
        self._closed = False

    # -- public API ---------------------------------------------------------------------

    def alloc(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        """A writable array of `shape` and `dtype` in shared memory (contents undefined)."""
        dt = np.dtype(dtype)
        descriptor.check_dtype(dt.str)
        dims = descriptor.check_shape(list(shape) if np.iterable(shape) else [shape])
        with self._lock:
            self._seal_locked()  # a parked mapping may be reused: seal what is pending first
            return self._alloc(dims, dt)[1]

    def export(self, array: Any, *, defer_seal: bool = False) -> dict[str, Any]:
        """The wire descriptor of `array`; afterwards this process cannot change its bytes.

        The arrays are flagged read-only at once. The pages are made read-only (mprotect,
        O(pages): about 2 ms per 100 MB here) at once too, or, with `defer_seal`, at the next
        `seal()`: the worker runtime seals when the update's COMMIT comes back, before any
        further task code runs, or 50 ms after the send, whichever is first, which takes the
        mprotect off the commit's critical path (docs/HEAVY.md). Only a thread the process
        itself left running could write in that window."""
        arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        descriptor.dtype_of(arr)
        if arr.nbytes < self.inline_threshold_bytes:
            return descriptor.encode_inline(arr)
        with self._lock:
            self._check_open()
            owned = self._owner(arr)
            if owned is None:
                slot, copy = self._alloc(arr.shape, arr.dtype)
                copy[...] = arr
                return self._export(slot, segment.HEADER, copy, defer_seal)
            return self._export(*owned, arr, defer_seal)

    def seal(self) -> None:
        """mprotect, read-only, every segment exported with `defer_seal` since the last call."""
        with self._lock:
            self._seal_locked()

    def _seal_locked(self) -> None:
        while self._unsealed:
            self._unsealed.pop().protect(readonly=True)

    def open(self, desc: Mapping[str, Any]) -> np.ndarray:
        """A read-only zero-copy array for a heavy input descriptor (see HeavyReader)."""
        return self._reader.open_array(desc)

    def reserve(self, nbytes: int, count: int = 1) -> None:
        """Put `count` pre-touched segments for arrays of `nbytes` into the pool."""
        capacity = segment.size_class(nbytes)
        for _ in range(count):
            mapped = segment.create(self._dir_fd, capacity, populate=True)
            segment.free(self._dir_fd, self._pool_fd, mapped.name, mapped.fd)
            self._park(mapped)

    def stats(self) -> dict[str, int]:
        """Counts of live (handed out, not exported), private free and parked mappings."""
        with self._lock:
            self._collect()
            return {"live": len(self._live), "free": len(self._free),
                    "parked": len(self._parked)}

    def close(self) -> None:
        """Return free segments to the pool and drop mappings. Live arrays stay valid."""
        with self._lock:
            if self._closed:
                return
            self._seal_locked()
            self._collect()
            for slot in self._free:
                segment.free(self._dir_fd, self._pool_fd, slot.name, slot.mapped.fd)
                slot.mapped.close()
            self._free.clear()
            for mapped in self._parked.values():
                mapped.close()
            self._parked.clear()
            if self._live:
                log.info("heavy allocator closed with %d live arrays", len(self._live))
            self._reader.close()
            os.close(self._pool_fd)
            os.close(self._dir_fd)
            self._closed = True

    def __enter__(self) -> HeavyAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _alloc(self, dims: tuple[int, ...], dt: np.dtype) -> tuple[_Slot, np.ndarray]:
        self._check_open()
        self._collect()
        capacity = segment.size_class(math.prod(dims) * dt.itemsize)
        slot = self._take_free(capacity) or self._claim(capacity) or self._create(capacity)
        arr: np.ndarray = np.ndarray(dims, dt, buffer=slot.mapped.mm, offset=segment.HEADER)
        slot.anchor = weakref.ref(arr)
        weakref.finalize(arr, self._dead.append, slot.name)
        self._live[slot.name] = slot
        return slot, arr

    # -- export -------------------------------------------------------------------------

    def _owner(self, arr: np.ndarray) -> tuple[_Slot, int] | None:
        """The live, unexported slot whose data region holds all of a contiguous `arr`, and
        the array's byte offset in that segment."""
        for slot in self._live.values():  # the usual case: the very array `alloc` returned
            if slot.anchor is not None and slot.anchor() is arr:
                return slot, segment.HEADER
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            return None
        ptr = arr.__array_interface__["data"][0]
        for slot in self._live.values():
            start = slot.mapped.addr + segment.HEADER
            if start <= ptr and ptr + arr.nbytes <= start + slot.mapped.capacity:
                return slot, ptr - slot.mapped.addr
        return None

    def _export(self, slot: _Slot, off: int, arr: np.ndarray, defer_seal: bool
                ) -> dict[str, Any]:
        anchor = slot.anchor() if slot.anchor is not None else None
        if anchor is None:
            raise HeavyError(f"segment {slot.name} has no live array to export")
        desc = descriptor.encode_segment(slot.name, slot.gen, off, arr)
        self._lease(slot.name, anchor)
        if defer_seal:
            self._unsealed.append(slot.mapped)
        else:
            slot.mapped.protect(readonly=True)
        anchor.flags.writeable = False
        arr.flags.writeable = False
        del self._live[slot.name]
        self._park(slot.mapped)
        return desc

    def _lease(self, name: str, anchor: np.ndarray) -> None:
        fd = segment.open_segment(self._dir_fd, name)
        fcntl.flock(fd, fcntl.LOCK_SH)
        weakref.finalize(anchor, os.close, fd)

    # -- segments -----------------------------------------------------------------------

    def _collect(self) -> None:
        """Arrays that died unexported: their segments go to the private free list."""
        while self._dead:
            slot = self._live.pop(self._dead.popleft(), None)
            if slot is not None:
                slot.anchor = None
                self._free.append(slot)
        self._trim_free()
        self._prune_parked()

    def _trim_free(self) -> None:
        while sum(s.mapped.size for s in self._free) > self._max_private:
            slot = self._free.pop(0)
            segment.free(self._dir_fd, self._pool_fd, slot.name, slot.mapped.fd)
            self._park(slot.mapped)

    def _take_free(self, capacity: int) -> _Slot | None:
        for i, slot in enumerate(self._free):
            if slot.mapped.capacity == capacity:
                del self._free[i]
                slot.gen = segment.bump_generation(slot.mapped.fd, slot.name)
                return slot
        return None

    def _claim(self, capacity: int) -> _Slot | None:
        got = segment.claim(self._dir_fd, self._pool_fd, capacity, frozenset(self._parked))
        if got is None:
            return None
        name, fd = got
        st = os.fstat(fd)
        mapped = self._parked.pop((st.st_dev, st.st_ino), None)
        if mapped is not None and mapped.size == st.st_size:
            os.close(mapped.fd)
            mapped.fd, mapped.name = fd, name
            mapped.protect(readonly=False)
        else:
            if mapped is not None:
                mapped.close()
            mapped = segment.map_fd(name, fd, writable=True, populate=self._populate)
        gen, _ = segment.read_header(fd, name)
        return _Slot(name, mapped, gen)

    def _create(self, capacity: int) -> _Slot:
        mapped = segment.create(self._dir_fd, capacity, populate=self._populate)
        return _Slot(mapped.name, mapped, 1)

    def _park(self, mapped: segment.Mapped) -> None:
        """Keep an exported or pooled mapping, so that claiming it back costs no faults."""
        self._parked[mapped.ino] = mapped
        self._parked.move_to_end(mapped.ino)
        while len(self._parked) > self._keep_mapped:
            self._parked.popitem(last=False)[1].close()

    def _prune_parked(self) -> None:
        """Drop mappings of segments that were unlinked (they would pin freed memory)."""
        for key, mapped in list(self._parked.items()):
            if os.fstat(mapped.fd).st_nlink == 0:
                del self._parked[key]
                mapped.close()

    def _check_open(self) -> None:
        if self._closed:
            raise HeavyError("heavy allocator is closed")

