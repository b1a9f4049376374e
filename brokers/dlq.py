"""The dead-letter queue: tasks the broker gave up on, with the reason, kept until an
operator requeues or purges them (journaled by the broker, so they survive restarts).

A dead letter is a map (the `DeadLetter` of docs/PROTOCOL.md):

    {id, process, task, attempt, failures, reason, rule, born_ms, at}

`task` is the producer's task as submitted (no attempt); `rule` names why (`max_attempts`,
`max_conflicts`, `dedup_horizon`); `born_ms` is the broker's stamp on the task (a requeue
keeps it, except after `dedup_horizon`); `at` is the wall-clock time (unix seconds) it was
dead-lettered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

MAX_LIST = 10_000  # the most dead letters one DLQ reply carries
_BROKER_FIELDS = frozenset({"attempt", "after", "born_ms"})


def clean_task(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the producer submitted it (without the broker's attempt, after, born_ms)."""
    out = task.copy()  # a copy less what is not the producer's: half a comprehension's cost
    for key in _BROKER_FIELDS:
        out.pop(key, None)
    return out


def stored_task(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the broker's journal keeps it: as submitted, with its `born_ms`
    (compaction makes one per live task: 0.64 -> 0.30 us each against a comprehension)."""
    out = task.copy()
    out.pop("attempt", None)
    out.pop("after", None)
    return out


def letter(task: dict[str, Any], failures: int, reason: str, rule: str = "max_attempts"
           ) -> dict[str, Any]:
    return {"id": task["id"], "process": task["process"], "task": clean_task(task),
            "attempt": int(task.get("attempt", 1)), "failures": failures, "reason": reason,
            "rule": rule, "born_ms": task.get("born_ms"), "at": time.time()}


class DeadLetters:
    """Dead letters by task id, oldest first."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def add(self, dead: dict[str, Any]) -> None:
        self.items[dead["id"]] = dead

    def select(self, ids: list[str] | None) -> list[dict[str, Any]]:
        """The dead letters named by ids (unknown ids are skipped), or all when None."""
        if ids is None:
            return list(self.items.values())
        return [self.items[i] for i in ids if i in self.items]

    def remove(self, ids: list[str]) -> list[dict[str, Any]]:
        return [d for d in (self.items.pop(i, None) for i in ids) if d is not None]

    def by_process(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.items.values():
            out[d["process"]] = out.get(d["process"], 0) + 1
        return out
