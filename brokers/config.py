"""Broker configuration: one frozen dataclass, units in the names.

Loading from TOML and the environment belongs to the CLI (it builds a `BrokerConfig` with
`BrokerConfig.from_mapping`); the broker only reads the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.errors import ConfigError

MAX_ACCEPTED_DELAY_MS = 1000


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
    # Dispatches that ended in a conflict, a lost worker or an expired lease before a task is
    # dead-lettered; `max_attempts_per_process` overrides it per process name.
    max_attempts: int = 10
    # Compare-and-swap conflicts: their own budget, and a short back-off (the retry waits
    # for the worker's replica to reach the conflicting version anyway: `after`).
    max_conflicts: int = 1000
    conflict_max_backoff_ms: int = 20
    max_attempts_per_process: dict[str, int] = field(default_factory=dict)
    # Retry delays are stretched by a random 0..retry_jitter_pct percent (no herds).
    retry_jitter_pct: int = 25
    # A dispatched task undecided for this long is dispatched again (0: never).
    task_lease_ms: int = 60_000
    # The task journal's directory (durable intake, dead letters); None: in memory only.
    journal_dir: str | None = None
    journal_fsync: bool = True
    # An ACCEPTED leaves once its tasks are fsynced and this long after their SUBMIT; it is
    # left out when every task it names was decided meanwhile (docs/PROTOCOL.md). At most
    # MAX_ACCEPTED_DELAY_MS: producers resend what stays unanswered (ack_timeout_s, 5 s).
    accepted_delay_ms: int = 2
    # Compact the journal when it holds more than max(min, ratio * live) records.
    journal_compact_min_records: int = 10_000
    journal_compact_ratio: int = 4
    # The most tasks in one DISPATCH (a worker with more credit gets several).
    max_dispatch_batch: int = 256
    # The most tasks in flight (dispatched, undecided) to one worker: a worker granting more
    # credit keeps it, and gets more tasks as these are decided (hostile READY floods stop
    # here). The credit itself is never cut: the worker's count of it must stay true.
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
                     "max_attempts", "max_conflicts", "max_dispatch_batch", "max_worker_credit",
                     "max_recv_per_pass", "hwm_messages", "journal_compact_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"broker.{name} must be >= 1")
        for name in ("busy_retry_after_ms", "retry_base_backoff_ms", "retry_max_backoff_ms",
                     "recent_decided", "linger_ms", "retry_jitter_pct", "task_lease_ms",
                     "journal_compact_min_records", "accepted_delay_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"broker.{name} must be >= 0")
        self._check_extras()

    def _check_extras(self) -> None:
        if self.journal_dir is not None and (not isinstance(self.journal_dir, str)
                                             or not self.journal_dir):
            raise ConfigError("broker.journal_dir must be a non-empty string or None")
        if not isinstance(self.journal_fsync, bool):
            raise ConfigError("broker.journal_fsync must be true or false")
        if self.accepted_delay_ms > MAX_ACCEPTED_DELAY_MS:
            raise ConfigError(f"broker.accepted_delay_ms must be <= {MAX_ACCEPTED_DELAY_MS} "
                              "(producers resend tasks left unanswered after ack_timeout_s)")
        per = self.max_attempts_per_process
        if not isinstance(per, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 1 for k, v in per.items()):
            raise ConfigError("broker.max_attempts_per_process must map names to ints >= 1")

    def attempts_for(self, process: str) -> int:
        """The most attempts a task of `process` gets before it is dead-lettered."""
        return self.max_attempts_per_process.get(process, self.max_attempts)

    @property
    def expiry_ms(self) -> int:
        """How long a worker may stay silent before it is evicted."""
        return self.heartbeat_interval_ms * self.liveness

    def backoff_ms(self, failures: int) -> int:
        """Exponential back-off for the n-th failed attempt (1-based), capped."""
        exp = min(max(failures - 1, 0), 30)
        return min(self.retry_max_backoff_ms, self.retry_base_backoff_ms << exp)

    def jittered_ms(self, delay_ms: int, unit: float) -> float:
        """delay_ms stretched by unit (0..1) of the configured jitter."""
        return delay_ms * (1 + unit * self.retry_jitter_pct / 100)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BrokerConfig:
        """Build from a mapping (a TOML `[broker]` table); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown broker settings: {', '.join(unknown)}")
        return cls(**values)
