"""One exception hierarchy for the whole package (the Rust engine maps onto it too)."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises."""


class DecodeError(PipelineError):
    """A message could not be decoded; `reason` is a short counter-friendly code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContractError(PipelineError):
    """A process broke its declared contract (an undeclared input or output)."""


class UnknownProcessError(PipelineError):
    """A task names a process that is not registered."""


class TaskTimeout(PipelineError, TimeoutError):
    """No decision arrived for a task within the timeout."""


class Busy(PipelineError):
    """The broker refused a submission because its queues are full; retry later."""

    def __init__(self, reason: str, retry_after_ms: int = 0) -> None:
        super().__init__(reason)
        self.retry_after_ms = retry_after_ms


class SubmitRejected(PipelineError):
    """The broker refused a submission (malformed, unknown process, ...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class EngineError(PipelineError):
    """Base class of errors raised by the Rust engine."""


class JournalError(EngineError):
    """The journal could not be written, read or verified."""


class JournalCorrupt(JournalError):
    """The journal's checksum or hash chain is broken at a record."""


class RecipeError(EngineError):
    """An audit recipe file is invalid."""


class HeavyError(PipelineError):
    """A heavy-zone segment or descriptor is invalid."""


class ConfigError(PipelineError):
    """The configuration is invalid."""
