"""The user-facing model: `@process` contracts, `StateUpdate`, and typed decisions.

A process is a plain Python function taking a context and keyword arguments::

    @process(inputs=["count"], outputs=["count"])
    def increment(ctx, by: int = 1):
        return {"count": ctx.get("count", 0) + by}

It returns a `StateUpdate` (a plain dict is shorthand for its `data`). Keys named
`heavy.<name>` hold numpy arrays in shared memory (the heavy zone).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from pipeline.errors import ContractError, PipelineError, UnknownProcessError

HEAVY_PREFIX = "heavy."
_SPEC_ATTR = "__pipeline_process__"


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A process's name, function and contract."""

    name: str
    func: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def keys(self) -> frozenset[str]:
        """Every key the contract names (inputs and outputs)."""
        return frozenset((*self.inputs, *self.outputs))

    @property
    def heavy_inputs(self) -> tuple[str, ...]:
        return tuple(k for k in self.inputs if k.startswith(HEAVY_PREFIX))


def process(
    inputs: Iterable[str] = (), outputs: Iterable[str] = (), *, name: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a process: the state keys it may read (`inputs`) and write (`outputs`)."""
    ins, outs = tuple(inputs), tuple(outputs)
    for key in (*ins, *outs):
        if not isinstance(key, str) or not key:
            raise ContractError(f"contract keys must be non-empty strings, got {key!r}")

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        spec = ProcessSpec(name or func.__name__, func, ins, outs)
        setattr(func, _SPEC_ATTR, spec)
        return func

    return wrap


def spec_of(obj: Any) -> ProcessSpec | None:
    spec = getattr(obj, _SPEC_ATTR, None)
    return spec if isinstance(spec, ProcessSpec) else None


def load_app(module: str | types.ModuleType) -> dict[str, ProcessSpec]:
    """Import a user module and collect its processes by name."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    specs: dict[str, ProcessSpec] = {}
    for value in vars(mod).values():
        spec = spec_of(value)
        if spec is None:
            continue
        if spec.name in specs and specs[spec.name].func is not spec.func:
            raise ContractError(f"two processes named {spec.name!r} in {mod.__name__}")
        specs[spec.name] = spec
    if not specs:
        raise UnknownProcessError(f"module {mod.__name__!r} declares no @process")
    return specs


@dataclass(frozen=True, slots=True)
class Signal:
    """An outbox message released to subscribers only after its update commits."""

    topic: str
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A task released to the broker only after its update commits."""

    process: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StateUpdate:
    """What a process returns: small values (`data`), heavy arrays (`heavy`), an outbox
    (`signals`, `tasks`), and optionally the global version it assumes (`assert_version`)."""

    data: dict[str, Any] = field(default_factory=dict)
    heavy: dict[str, Any] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    tasks: list[FollowUp] = field(default_factory=list)
    assert_version: int | None = None

    @classmethod
    def coerce(cls, result: Any) -> StateUpdate:
        """Accept a StateUpdate, a dict (shorthand for `data`) or None (no writes)."""
        if isinstance(result, StateUpdate):
            return result
        if result is None:
            return cls()
        if isinstance(result, Mapping):
            return cls(data=dict(result))
        raise ContractError(
            f"a process must return a StateUpdate, a dict or None, not {type(result).__name__}"
        )


class Status(StrEnum):
    COMMITTED = "committed"
    REJECTED = "rejected"
    CONFLICT = "conflict"
    DUPLICATE = "duplicate"
    BLOCKED = "blocked"
    FAILED = "failed"
    EXPIRED = "expired"  # refused by the sink's de-duplication horizon (dead-lettered)


class Decision(NamedTuple):
    """The sink's decision on one task, as a producer receives it (immutable).

    A NamedTuple rather than a frozen dataclass: a producer builds one per task, and this
    costs a quarter of the time (0.6 against 2.5 us here)."""

    task: str
    status: Status
    process: str
    attempt: int = 0
    version: int = 0
    reason: str = ""
    rule: str | None = None
    level: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None

    @property
    def committed(self) -> bool:
        return self.status is Status.COMMITTED

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Decision:
        """From a wire Decision map; tolerant of missing or mistyped fields."""
        raw = d.get("status")
        status = _STATUSES.get(raw) if type(raw) is str else None
        err = d.get("error")
        if (status is not None and err is None and type(d.get("task")) is str
                and type(d.get("attempt")) is int and type(d.get("version")) is int):
            # the common case, straight from the engine: no conversions needed
            return cls(d["task"], status, str(d.get("process", "")), d["attempt"],
                       d["version"], d.get("reason") or "", d.get("rule"), d.get("level"))
        return cls._from_wire_slow(d)

    @classmethod
    def _from_wire_slow(cls, d: Mapping[str, Any]) -> Decision:
        err = d.get("error")
        if not isinstance(err, Mapping):
            err = _NO_ERROR
        status = d.get("status", "rejected")
        known = _STATUSES.get(status) if type(status) is str else None
        return cls(
            str(d.get("task", "")),
            known or Status(status),
            str(d.get("process", "")),
            int(d.get("attempt") or 0),
            int(d.get("version") or 0),
            str(d.get("reason") or ""),
            d.get("rule"),
            d.get("level"),
            err.get("type"),
            err.get("message"),
            err.get("traceback"),
        )

    def raise_for_status(self) -> Decision:
        """Return self if committed, else raise TaskFailed carrying this decision."""
        if not self.committed:
            raise TaskFailed(self)
        return self


_STATUSES: dict[Any, Status] = {s.value: s for s in Status}
_NO_ERROR: Mapping[str, Any] = {}


class TaskFailed(PipelineError):
    """A task's decision was not a commit; `.decision` tells why."""

    def __init__(self, decision: Decision) -> None:
        detail = decision.reason or f"{decision.error_type}: {decision.error_message}"
        super().__init__(f"task {decision.task} {decision.status.value}: {detail}")
        self.decision = decision
