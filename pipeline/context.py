"""The one factory that builds every task's context, and the one function that turns a
process's result into the wire Update.

Everything a process can see comes through `build_context`: its declared inputs from the
state replica, its declared heavy inputs (from the task's attachments or from the committed
state), and an allocator for heavy outputs. No dispatch path builds a context any other way,
so the heavy zone cannot be forgotten (the seed system shipped `heavy=None` to workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.api import HEAVY_PREFIX, ProcessSpec, StateUpdate
from pipeline.errors import ContractError
from pipeline.replica import StateReplica


class HeavyBackend(Protocol):
    """What the context needs of the heavy zone (pipeline.heavy provides it: HeavyAllocator
    on the sink's host, RemoteHeavy on another host). A backend may also have
    `open_committed(key, version, desc)`, used for heavy inputs from the committed state."""

    def open(self, desc: Mapping[str, Any]) -> Any: ...
    def alloc(self, shape: Any, dtype: Any) -> Any: ...
    def export(self, array: Any, *, defer_seal: bool = False) -> dict[str, Any]: ...
    def seal(self) -> None: ...


class HeavyInputs:
    """`ctx.heavy`: declared heavy inputs as read-only arrays, and `alloc` for outputs."""

    def __init__(self, ctx: TaskContext, attached: Mapping[str, Any],
                 backend: HeavyBackend | None) -> None:
        self._ctx = ctx
        self._attached = attached
        self._backend = backend
        self._opened: dict[str, Any] = {}

    def _key(self, name: str) -> str:
        return name if name.startswith(HEAVY_PREFIX) else HEAVY_PREFIX + name

    def __getitem__(self, name: str) -> Any:
        key = self._key(name)
        if key not in self._ctx.spec.inputs:
            raise ContractError(f"{self._ctx.spec.name} did not declare heavy input {key!r}")
        if key not in self._opened:
            self._opened[key] = self._open(key)
        return self._opened[key]

    def _open(self, key: str) -> Any:
        short = key[len(HEAVY_PREFIX):]
        desc = self._attached.get(short, self._attached.get(key))
        if desc is None:
            desc = self._ctx.read(key)
            if desc is None:
                raise KeyError(key)
            if self._backend is None:
                raise ContractError("the heavy zone is not available in this worker")
            # A backend may fetch committed values by (key, version) (a worker on another
            # host: pipeline.heavy.remote); the same-host one maps the descriptor.
            committed = getattr(self._backend, "open_committed", None)
            if committed is not None:
                return committed(key, self._ctx.reads[key], desc)
        if self._backend is None:
            raise ContractError("the heavy zone is not available in this worker")
        return self._backend.open(desc)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def available(self) -> list[str]:
        """The declared heavy inputs present for this task."""
        return [k for k in self._ctx.spec.heavy_inputs if k in self]

    def alloc(self, name: str, shape: Any, dtype: Any = "float64") -> Any:
        """A writable shared-memory array for the heavy output `heavy.<name>`."""
        key = self._key(name)
        if key not in self._ctx.spec.outputs:
            raise ContractError(f"{self._ctx.spec.name} did not declare heavy output {key!r}")
        if self._backend is None:
            raise ContractError("the heavy zone is not available in this worker")
        return self._backend.alloc(shape, dtype)


class TaskContext:
    """What a process sees: declared inputs (tracked as reads), heavy inputs, task facts."""

    __slots__ = ("_backend", "_heavy", "_task", "_version", "attempt", "base", "process",
                 "reads", "replica", "spec", "task_id")

    def __init__(self, task: Mapping[str, Any], spec: ProcessSpec, replica: StateReplica,
                 heavy: HeavyBackend | None, follows: bool = True) -> None:
        self.task_id: str = task["id"]
        self.attempt: int = int(task.get("attempt") or 1)
        self.process = spec.name
        self.spec = spec
        self.replica = replica
        self._version: int = replica.version
        # The update's `base`: the global version it was built on. None from a replica that
        # does not follow the commit stream (its version is its last snapshot's), unless
        # the process reads `version`: the sink then checks the version it was given.
        self.base: int | None = self._version if follows else None
        self.reads: dict[str, int] = {}
        self._task = task
        self._backend = heavy
        self._heavy: HeavyInputs | None = None

    @property
    def version(self) -> int:
        """The global version of the replica when the context was built. On a worker that
        does not follow the commit stream (docs/ARCHITECTURE.md, "Who follows the commit
        stream"), the version of its last snapshot: reading it makes the worker follow."""
        self.base = self._version
        return self._version

    @property
    def heavy(self) -> HeavyInputs:
        """Declared heavy inputs and the output allocator (built on first use: most
        processes never touch the heavy zone)."""
        if self._heavy is None:
            self._heavy = HeavyInputs(self, self._task.get("heavy") or {}, self._backend)
        return self._heavy

    def read(self, key: str) -> Any:
        self.reads[key] = self.replica.key_version(key)
        return self.replica.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The committed value of a declared input, or `default` if it has none."""
        if key not in self.spec.inputs:
            raise ContractError(f"{self.spec.name} did not declare input {key!r}")
        value = self.read(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value


def build_context(task: Mapping[str, Any], spec: ProcessSpec, replica: StateReplica,
                  heavy: HeavyBackend | None, follows: bool = True) -> TaskContext:
    """The only way a task context is made. `follows`: whether the replica follows the
    commit stream (its version is current)."""
    return TaskContext(task, spec, replica, heavy, follows)


def to_update(ctx: TaskContext, result: Any, heavy: HeavyBackend | None) -> dict[str, Any]:
    """The wire Update for a process's result (see docs/PROTOCOL.md)."""
    if result is None or type(result) is dict:  # the common shorthand: data only
        return _data_update(ctx, dict(result) if result else {})
    upd = StateUpdate.coerce(result)
    heavy_out = _export_heavy(upd.heavy, heavy)
    reads = dict(ctx.reads)
    for key in (*upd.data, *heavy_out):
        reads.setdefault(key, ctx.replica.key_version(key))
    update = {
        "task": ctx.task_id,
        "process": ctx.process,
        "attempt": ctx.attempt,
        "reads": reads,
        "base": ctx.base,
        "data": upd.data,
        "heavy": heavy_out,
        "error": None,
        "signals": [{"topic": s.topic, "payload": bytes(s.payload)} for s in upd.signals],
        "tasks": [{"process": t.process, "args": dict(t.args)} for t in upd.tasks],
        "born_ms": ctx._task.get("born_ms"),
    }
    if upd.assert_version is not None:
        update["expect"] = upd.assert_version
    return update


def _data_update(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """`to_update` for a plain dict (or None): no heavy values, no outbox, no expect, so
    no `heavy`, `error`, `signals` or `tasks` field (absent means empty: docs/PROTOCOL.md)."""
    reads = ctx.reads  # the process has returned: its context's reads become the update's
    if data:
        for key in data:
            if key not in reads:
                reads[key] = ctx.replica.key_version(key)
    return {"task": ctx.task_id, "process": ctx.process, "attempt": ctx.attempt,
            "reads": reads, "base": ctx.base, "data": data,
            "born_ms": ctx._task.get("born_ms")}


def _export_heavy(arrays: Mapping[str, Any], heavy: HeavyBackend | None) -> dict[str, Any]:
    if not arrays:
        return {}
    if heavy is None:
        raise ContractError("the heavy zone is not available in this worker")
    out = {}
    for name, array in arrays.items():
        key = name if name.startswith(HEAVY_PREFIX) else HEAVY_PREFIX + name
        out[key] = heavy.export(array, defer_seal=True)  # sealed once the UPDATE is sent
    return out


def error_update(task: Mapping[str, Any], exc: BaseException, tb: str) -> dict[str, Any]:
    """The wire Update reporting that a process raised."""
    return {
        "task": task["id"],
        "process": task["process"],
        "attempt": int(task.get("attempt") or 1),
        "reads": {},
        "base": None,
        "data": {},
        "heavy": {},
        "error": {"type": type(exc).__name__, "message": str(exc), "traceback": tb},
        "signals": [],
        "tasks": [],
        "born_ms": task.get("born_ms"),
    }
