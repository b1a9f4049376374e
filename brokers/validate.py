"""Pure checks of what arrives at the broker's sockets: submitted tasks, decisions, versions,
dead-letter commands. No sockets, no state: each returns a reason or raises one."""

from __future__ import annotations

from typing import Any, TypeGuard

from pipeline.errors import DecodeError
from pipeline.protocol import SUPPORTED_VERSIONS, Cmd, check_task, encode

FINAL = frozenset({"committed", "rejected", "failed", "duplicate"})
STATUSES = FINAL | {"conflict", "blocked", "expired"}
MAX_ID_CHARS = 256


class Refused(DecodeError):
    """A well-formed message the broker will not act on; `code` goes into the ERROR."""

    def __init__(self, code: str, reason: str, message: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.message = message or reason


def task_problem(task: Any) -> str | None:
    """Why a submitted task is invalid, or None."""
    # fast path for the common well-formed task (exact types: a bool is not an int here)
    if (type(task) is dict and type(task.get("id")) is str and type(task.get("args")) is dict
            and type(task.get("process")) is str and task.get("heavy") is None):
        tid, process = task["id"], task["process"]
        return None if 0 < len(tid) <= MAX_ID_CHARS and process else _task_problem_slow(task)
    return _task_problem_slow(task)


def _task_problem_slow(task: Any) -> str | None:
    try:
        check_task(task)
    except DecodeError as exc:
        return exc.reason
    if not 0 < len(task["id"]) <= MAX_ID_CHARS:
        return "task-field:id"
    if not task["process"]:
        return "task-field:process"
    return None


def task_id(task: Any) -> str:
    tid = task.get("id") if isinstance(task, dict) else None
    return tid if isinstance(tid, str) and len(tid) <= MAX_ID_CHARS else ""


def rejected(ids: list[str], code: str, reason: str, retry_after_ms: int) -> list[Any]:
    return encode(Cmd.REJECTED, {"ids": ids, "code": code, "reason": reason,
                                 "retry_after_ms": retry_after_ms})


def str_list(value: Any, limit: int) -> TypeGuard[list[str]]:
    return (isinstance(value, list) and 0 < len(value) <= limit
            and all(isinstance(v, str) and v for v in value))


def check_versions(versions: Any) -> None:
    if not isinstance(versions, list):
        raise DecodeError("header-field:versions")
    if not any(v in SUPPORTED_VERSIONS for v in versions if isinstance(v, int)):
        raise Refused("version", "version", f"no common version; supported: "
                      f"{list(SUPPORTED_VERSIONS)}")


def dlq_ids(header: dict[str, Any], *, allow_none: bool) -> list[str] | None:
    """The `ids` a DLQ command names; None means all (`all: true`, or nothing for a list)."""
    ids, everything = header.get("ids"), header.get("all")
    if ids is None:
        if everything is True or allow_none:
            return None
        raise Refused("invalid", "dlq-without-ids", "name the ids, or set all: true")
    if not isinstance(ids, list) or not all(type(i) is str for i in ids):
        raise DecodeError("header-field:ids")
    return ids


def decision_ok(d: Any) -> bool:
    # exact type checks: cheaper than isinstance, and they refuse bool for int
    if type(d) is not dict:
        return False
    status = d.get("status")
    return (type(d.get("task")) is str and type(d.get("attempt")) is int
            and type(status) is str and status in STATUSES)
