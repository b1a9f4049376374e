"""Sink side: validate untrusted descriptors, own committed segments, free what is done.

Life of a segment, as the sink sees it::

    worker alloc -> export --UPDATE--> validate -> commit(key)   -> committed (owned here)
                                               \\-> reject        -> freed
    commit(key) again with a new segment       -> the old one is superseded -> freed once
                                                  no reader holds a lease (flock LOCK_SH)
    owner process dead, segment not committed  -> reclaim() frees it

"Freed" means: bump the generation under an exclusive flock, then move the file into the
namespace's pool (keeping its touched pages for the next `alloc`) while the pool holds less
than `pool_max_bytes`, else unlink it.

Ownership is the sink's registry, not the file name: a committed segment keeps the name
its creator gave it (the name is in the committed descriptor that readers hold). `reclaim`
never frees a committed, superseded-but-leased or staged segment. After a restart the sink
must call `reattach` with its recovered state *before* `reclaim`, or the committed segments
of workers that have since died would look like orphans.

Trust boundary: workers run as the same user as the sink. Descriptors are fully checked,
the sink maps only regular files in its own namespace directory, and maps them read-only.
A hostile same-user process could still truncate a segment the sink has mapped (the sink
would then take SIGBUS when it reads) or rewrite it after it was audited; separating them
needs different uids and a copy into the sink's own segments.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import HeavyError
from pipeline.heavy import descriptor, names, segment

log = logging.getLogger(__name__)

DEFAULT_POOL_MAX_BYTES = 1 << 30
DEFAULT_MAX_BYTES = 1 << 40
MAX_STAGED = 256


class Held:
    """A segment the store holds open (read-write, for the flock and the generation bump).
    It is mapped, read-only, only when a view of it is asked for: vetting and committing
    need the file, not its pages."""

    __slots__ = ("_mm", "fd", "name", "size")

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name, self.fd, self.size = name, fd, size
        self._mm: mmap.mmap | None = None

    def mapping(self) -> mmap.mmap:
        if self._mm is None:
            self._mm = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        return self._mm

    def close(self) -> None:
        """Unmap (unless views still use the mapping: then when they go) and close the fd."""
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                log.debug("segment %s still has live views; unmapped when they go", self.name)
        os.close(self.fd)


class HeavyStore:
    """The sink's view of one namespace: committed segments, pending frees, the pool."""

    def __init__(self, namespace: str, *, root: Path = names.SHM_ROOT,
                 pool_max_bytes: int = DEFAULT_POOL_MAX_BYTES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.namespace = names.check_namespace(namespace)
        self._path = names.ensure_namespace(namespace, root)
        self._dir_fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._pool_fd = os.open(self._path / names.POOL_DIR, os.O_RDONLY | os.O_DIRECTORY)
        self.pool_max_bytes = pool_max_bytes
        self.max_bytes = max_bytes
        self._committed: dict[str, Held] = {}
        self._refs: dict[str, descriptor.SegmentRef] = {}
        self._by_seg: dict[str, str] = {}
        self._pending: dict[str, Held] = {}
        self._staged: OrderedDict[str, Held] = OrderedDict()
        self._closed = False

    # -- decisions ----------------------------------------------------------------------

    def validate(self, desc: Any) -> np.ndarray:
        """Check an untrusted descriptor; return a read-only zero-copy view of its array."""
        self._check_open()
        if _inline(desc, self.namespace):
            return descriptor.parse_inline(desc, self.max_bytes)
        ref, held = self._check(desc)
        return _view(ref, held)

    def vet(self, desc: Any) -> None:
        """`validate` without the view: every check, but the segment is not mapped here (the
        sink's engine maps it itself when array rules read it). HeavyError if it fails."""
        self._check_open()
        if _inline(desc, self.namespace):
            descriptor.parse_inline(desc, self.max_bytes)
            return
        self._check(desc)

    def commit(self, key: str, desc: Any) -> None:
        """Take ownership of `desc`'s segment as `key`'s value; supersede the previous one."""
        self._check_open()
        if _inline(desc, self.namespace):
            descriptor.parse_inline(desc, self.max_bytes)
            self._supersede(key, None)
            return
        ref = descriptor.parse_segment(desc, self.max_bytes)
        current = self._committed.get(key)
        if current is not None and current.name == ref.seg:
            return
        ref, held = self._check(desc)
        self._staged.pop(ref.seg, None)
        self._supersede(key, held)
        self._refs[key] = ref

    def reject(self, desc: Any) -> None:
        """Free the segment of a rejected update (never a committed one)."""
        self._check_open()
        if not isinstance(desc, Mapping) or descriptor.is_inline(desc):
            return
        try:
            ref, held = self._check(desc)
        except HeavyError as exc:
            log.info("reject: nothing to free for %s: %s", str(desc.get("seg"))[:64], exc)
            return
        self._staged.pop(ref.seg, None)
        self._pending[ref.seg] = held
        self.collect()

    def get(self, key: str) -> np.ndarray | None:
        """The committed array of `key` (read-only view), or None if it has no segment."""
        held, ref = self._committed.get(key), self._refs.get(key)
        return None if held is None or ref is None else _view(ref, held)

    def committed(self) -> dict[str, str]:
        """key -> segment name of every committed segment value."""
        return {key: held.name for key, held in self._committed.items()}

    # -- lifetime -----------------------------------------------------------------------

    def collect(self) -> int:
        """Free superseded and rejected segments that no reader leases; return how many."""
        freed = 0
        budget = self.pool_max_bytes - self._pooled_bytes()
        for name, held in list(self._pending.items()):
            to_pool = held.size <= budget
            pool_fd = self._pool_fd if to_pool else None
            if segment.free(self._dir_fd, pool_fd, name, held.fd):
                budget -= held.size if to_pool else 0
                del self._pending[name]
                held.close()
                freed += 1
        return freed

    def reclaim(self) -> int:
        """Free segments of dead owners that the committed state does not reference."""
        self._check_open()
        freed = self.collect()
        for name in self._orphans():
            freed += self._free_orphan(name)
        self._trim_pool()
        if freed:
            log.info("heavy reclaim freed %d segments in namespace %s", freed, self.namespace)
        return freed

    def reattach(self, descs: Mapping[str, Any]) -> dict[str, str]:
        """Re-adopt committed segments after a restart; return {key: reason} of failures."""
        self._check_open()
        failed: dict[str, str] = {}
        for key, desc in descs.items():
            if descriptor.is_inline(desc):
                continue
            try:
                ref, held = self._check(desc)
            except HeavyError as exc:
                failed[key] = str(exc)
                log.warning("heavy reattach of %s failed: %s", key, exc)
                continue
            self._staged.pop(held.name, None)
            self._supersede(key, held)
            self._refs[key] = ref
        return failed

    def stats(self) -> dict[str, int]:
        """Segments and bytes in the namespace, committed, pending, pooled, leased."""
        self._check_open()
        segs = [e for e in os.scandir(self._dir_fd) if names.SEGMENT_RE.fullmatch(e.name)]
        pooled = segment.pooled(self._pool_fd)
        return {
            "segments": len(segs),
            "bytes": sum(e.stat(follow_symlinks=False).st_size for e in segs),
            "committed": len(self._committed),
            "pending": len(self._pending),
            "pooled": len(pooled),
            "pooled_bytes": sum(cap + segment.HEADER for _, cap in pooled),
            "leased": sum(_leased(m) for m in (*self._committed.values(),
                                               *self._pending.values())),
        }

    def close(self) -> None:
        """Drop mappings and fds. Committed segments stay for the next start (reattach)."""
        if self._closed:
            return
        self.collect()
        for held in (*self._committed.values(), *self._pending.values(), *self._staged.values()):
            held.close()
        self._committed.clear()
        self._refs.clear()
        self._by_seg.clear()
        self._pending.clear()
        self._staged.clear()
        os.close(self._pool_fd)
        os.close(self._dir_fd)
        self._closed = True

    def destroy(self) -> None:
        """Close and delete the whole namespace: every segment, the pool, the directory."""
        path = self._path
        self.close()
        purge_namespace(path)

    def __enter__(self) -> HeavyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _check(self, desc: Any) -> tuple[descriptor.SegmentRef, Held]:
        if not isinstance(desc, Mapping):
            raise HeavyError(f"descriptor must be a map, got {type(desc).__name__}")
        descriptor.check_namespace_field(desc, self.namespace)
        ref = descriptor.parse_segment(desc, self.max_bytes)
        owner = self._by_seg.get(ref.seg)
        if owner is not None:
            raise HeavyError(f"segment {ref.seg} is already committed (as {owner!r})")
        if ref.seg in self._pending:
            raise HeavyError(f"segment {ref.seg} is superseded and being freed")
        held = self._staged.get(ref.seg)
        if held is None:
            return ref, self._stage(ref)  # its header was read just now
        gen, _ = segment.read_header(held.fd, ref.seg)
        descriptor.check_bounds(ref, held.size, gen, segment.HEADER)
        return ref, held

    def _stage(self, ref: descriptor.SegmentRef) -> Held:
        fd = segment.open_segment(self._dir_fd, ref.seg, writable=True)
        try:
            st = segment.check_file(ref.seg, os.fstat(fd))
            gen, _ = segment.read_header(fd, ref.seg)
            descriptor.check_bounds(ref, st.st_size, gen, segment.HEADER)
        except BaseException:
            os.close(fd)
            raise
        held = Held(ref.seg, fd, st.st_size)
        self._staged[ref.seg] = held
        while len(self._staged) > MAX_STAGED:
            self._staged.popitem(last=False)[1].close()
        return held

    def _supersede(self, key: str, held: Held | None) -> None:
        previous = self._committed.pop(key, None)
        self._refs.pop(key, None)
        if held is not None:
            self._committed[key] = held
            self._by_seg[held.name] = key
        if previous is not None:
            del self._by_seg[previous.name]
            self._pending[previous.name] = previous
            self.collect()

    def _orphans(self) -> list[str]:
        busy = self._by_seg.keys() | self._pending.keys() | self._staged.keys()
        out = []
        with os.scandir(self._dir_fd) as it:
            for entry in it:
                if not names.SEGMENT_RE.fullmatch(entry.name) or entry.name in busy:
                    continue
                if not names.is_alive(names.segment_owner(entry.name)):
                    out.append(entry.name)
        return out

    def _free_orphan(self, name: str) -> int:
        try:
            fd = os.open(name, segment.OPEN_RW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return 0
        try:
            if os.fstat(fd).st_size < segment.HEADER + 1:
                os.unlink(name, dir_fd=self._dir_fd)
                return 1
            return int(segment.free(self._dir_fd, self._pool_or_none(fd), name, fd))
        except HeavyError as exc:
            log.warning("heavy reclaim: unlinking unreadable segment %s: %s", name, exc)
            os.unlink(name, dir_fd=self._dir_fd)
            return 1
        finally:
            os.close(fd)

    def _pool_or_none(self, fd: int) -> int | None:
        size = os.fstat(fd).st_size
        return self._pool_fd if self._pooled_bytes() + size <= self.pool_max_bytes else None

    def _pooled_bytes(self) -> int:
        return sum(cap + segment.HEADER for _, cap in segment.pooled(self._pool_fd))

    def _trim_pool(self) -> None:
        entries = segment.pooled(self._pool_fd)
        total = sum(cap + segment.HEADER for _, cap in entries)
        for name, cap in sorted(entries, key=lambda e: -e[1]):
            if total <= self.pool_max_bytes:
                break
            try:
                os.unlink(name, dir_fd=self._pool_fd)
            except FileNotFoundError:
                continue
            total -= cap + segment.HEADER

    def _check_open(self) -> None:
        if self._closed:
            raise HeavyError("heavy store is closed")


def _inline(desc: Any, namespace: str) -> bool:
    if not isinstance(desc, Mapping):
        raise HeavyError(f"descriptor must be a map, got {type(desc).__name__}")
    descriptor.check_namespace_field(desc, namespace)
    return descriptor.is_inline(desc)


def _view(ref: descriptor.SegmentRef, held: Held) -> np.ndarray:
    lay = ref.layout
    return np.ndarray(lay.shape, lay.dtype, buffer=held.mapping(), offset=ref.off,
                      strides=lay.strides)


def _leased(held: Held) -> int:
    if segment.try_lock_exclusive(held.fd):
        segment.unlock(held.fd)
        return 0
    return 1


def purge_namespace(path: Path) -> None:
    """Delete a namespace directory and everything in it (teardown; `pipeline heavy purge`)."""
    for sub in (path / names.POOL_DIR, path):
        try:
            entries = list(os.scandir(sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
        if sub != path:
            os.rmdir(sub)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)

