"""Segment files: create, map, protect, lock, free into the pool, claim from the pool.

A segment is one regular file in the namespace directory, mode 0600::

    bytes [0, HEADER)             header: magic "PLHEAVY1", generation (u64), capacity (u64)
    bytes [HEADER, HEADER + cap)  data: one array, page aligned

The generation is bumped every time the segment changes hands (freed by the sink, claimed
by an allocator), always while the freer holds an exclusive flock, so a reader that locks
the file (shared) and then reads the header sees either the generation its descriptor names
or a newer one, never a recycled segment under an old name.

Leases are `flock` locks: a reader holds LOCK_SH on an open file description for as long as
it maps the segment; the kernel drops the lock when the reader exits, however it exits. The
sink frees a segment only after it takes LOCK_EX without blocking.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field

from pipeline.errors import HeavyError
from pipeline.heavy import names

log = logging.getLogger(__name__)

HEADER = max(4096, mmap.PAGESIZE)
MAGIC = b"PLHEAVY1"
_HDR = struct.Struct("<8sQQ")
_GEN = struct.Struct("<Q")
_GEN_OFF = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int

OPEN_RO = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_RW = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def size_class(nbytes: int) -> int:
    """Data capacity for an array of `nbytes`: whole pages, at most ~12.5 % slack above 1 MiB.

    Pooled segments are matched by exact capacity, so the classes are coarse enough that a
    freed segment fits the next array of roughly the same size.
    """
    page = mmap.PAGESIZE
    n = max(int(nbytes), 1)
    if n > 1 << 20:
        page = 1 << (n.bit_length() - 4)
    return -(-n // page) * page


@dataclass
class Mapped:
    """An open, mapped segment (read-write or read-only)."""

    name: str
    fd: int
    mm: mmap.mmap
    size: int
    ino: tuple[int, int]
    writable: bool
    addr: int = field(default=0)

    @property
    def capacity(self) -> int:
        return self.size - HEADER

    def protect(self, readonly: bool) -> None:
        """mprotect the whole mapping read-only (or back to read-write)."""
        if not self.writable:
            return
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        if _libc.mprotect(self.addr, self.size, prot) != 0:
            err = ctypes.get_errno()
            raise HeavyError(f"mprotect of segment {self.name} failed: {os.strerror(err)}")

    def close(self) -> None:
        """Unmap (unless numpy arrays still use the mapping) and close the fd."""
        try:
            self.mm.close()
        except BufferError:
            log.debug("segment %s still has live arrays; unmapped when they go", self.name)
        os.close(self.fd)


def _address(mm: mmap.mmap) -> int:
    probe = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe


def map_fd(name: str, fd: int, *, writable: bool, populate: bool = False) -> Mapped:
    """Map the whole segment behind `fd` (checks that it is a private regular file)."""
    st = check_file(name, os.fstat(fd))
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    mm = mmap.mmap(fd, st.st_size, flags=flags, prot=prot)
    m = Mapped(name, fd, mm, st.st_size, (st.st_dev, st.st_ino), writable)
    if writable:
        m.addr = _address(mm)
    return m


def check_file(name: str, st: os.stat_result) -> os.stat_result:
    """Refuse anything but a regular file of ours, mode 0600, with room for a header."""
    if not stat.S_ISREG(st.st_mode):
        raise HeavyError(f"segment {name} is not a regular file")
    if st.st_uid != os.geteuid():
        raise HeavyError(f"segment {name} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        raise HeavyError(f"segment {name} is open to other users (mode {st.st_mode & 0o777:o})")
    if st.st_size < HEADER + 1:
        raise HeavyError(f"segment {name} is truncated ({st.st_size} bytes, no data)")
    return st


def create(dir_fd: int, capacity: int, *, populate: bool = True) -> Mapped:
    """Create a new segment of `capacity` data bytes owned by this process, generation 1."""
    name = names.new_segment_name()
    fd = os.open(name, OPEN_RW | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, HEADER + capacity)
        os.pwrite(fd, _HDR.pack(MAGIC, 1, capacity), 0)
        return map_fd(name, fd, writable=True, populate=populate)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise


def open_segment(dir_fd: int, name: str, *, writable: bool = False) -> int:
    """Open a segment by name inside the namespace directory (no symlinks, no escapes)."""
    names.check_segment_name(name)
    try:
        return os.open(name, OPEN_RW if writable else OPEN_RO, dir_fd=dir_fd)
    except FileNotFoundError:
        raise HeavyError(f"segment {name} is missing (freed, recycled or never existed)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HeavyError(f"segment {name} is a symlink") from None
        raise HeavyError(f"cannot open segment {name}: {exc.strerror}") from None


def read_header(fd: int, name: str) -> tuple[int, int]:
    """(generation, capacity) from the segment header; HeavyError if it is not one of ours."""
    raw = os.pread(fd, _HDR.size, 0)
    if len(raw) != _HDR.size:
        raise HeavyError(f"segment {name} has no header")
    magic, gen, capacity = _HDR.unpack(raw)
    if magic != MAGIC:
        raise HeavyError(f"segment {name} has a bad header (not a heavy-zone segment)")
    return gen, capacity


def bump_generation(fd: int, name: str) -> int:
    """Increase the segment's generation by one; return the new generation."""
    gen, _ = read_header(fd, name)
    os.pwrite(fd, _GEN.pack(gen + 1), _GEN_OFF)
    return gen + 1


