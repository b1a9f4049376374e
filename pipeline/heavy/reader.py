"""Readers: descriptors to read-only, zero-copy numpy arrays, each backed by a lease.

`HeavyReader.open_array(desc)` maps the segment read-only (PROT_READ, so writing to the
array raises ValueError, and even a forced write through a raw pointer faults) and returns
a view of it. No byte is copied.

Lease: the reader opens the segment file and takes `flock(LOCK_SH)` before it checks the
segment's generation; it keeps that open file (and so the lock) for exactly as long as the
mapping lives, and the mapping lives for as long as any array built on it (numpy keeps the
`mmap` object as the arrays' base). When the last such array is garbage, the mapping is
unmapped and the file closed, which drops the lease. The sink frees a superseded segment
only when it can take LOCK_EX without blocking, so a value that a reader still holds is
never recycled under it. If the reader process dies, the kernel drops its locks.

Mappings are cached by (segment, generation) while alive; `keep_idle` keeps the last few
mappings (and their leases) after their arrays are gone, so that re-opening a hot value
costs nothing; those idle leases delay freeing, which is why the default is 0.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import HeavyError
from pipeline.heavy import descriptor, names, segment

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 40


class HeavyReader:
    """Opens heavy descriptors of one namespace as read-only arrays."""

    def __init__(self, namespace: str, *, root: Path = names.SHM_ROOT, keep_idle: int = 0,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.namespace = names.check_namespace(namespace)
        self._dir = names.namespace_dir(namespace, root)
        self._dir_fd: int | None = None
        self._keep_idle = keep_idle
        self._max_bytes = max_bytes
        self._live: dict[tuple[str, int], weakref.ref[mmap.mmap]] = {}
        self._idle: OrderedDict[tuple[str, int], mmap.mmap] = OrderedDict()
        self._lock = threading.Lock()

    def open_array(self, desc: Mapping[str, Any]) -> np.ndarray:
        """A read-only zero-copy array for `desc` (inline descriptors are decoded)."""
        if not isinstance(desc, Mapping):
            raise HeavyError(f"descriptor must be a map, got {type(desc).__name__}")
        descriptor.check_namespace_field(desc, self.namespace)
        if descriptor.is_inline(desc):
            return descriptor.parse_inline(desc, self._max_bytes)
        ref = descriptor.parse_segment(desc, self._max_bytes)
        mm = self._mapping(ref)
        lay = ref.layout
        return np.ndarray(lay.shape, lay.dtype, buffer=mm, offset=ref.off, strides=lay.strides)

    open = open_array

    def leased(self) -> list[str]:
        """Names of the segments this reader currently holds a lease on."""
        with self._lock:
            return sorted(seg for (seg, _), r in self._live.items() if r() is not None)

    def close(self) -> None:
        """Drop idle mappings; leases of arrays still alive end when those arrays go."""
        with self._lock:
            self._idle.clear()
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

    def _mapping(self, ref: descriptor.SegmentRef) -> mmap.mmap:
        key = (ref.seg, ref.gen)
        with self._lock:
            alive = self._live.get(key)
            mm = alive() if alive is not None else None
            if mm is None:
                mm = self._map(ref)
                self._live[key] = weakref.ref(mm)
            elif ref.off + ref.length > len(mm):
                raise HeavyError(f"off {ref.off} + len {ref.length} runs past the end of "
                                 f"segment {ref.seg} ({len(mm)} bytes)")
            self._remember(key, mm)
            return mm

    def _remember(self, key: tuple[str, int], mm: mmap.mmap) -> None:
        if self._keep_idle <= 0:
            return
        self._idle[key] = mm
        self._idle.move_to_end(key)
        while len(self._idle) > self._keep_idle:
            self._idle.popitem(last=False)

    def _map(self, ref: descriptor.SegmentRef) -> mmap.mmap:
        fd = segment.open_segment(self._namespace_fd(), ref.seg)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = segment.check_file(ref.seg, os.fstat(fd))
            gen, _ = segment.read_header(fd, ref.seg)
            descriptor.check_bounds(ref, st.st_size, gen, segment.HEADER)
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        weakref.finalize(mm, _release, fd, self._live, (ref.seg, ref.gen))
        return mm

    def _namespace_fd(self) -> int:
        if self._dir_fd is None:
            try:
                self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as exc:
                raise HeavyError(f"heavy namespace {self.namespace!r} is not available "
                                 f"({self._dir}: {exc.strerror})") from None
        return self._dir_fd


def _release(fd: int, live: dict[tuple[str, int], Any], key: tuple[str, int]) -> None:
    """Finalizer of a reader mapping: closing the file drops the lease."""
    os.close(fd)
    ref = live.get(key)
    if ref is not None and ref() is None:
        live.pop(key, None)


_readers: dict[tuple[int, str], HeavyReader] = {}
_readers_lock = threading.Lock()


def open_array(desc: Mapping[str, Any], namespace: str) -> np.ndarray:
    """A read-only zero-copy array for `desc` in `namespace` (one reader per process)."""
    key = (os.getpid(), namespace)
    with _readers_lock:
        reader = _readers.get(key)
        if reader is None:
            reader = _readers[key] = HeavyReader(namespace)
    return reader.open_array(desc)


def close_readers() -> None:
    """Close this process's default readers (tests; shutdown)."""
    with _readers_lock:
        for reader in _readers.values():
            reader.close()
        _readers.clear()
