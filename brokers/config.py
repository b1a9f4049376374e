"""Broker configuration: one frozen dataclass, units in the names.

Loading from TOML and the environment belongs to the CLI (it builds a `BrokerConfig` with
`BrokerConfig.from_mapping`); the broker only reads the values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the broker needs to know; validated on construction."""

    frontend: str = "ipc://pipeline-frontend.ipc"
    backend: str = "ipc://pipeline-backend.ipc"
    control: str = "ipc://pipeline-control.ipc"
    heartbeat_interval_ms: int = 1000
    # A worker silent for liveness * heartbeat_interval_ms is evicted.
    liveness: int = 3
    # The most tasks the broker holds at once (queued, delayed, parked or in flight).
    max_queue: int = 1_000_000
    # A SUBMIT that does not fit is answered REJECTED "busy" with this hint.
    busy_retry_after_ms: int = 100
    # ZMQ_MAXMSGSIZE on every socket: a peer sending a bigger frame is disconnected.
    max_message_bytes: int = 64 * 1024 * 1024
    # Back-off before a conflicting task is dispatched again, when the sink gives none.
    retry_base_backoff_ms: int = 10
    retry_max_backoff_ms: int = 5000
    # Dispatches that ended in a conflict or a lost worker before a task is dead-lettered.
    max_attempts: int = 10
    # The most tasks in one DISPATCH (a worker with more credit gets several).
    max_dispatch_batch: int = 256
    # The most credit one worker may hold (hostile READY floods are capped here).
    max_worker_credit: int = 100_000
    # Decided task ids remembered for idempotent resubmits.
    recent_decided: int = 100_000
    # Messages read from one socket in one pass before the others get their turn.
    max_recv_per_pass: int = 512
    linger_ms: int = 0
    hwm_messages: int = 100_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"broker.{f.name} must be an integer, not {value!r}")
            if f.type in ("str", str) and (not isinstance(value, str) or not value):
                raise ConfigError(f"broker.{f.name} must be a non-empty string")
        for name in ("heartbeat_interval_ms", "liveness", "max_queue", "max_message_bytes",
                     "max_attempts", "max_dispatch_batch", "max_worker_credit",
                     "max_recv_per_pass", "hwm_messages"):
            if getattr(self, name) < 1:
                raise ConfigError(f"broker.{name} must be >= 1")
        for name in ("busy_retry_after_ms", "retry_base_backoff_ms", "retry_max_backoff_ms",
                     "recent_decided", "linger_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"broker.{name} must be >= 0")

    @property
    def expiry_ms(self) -> int:
        """How long a worker may stay silent before it is evicted."""
        return self.heartbeat_interval_ms * self.liveness

    def backoff_ms(self, failures: int) -> int:
        """Exponential back-off for the n-th failed attempt (1-based), capped."""
        exp = min(max(failures - 1, 0), 30)
        return min(self.retry_max_backoff_ms, self.retry_base_backoff_ms << exp)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BrokerConfig:
        """Build from a mapping (a TOML `[broker]` table); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown broker settings: {', '.join(unknown)}")
        return cls(**values)