def try_lock_exclusive(fd: int) -> bool:
    """LOCK_EX without blocking: True if no reader holds a lease on the segment."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    """Drop this open file's flock."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def free(dir_fd: int, pool_fd: int | None, name: str, fd: int) -> bool:
    """Free segment `name` (open as `fd`) if no reader leases it: into the pool, or unlink.

    With `pool_fd` the segment keeps its touched pages and moves to the pool; with None it
    is unlinked. Returns False (and leaves it alone) while a reader holds a lease. The
    caller still owns `fd`; closing it drops our exclusive lock.
    """
    if not try_lock_exclusive(fd):
        return False
    try:
        if not _same_file(dir_fd, name, fd):
            return True
        bump_generation(fd, name)
        if pool_fd is None:
            os.unlink(name, dir_fd=dir_fd)
        else:
            capacity = os.fstat(fd).st_size - HEADER
            dst = names.pool_name(capacity, name)
            os.rename(name, dst, src_dir_fd=dir_fd, dst_dir_fd=pool_fd)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _same_file(dir_fd: int, name: str, fd: int) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def claim(dir_fd: int, pool_fd: int, capacity: int,
          prefer: frozenset[tuple[int, int]] = frozenset()) -> tuple[str, int] | None:
    """Atomically take a pooled segment of exactly `capacity` data bytes.

    The pool entry is renamed to a fresh name owned by this process (rename is atomic: of
    two claimers one wins, the other moves on) and its generation is bumped. Segments whose
    (dev, inode) is in `prefer` (already mapped here, so free of page faults) go first.
    Returns (name, fd opened read-write) or None when the pool has nothing that fits.
    """
    for entry in _candidates(pool_fd, capacity, prefer):
        name = names.new_segment_name()
        try:
            os.rename(entry, name, src_dir_fd=pool_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        fd = os.open(name, OPEN_RW, dir_fd=dir_fd)
        bump_generation(fd, name)
        return name, fd
    return None


def _candidates(pool_fd: int, capacity: int, prefer: frozenset[tuple[int, int]]) -> list[str]:
    first: list[str] = []
    rest: list[str] = []
    dev = os.fstat(pool_fd).st_dev
    with os.scandir(pool_fd) as it:
        for entry in it:
            parsed = names.parse_pool_name(entry.name)
            if parsed is None or parsed[0] != capacity:
                continue
            (first if (dev, entry.inode()) in prefer else rest).append(entry.name)
    return first + rest


def pooled(pool_fd: int) -> list[tuple[str, int]]:
    """(entry name, capacity) of every segment in the pool."""
    out = []
    with os.scandir(pool_fd) as it:
        for entry in it:
            parsed = names.parse_pool_name(entry.name)
            if parsed is not None:
                out.append((entry.name, parsed[0]))
    return out
