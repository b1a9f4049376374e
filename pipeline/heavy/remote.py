"""Heavy arrays when the worker is on another host than the sink (docs/HEAVY.md, "Across
hosts"). Pure Python: workers need no extension.

A remote worker cannot see the sink's `/dev/shm`, so:

* **outputs**: `alloc` returns an array in this process's own page-aligned anonymous memory;
  `export` hands back a *placeholder* `{frame, dtype, shape, strides}` and queues the array's
  bytes as one blob frame of the UPDATE (sent with `copy=False`: ZeroMQ reads the array's own
  memory, and keeps a reference to it until the frame is on the wire). The exported array is
  flagged read-only at once and its pages are `mprotect`ed read-only at the next `seal()`,
  as on one host. The sink copies each blob into a segment of its own (one copy: the bytes
  crossed a network) and audits and commits it as any other heavy value.
* **inputs**: a heavy key of the committed state is fetched from the sink over the `sync`
  socket (`HEAVY_REQ {key, version}` -> `HEAVY {key, version, dtype, shape, strides}` + one
  blob frame) and cached by (key, version) in a bounded LRU. The arrays are zero-copy views of
  the received frame, read-only.
* task attachments of producers on other hosts are not supported: a producer attaches arrays
  only on the sink's host; a remote worker opens such a descriptor only if the namespace
  happens to be visible here (same host), else HeavyError says why.

`placeholder_layout` checks a placeholder against its blob (the sink's side).
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import logging
import math
import mmap
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import zmq

from pipeline import protocol as proto
from pipeline.errors import DecodeError, HeavyError
from pipeline.heavy import descriptor
from pipeline.heavy.allocator import INLINE_THRESHOLD
from pipeline.heavy.segment import _libc
from pipeline.protocol import Cmd

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30
FETCH_TIMEOUT_S = 30.0
MODES = ("auto", "on", "off")


# -- the worker's choice ---------------------------------------------------------------------
def is_remote(mode: str, updates_endpoint: str) -> bool:
    """Whether a worker uses the remote heavy backend: `on`, `off`, or `auto` (remote when
    the sink's `updates` endpoint is `tcp://` to an address that is not on this host)."""
    if mode not in MODES:
        raise HeavyError(f"heavy_remote must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    parts = urlsplit(updates_endpoint)
    if parts.scheme != "tcp":
        return False  # ipc://, inproc://: the same host by construction
    host = (parts.hostname or "").strip("[]")
    return not _is_local_host(host)


def _is_local_host(host: str) -> bool:
    if host in ("", "*", "localhost"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False  # cannot tell: remote is the safe choice (it works everywhere)
    # An IPv6 address is (int, bytes), not a string, where Python was built without IPv6:
    # no interface of ours can be bound to it then.
    addrs = (info[4][0] for info in infos)
    return any(isinstance(addr, str) and _is_local_address(addr) for addr in addrs)


def _is_local_address(addr: str) -> bool:
    """True when `addr` is assigned to an interface of this host (binding to it works)."""
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((addr, 0))
        except OSError:
            return False
    return True


# -- placeholders (both sides) ---------------------------------------------------------------
def c_strides(shape: tuple[int, ...], itemsize: int) -> list[int]:
    """The C-order byte strides of `shape`."""
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return out[::-1]


def placeholder_layout(ph: Any, nframes: int, max_bytes: int
                       ) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Check an untrusted placeholder `{frame, dtype, shape, strides}` of an UPDATE of
    `nframes` frames; return (frame index, dtype, shape). The blob's length is checked by
    the caller against the returned layout (`check_blob`)."""
    if not isinstance(ph, Mapping):
        raise HeavyError(f"placeholder must be a map, got {type(ph).__name__}")
    if ph.keys() != proto.PLACEHOLDER_KEYS:
        raise HeavyError(f"placeholder must have exactly the fields "
                         f"{', '.join(sorted(proto.PLACEHOLDER_KEYS))}")
    index = ph["frame"]
    if not isinstance(index, int) or isinstance(index, bool) or \
            not proto.FIRST_BLOB_FRAME <= index < nframes:
        raise HeavyError(f"placeholder frame {str(index)[:20]} is not a blob frame of this "
                         f"message (frames {proto.FIRST_BLOB_FRAME}..{nframes - 1})")
    dtype = descriptor.check_dtype(ph["dtype"])
    shape = descriptor.check_shape(ph["shape"])
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise HeavyError(f"array of {nbytes} bytes exceeds the limit of {max_bytes}")
    strides = ph["strides"]
    if not isinstance(strides, list) or strides != c_strides(shape, dtype.itemsize):
        raise HeavyError(f"placeholder strides {str(strides)[:80]} are not the C-order strides "
                         f"of shape {list(shape)} (blobs travel in C order)")
    return index, dtype, shape


def check_blob(blob_len: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    nbytes = math.prod(shape) * dtype.itemsize
    if blob_len != nbytes:
        raise HeavyError(f"blob frame has {blob_len} bytes, shape x itemsize = {nbytes}")


# -- the worker's backend --------------------------------------------------------------------
class _Buffer:
    """Page-aligned anonymous memory behind arrays from `RemoteHeavy.alloc`."""

    __slots__ = ("addr", "mm", "size")

    def __init__(self, nbytes: int) -> None:
        self.size = max(nbytes, 1)
        self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        probe = ctypes.c_char.from_buffer(self.mm)
        try:
            self.addr = ctypes.addressof(probe)
        finally:
            del probe

    def protect(self) -> None:
        length = -(-self.size // mmap.PAGESIZE) * mmap.PAGESIZE
        if _libc.mprotect(self.addr, length, mmap.PROT_READ) != 0:
            raise HeavyError(f"mprotect failed: {ctypes.get_errno()}")


class RemoteHeavy:
    """`HeavyBackend` for a worker on another host than the sink (see the module doc)."""

    def __init__(self, ctx: zmq.Context[Any], sync_endpoint: str, *, namespace: str = "default",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, max_message_bytes: int = -1,
                 inline_threshold_bytes: int = INLINE_THRESHOLD,
                 fetch_timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._ctx = ctx
        self._endpoint = sync_endpoint
        self.namespace = namespace
        self.cache_bytes = cache_bytes
        self.inline_threshold_bytes = inline_threshold_bytes
        self._max_message_bytes = max_message_bytes
        self._fetch_timeout_s = fetch_timeout_s
        self._sock: zmq.Socket[Any] | None = None
        self._req = itertools.count(1)
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._live: dict[int, tuple[_Buffer, weakref.ref[np.ndarray]]] = {}
        self._unsealed: list[_Buffer] = []
        self._blobs: list[Any] = []
        self._reader: Any = None
        self._lock = threading.RLock()
        self.counters = {"fetches": 0, "cache_hits": 0, "blobs": 0}

    # -- outputs ------------------------------------------------------------------------
    def alloc(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        """A writable C-order array in page-aligned memory of this process."""
        dt = np.dtype(dtype)
        descriptor.check_dtype(dt.str)
        dims = descriptor.check_shape(list(shape) if np.iterable(shape) else [shape])
        with self._lock:
            self._seal_locked()
            buf = _Buffer(math.prod(dims) * dt.itemsize)
            arr: np.ndarray = np.ndarray(dims, dt, buffer=buf.mm)
            self._live[buf.addr] = (buf, weakref.ref(arr))
            weakref.finalize(arr, self._live.pop, buf.addr, None)
            return arr

    def export(self, array: Any, *, defer_seal: bool = False) -> dict[str, Any]:
        """The heavy value for `array`: inline when small, else a placeholder whose bytes
        travel as blob frame `frame` of this batch's UPDATE (see `take_frames`)."""
        arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        dtype = descriptor.dtype_of(arr)
        if arr.nbytes < self.inline_threshold_bytes:
            return descriptor.encode_inline(arr)
        with self._lock:
            buf, anchor = self._owner(arr)
            if buf is None or anchor is None:  # not ours, or not C order: one copy
                copy = self.alloc(arr.shape, arr.dtype)
                copy[...] = arr
                buf, anchor = self._owner(copy)
                arr = copy
            assert buf is not None and anchor is not None
            anchor.flags.writeable = False
            arr.flags.writeable = False
            if defer_seal:
                self._unsealed.append(buf)
            else:
                buf.protect()
            self._blobs.append(arr)
            self.counters["blobs"] += 1
            return {"frame": proto.FIRST_BLOB_FRAME + len(self._blobs) - 1, "dtype": dtype,
                    "shape": list(arr.shape), "strides": c_strides(arr.shape, arr.itemsize)}

    def _owner(self, arr: np.ndarray) -> tuple[_Buffer | None, np.ndarray | None]:
        if not arr.flags.c_contiguous:
            return None, None
        ptr = arr.__array_interface__["data"][0]
        for buf, ref in self._live.values():
            if buf.addr <= ptr and ptr + arr.nbytes <= buf.addr + buf.size:
                return buf, ref()
        return None, None

    def take_frames(self) -> list[Any]:
        """The blob frames queued by `export` since the last call, in frame order (blob i is
        frame FIRST_BLOB_FRAME + i); the caller sends them with `copy=False`."""
        with self._lock:
            blobs, self._blobs = self._blobs, []
            return blobs

    def seal(self) -> None:
        """mprotect read-only every buffer exported with `defer_seal` since the last call."""
        with self._lock:
            self._seal_locked()

    def _seal_locked(self) -> None:
        while self._unsealed:
            self._unsealed.pop().protect()

    # -- inputs -------------------------------------------------------------------------
    def open(self, desc: Mapping[str, Any]) -> np.ndarray:
        """A task attachment: inline arrays decode here; a segment descriptor opens only if
        its namespace is on this host (producers on other hosts attach no arrays)."""
        if descriptor.is_inline(desc):
            return descriptor.parse_inline(desc, 1 << 40)
        if self._reader is None:
            from pipeline.heavy.reader import HeavyReader

            self._reader = HeavyReader(self.namespace)
        try:
            return self._reader.open_array(desc)  # type: ignore[no-any-return]
        except HeavyError as exc:
            raise HeavyError(f"a heavy attachment in shared memory cannot be read by a worker "
                             f"on another host than the sink ({exc})") from None

    def open_committed(self, key: str, version: int, desc: Mapping[str, Any]) -> np.ndarray:
        """A heavy input from the committed state: inline as is, else from the cache or
        fetched from the sink (`HEAVY_REQ`)."""
        if descriptor.is_inline(desc):
            return descriptor.parse_inline(desc, 1 << 40)
        with self._lock:
            hit = self._cache.get((key, version))
            if hit is not None:
                self._cache.move_to_end((key, version))
                self.counters["cache_hits"] += 1
                return hit
            got_version, arr = self._fetch(key, version)
            self._remember((key, got_version), arr)
            return arr

    def _remember(self, ck: tuple[str, int], arr: np.ndarray) -> None:
        if arr.nbytes > self.cache_bytes:
            return
        old = self._cache.pop(ck, None)
        if old is not None:
            self._cached_bytes -= old.nbytes
        self._cache[ck] = arr
        self._cached_bytes += arr.nbytes
        while self._cached_bytes > self.cache_bytes:
            _, gone = self._cache.popitem(last=False)
            self._cached_bytes -= gone.nbytes

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            sock.connect(self._endpoint)
            self._sock = sock
        return self._sock

    def _fetch(self, key: str, version: int) -> tuple[int, np.ndarray]:
        sock = self._socket()
        req = next(self._req)
        sock.send_multipart(proto.encode(Cmd.HEAVY_REQ, {"key": key, "version": version,
                                                         "req": req}))
        self.counters["fetches"] += 1
        deadline = time.monotonic() + self._fetch_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise HeavyError(f"no answer from the sink for heavy input {key} (version "
                                 f"{version}) within {self._fetch_timeout_s:g}s")
            frames = sock.recv_multipart(copy=False)
            try:
                msg = proto.decode(frames)
            except DecodeError as exc:
                log.warning("heavy fetch: malformed reply dropped (%s)", exc.reason)
                continue
            if msg.header.get("req") != req:
                continue  # the late answer to an earlier request that timed out
            if msg.cmd is Cmd.ERROR:
                raise HeavyError(f"the sink refused heavy input {key}: {msg.header['reason']}")
            if msg.cmd is not Cmd.HEAVY or msg.header["key"] != key or len(msg.blobs) != 1:
                raise HeavyError(f"unexpected answer {msg.cmd.name} to a heavy fetch of {key}")
            return msg.header["version"], _blob_array(msg.header, msg.blobs[0])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters, "cached": len(self._cache),
                    "cached_bytes": self._cached_bytes}

    def close(self) -> None:
        with self._lock:
            self._seal_locked()
            self._cache.clear()
            self._cached_bytes = 0
            self._blobs.clear()
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            if self._reader is not None:
                self._reader.close()


def _blob_array(header: Mapping[str, Any], blob: Any) -> np.ndarray:
    """A read-only zero-copy array over a HEAVY reply's blob frame (checked against its
    header: allowed dtype, shape, C-order strides, exact length)."""
    dtype = descriptor.check_dtype(header["dtype"])
    shape = descriptor.check_shape(header["shape"])
    strides = header.get("strides", c_strides(shape, dtype.itemsize))
    if strides != c_strides(shape, dtype.itemsize):
        raise HeavyError("HEAVY reply with non C-order strides")
    buf = blob.buffer if isinstance(blob, zmq.Frame) else memoryview(blob)
    check_blob(buf.nbytes, dtype, shape)
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr
