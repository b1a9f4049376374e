"""Names and places of the heavy zone: namespaces, segment names, owner identity.

Layout of one deployment's namespace (all on the tmpfs at `/dev/shm`)::

    /dev/shm/pipeline-<namespace>/            mode 0700, owned by the deployment's user
        <pid>-<start>-<counter>               a segment owned by process <pid>
        pool/<capacity>-<pid>-<start>-<counter>   a free, already touched segment

A segment's name encodes its owner: the pid, the process start time (field 22 of
`/proc/<pid>/stat`, clock ticks since boot) and a per-process counter. A pid alone is not an
identity (pids are recycled); pid plus start time is. The name changes whenever ownership
changes hands through the pool (claiming is an atomic `rename`), so a descriptor that names
a segment that has since been recycled finds nothing.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import HeavyError

SHM_ROOT = Path("/dev/shm")
DIR_PREFIX = "pipeline-"
POOL_DIR = "pool"

NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SEGMENT_RE = re.compile(r"([1-9][0-9]{0,9})-([0-9]{1,20})-([0-9]{1,20})")
POOL_RE = re.compile(r"([1-9][0-9]{0,19})-([1-9][0-9]{0,9}-[0-9]{1,20}-[0-9]{1,20})")
MAX_SEGMENT_NAME = 64

_counter = itertools.count(1)


@dataclass(frozen=True)
class Owner:
    """A process identity that survives pid reuse: pid plus start time."""

    pid: int
    start: int


def check_namespace(namespace: str) -> str:
    """Return `namespace` if it is a valid namespace name, else raise HeavyError."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        raise HeavyError(f"invalid heavy namespace {namespace!r}: want [A-Za-z0-9_-]{{1,64}}")
    return namespace


def namespace_dir(namespace: str, root: Path = SHM_ROOT) -> Path:
    """The directory that holds every segment of `namespace`."""
    return root / (DIR_PREFIX + check_namespace(namespace))


def ensure_namespace(namespace: str, root: Path = SHM_ROOT) -> Path:
    """Create (mode 0700) or check the namespace directory and its pool; return its path."""
    path = namespace_dir(namespace, root)
    for d in (path, path / POOL_DIR):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # created by another process of the deployment; checked below
        except OSError as exc:
            raise HeavyError(f"cannot create heavy namespace directory {d}: {exc}") from exc
        check_private_dir(d)
    return path


def check_private_dir(path: Path) -> None:
    """Refuse a directory that is a symlink, not ours, or open to other users."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise HeavyError(f"{path} is not a directory (symlink or file in the way)")
    if st.st_uid != os.geteuid():
        raise HeavyError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        raise HeavyError(f"{path} is open to other users (mode {st.st_mode & 0o777:o})")


def check_segment_name(seg: object) -> str:
    """Return `seg` if it is a well-formed segment name, else raise HeavyError."""
    if not isinstance(seg, str):
        raise HeavyError(f"segment name must be a string, got {type(seg).__name__}")
    if "\x00" in seg:
        raise HeavyError("segment name contains a NUL byte")
    if "/" in seg or ".." in seg:
        raise HeavyError(f"segment name {seg[:80]!r} contains a path (/ or ..)")
    if len(seg) > MAX_SEGMENT_NAME or not SEGMENT_RE.fullmatch(seg):
        raise HeavyError(f"segment name {seg[:80]!r} is not <pid>-<start>-<counter>")
    return seg


def segment_owner(seg: str) -> Owner:
    """The owner encoded in a (well-formed) segment name."""
    m = SEGMENT_RE.fullmatch(seg)
    if m is None:
        raise HeavyError(f"segment name {seg[:80]!r} is not <pid>-<start>-<counter>")
    return Owner(int(m.group(1)), int(m.group(2)))


def process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) is in parentheses and may itself contain spaces and ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[19])  # field 22 overall: fields 3.. start at index 0


def is_alive(owner: Owner) -> bool:
    """True while the process that `owner` names still runs (not a recycled pid)."""
    start = process_start(owner.pid)
    return start is not None and start == owner.start


_self: tuple[int, Owner] | None = None


def current_owner() -> Owner:
    """This process's identity (recomputed after a fork)."""
    global _self
    pid = os.getpid()
    if _self is None or _self[0] != pid:
        start = process_start(pid)
        if start is None:
            raise HeavyError("cannot read /proc/self/stat: the heavy zone needs Linux /proc")
        _self = (pid, Owner(pid, start))
    return _self[1]


def new_segment_name() -> str:
    """A fresh segment name owned by this process; never repeats."""
    me = current_owner()
    return f"{me.pid}-{me.start}-{next(_counter)}"


def pool_name(capacity: int, seg: str) -> str:
    """The name a free segment of `capacity` data bytes takes in the pool."""
    return f"{capacity}-{seg}"


def parse_pool_name(name: str) -> tuple[int, str] | None:
    """(capacity, original segment name) of a pool entry, or None if it is not one."""
    m = POOL_RE.fullmatch(name)
    return None if m is None else (int(m.group(1)), m.group(2))
