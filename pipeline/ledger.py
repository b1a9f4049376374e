"""What a producer has sent and not yet seen settled, shared by `Producer` and
`AsyncProducer` (no sockets here: the producers do the sending).

* `unacked`: submitted, no ACCEPTED yet. Sent again when the broker stays silent past the
  ack timeout (the broker accepts a known id again without queueing it twice).
* `undecided`: accepted, no decision yet. Sent again, with the unacked ones, when the
  connection comes back (a restarted broker may have lost what it had not journaled).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pipeline import protocol as proto
from pipeline.api import Decision, Status
from pipeline.errors import Busy, PipelineError, SubmitRejected
from pipeline.protocol import Cmd

RESEND_CHUNK = 1000  # tasks per SUBMIT when sending again
_RESULT_PREFIX = bytes((proto.VERSION, Cmd.RESULT))
_COMMITTED = Status.COMMITTED
_PLAIN = tuple(Decision._field_defaults[f] for f in Decision._fields[5:])  # reason, rule, ...
_new = tuple.__new__


def task_maps(process: str, args_list: Iterable[Mapping[str, Any]], prefix: str,
              seq: Iterator[int], task_ids: list[str] | None = None,
              heavy: Callable[[], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The Task maps of one `submit_many` (both producers): ids from `task_ids`, else
    `prefix` + the next number of `seq`; `heavy()` gives each task its attachments."""
    if not task_ids and heavy is None:  # the usual call, as one comprehension
        return [{"id": prefix + str(next(seq)), "process": process, "args": dict(args)}
                for args in args_list]
    tasks = []
    for i, args in enumerate(args_list):
        tid = task_ids[i] if task_ids else prefix + str(next(seq))
        task: dict[str, Any] = {"id": tid, "process": process, "args": dict(args)}
        if heavy is not None:
            task["heavy"] = heavy()
        tasks.append(task)
    return tasks


class SubmitLedger:
    __slots__ = ("ack_timeout_s", "heard", "resent", "unacked", "undecided")

    def __init__(self, ack_timeout_s: float) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.heard = time.monotonic()
        self.resent = 0
        self.unacked: dict[str, dict[str, Any]] = {}
        self.undecided: dict[str, dict[str, Any]] = {}

    def sent(self, tasks: Iterable[dict[str, Any]]) -> None:
        if not self.unacked:
            self.heard = time.monotonic()  # the ack timeout starts with the first unacked
        self.unacked.update({task["id"]: task for task in tasks})

    def accepted(self, ids: Iterable[Any]) -> None:
        for tid in ids:
            task = self.unacked.pop(tid, None) if isinstance(tid, str) else None
            if task is not None:
                self.undecided[tid] = task

    def settled(self, task_id: str) -> None:
        """Decided or rejected: nothing left to send again."""
        self.unacked.pop(task_id, None)
        self.undecided.pop(task_id, None)

    def commits(self, frames: list[Any]) -> list[Decision] | None:
        """The decisions of a RESULT that carries a commit index (frame 2: every decision a
        plain commit), built from the index and the tasks sent, and settled; None when the
        RESULT has no usable index or names a task not sent (decode its header instead)."""
        if len(frames) != 3 or frames[0] != _RESULT_PREFIX:
            return None
        parsed = proto.commit_index(frames[2])
        if parsed is None:
            return None
        ids, attempts, version = parsed
        unacked, undecided = self.unacked, self.undecided
        out = []
        for tid, attempt in zip(ids, attempts, strict=True):
            task = undecided.get(tid) or unacked.get(tid)
            if task is None:
                return None
            # Decision(tid, COMMITTED, process, attempt, version) without the NamedTuple's
            # Python-level __new__ (a third of the cost): the same tuple, defaults spelled out
            out.append(_new(Decision, (tid, _COMMITTED, task["process"], attempt, version,
                                       *_PLAIN)))
            version += 1
        for tid in ids:
            if undecided.pop(tid, None) is None:
                unacked.pop(tid, None)
        return out

    def overdue(self) -> list[dict[str, Any]]:
        """The unacked tasks, if the broker has been silent past the ack timeout."""
        if self.unacked and time.monotonic() - self.heard > self.ack_timeout_s:
            return list(self.unacked.values())
        return []

    def outstanding(self) -> list[dict[str, Any]]:
        """Everything not yet decided (to send again after a reconnect)."""
        return [*self.unacked.values(), *self.undecided.values()]

    def resend_frames(self, tasks: list[dict[str, Any]]) -> Iterator[list[Any]]:
        """SUBMIT messages carrying `tasks` again under their ids, in chunks."""
        for i in range(0, len(tasks), RESEND_CHUNK):
            yield proto.encode(Cmd.SUBMIT, {"tasks": tasks[i:i + RESEND_CHUNK]})
        self.resent += len(tasks)
        self.heard = time.monotonic()


class LedgerViews:
    """What a producer shows of its ledger: tasks not yet acknowledged, tasks not yet
    decided, and how many were sent again."""

    ledger: SubmitLedger

    @property
    def unacked(self) -> dict[str, dict[str, Any]]:
        return self.ledger.unacked

    @property
    def undecided(self) -> dict[str, dict[str, Any]]:
        return self.ledger.undecided

    @property
    def resent(self) -> int:
        return self.ledger.resent


def rejection(header: Mapping[str, Any]) -> PipelineError:
    """The exception a REJECTED header stands for: Busy (with its retry-after) or
    SubmitRejected."""
    code, reason = header["code"], header["reason"]
    if code == "busy":
        return Busy(reason, int(header.get("retry_after_ms") or 0))
    return SubmitRejected(code, reason)
