"""Preflight of the heavy zone: is /dev/shm there, writable, a tmpfs, and big enough?

`doctor()` returns findings; each names the check, a level (`ok`, `warn`, `error`), what
was seen, and the fix. `pipeline doctor` prints them, and the sink runs it at start.
Containers are the usual culprit: Docker gives a container 64 MiB of /dev/shm unless told
otherwise.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import HeavyError
from pipeline.heavy import names

DEFAULT_MIN_BYTES = 1 << 30

FIX_SIZE = ("give /dev/shm more room: docker compose `shm_size: 2gb` on the service; "
            "`docker run --shm-size=2g`; Kubernetes: an emptyDir with `medium: Memory` "
            "mounted at /dev/shm; on a host: `sudo mount -o remount,size=2G /dev/shm`")
FIX_MISSING = ("mount a tmpfs at /dev/shm: `sudo mount -t tmpfs -o size=2G,mode=1777 "
               "tmpfs /dev/shm` (containers: see `shm_size` / `--shm-size`)")
FIX_WRITABLE = ("make /dev/shm writable for this user (mode 1777, as on a normal host): "
                "`sudo chmod 1777 /dev/shm`; in Docker do not mount it read-only")


@dataclass(frozen=True)
class Finding:
    """One preflight result."""

    check: str
    level: str
    message: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level != "error"


def doctor(*, min_bytes: int = DEFAULT_MIN_BYTES, namespace: str | None = None,
           root: Path = names.SHM_ROOT) -> list[Finding]:
    """Check the shared-memory filesystem the heavy zone needs; return the findings."""
    if not root.is_dir():
        return [Finding("exists", "error", f"{root} does not exist", FIX_MISSING)]
    out = [Finding("exists", "ok", f"{root} exists")]
    out.append(_check_tmpfs(root))
    out.append(_check_writable(root))
    out.append(_check_size(root, min_bytes))
    if namespace is not None:
        out.append(_check_namespace(namespace, root))
    return out


def _check_tmpfs(root: Path) -> Finding:
    fstype = _fstype(root)
    if fstype in ("tmpfs", "shm"):
        return Finding("tmpfs", "ok", f"{root} is a {fstype}")
    return Finding("tmpfs", "warn", f"{root} is {fstype or 'not a mount point'}, not a tmpfs: "
                   "segments may be written to disk", FIX_MISSING)


def _fstype(root: Path) -> str:
    best, fstype = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and str(root).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype if best == str(root) else ""


def _check_writable(root: Path) -> Finding:
    probe = root / f"pipeline-doctor-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return Finding("writable", "error", f"cannot create a file in {root}: {exc.strerror}",
                       FIX_WRITABLE)
    os.close(fd)
    os.unlink(probe)
    return Finding("writable", "ok", f"{root} is writable")


def _check_size(root: Path, min_bytes: int) -> Finding:
    st = os.statvfs(root)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    seen = f"{root}: {_mib(total)} MiB total, {_mib(free)} MiB free"
    if total < min_bytes:
        return Finding("size", "error", f"{seen}; need at least {_mib(min_bytes)} MiB", FIX_SIZE)
    if free < min_bytes:
        return Finding("size", "warn", f"{seen}; less than {_mib(min_bytes)} MiB free "
                       "(other programs, or leaked segments: run the sink's reclaim)", FIX_SIZE)
    return Finding("size", "ok", seen)


def _check_namespace(namespace: str, root: Path) -> Finding:
    try:
        path = names.namespace_dir(namespace, root)
        if path.exists() or path.is_symlink():
            names.check_private_dir(path)
    except HeavyError as exc:
        return Finding("namespace", "error", str(exc),
                       "remove the directory, or pick another namespace")
    return Finding("namespace", "ok", f"namespace {namespace!r} at {path}")


def _mib(n: int) -> int:
    return n // (1 << 20)
