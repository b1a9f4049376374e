"""Configuration: frozen dataclasses with units in the names.

`Endpoints` names the six sockets of a deployment (see docs/PROTOCOL.md). The embedded
default puts them all under one run directory as `ipc://` paths.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Endpoints:
    frontend: str
    backend: str
    control: str
    updates: str
    events: str
    sync: str

    @classmethod
    def embedded(cls, run_dir: str | os.PathLike[str]) -> Endpoints:
        """`ipc://` endpoints in one run directory (one host)."""
        base = Path(run_dir)
        base.mkdir(parents=True, exist_ok=True)
        names = ("frontend", "backend", "control", "updates", "events", "sync")
        paths = {n: f"ipc://{base / n}.sock" for n in names}
        longest = max(len(p) for p in paths.values())
        if longest > 100:
            raise ConfigError(f"run directory path too long for ipc:// ({longest} > 100 chars)")
        return cls(**paths)

    @classmethod
    def tcp(cls, host: str, base_port: int) -> Endpoints:
        """`tcp://` endpoints on consecutive ports (many hosts)."""
        names = ("frontend", "backend", "control", "updates", "events", "sync")
        return cls(**{n: f"tcp://{host}:{base_port + i}" for i, n in enumerate(names)})


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise ConfigError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
    return namespace


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    endpoints: Endpoints
    app: str
    name: str = field(default_factory=lambda: f"w{os.getpid()}")
    credit: int = 64
    heartbeat_interval_ms: int = 1000
    liveness: int = 3
    snapshot_timeout_ms: int = 5000
    namespace: str = "default"
    max_message_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SinkConfig:
    endpoints: Endpoints
    app: str
    journal_dir: str
    fsync: str = "interval"
    fsync_interval_ms: int = 10
    strict: bool = False
    recipes: str | None = None
    namespace: str = "default"
    batch_max: int = 4096
    max_message_bytes: int = 256 * 1024 * 1024
