"""Wire protocol v1: the one module that knows how messages look on the wire.

Frame layout (see docs/PROTOCOL.md for every field)::

    frame 0   2 bytes: version (u8 = 1), command (u8)
    frame 1   msgpack map: the header
    frame 2+  optional raw blobs (heavy arrays crossing hosts)

A ROUTER socket prepends the peer identity; `split_envelope` takes it off. Everything here is
pure: encode to a list of frames, decode frames to a `Message`, or raise `DecodeError` with a
short reason that receivers count. Nothing is ever pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from pipeline.errors import DecodeError

VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_HEADER_BYTES = 64 * 1024 * 1024
# UPDATE: frame 2 lists the heavy descriptors; blobs (heavy arrays from a worker on another
# host) start at this frame index, and a placeholder `{frame: i, ...}` names its frame.
FIRST_BLOB_FRAME = 3
PLACEHOLDER_KEYS = frozenset({"frame", "dtype", "shape", "strides"})


def is_placeholder(value: Any) -> bool:
    """A heavy value that stands for a blob frame of its UPDATE (`{frame, dtype, shape,
    strides}`; see docs/PROTOCOL.md, "Heavy arrays across hosts")."""
    return type(value) is dict and "frame" in value


class Cmd(IntEnum):
    SUBMIT = 0x01
    ACCEPTED = 0x02
    REJECTED = 0x03
    RESULT = 0x04
    READY = 0x10
    DISPATCH = 0x11
    HEARTBEAT = 0x12
    DISCONNECT = 0x13
    UPDATE = 0x20
    DECISION = 0x21
    COMMIT = 0x22
    SNAPSHOT_REQ = 0x30
    SNAPSHOT = 0x31
    HEAVY_REQ = 0x32
    HEAVY = 0x33
    HELLO = 0x40
    UNBLOCK = 0x41
    BLOCKED = 0x42
    UNBLOCKED = 0x43
    STATUS_REQ = 0x44
    STATUS = 0x45
    DLQ_LIST = 0x46
    DLQ_REQUEUE = 0x47
    DLQ_PURGE = 0x48
    DLQ = 0x49
    ERROR = 0x7F


_CMDS = {int(c): c for c in Cmd}
_PREFIX = {c: bytes((VERSION, int(c))) for c in Cmd}

# Required header fields and their types, per command. Extra fields are allowed (forward
# compatibility); missing or mistyped required ones make the message malformed.
SCHEMA: dict[Cmd, dict[str, type | tuple[type, ...]]] = {
    Cmd.SUBMIT: {"tasks": list},
    Cmd.ACCEPTED: {"ids": list},
    Cmd.REJECTED: {"ids": list, "code": str, "reason": str},
    Cmd.RESULT: {"decisions": list},
    Cmd.READY: {"credit": int},
    Cmd.DISPATCH: {"tasks": list},
    Cmd.HEARTBEAT: {},
    Cmd.DISCONNECT: {},
    Cmd.UPDATE: {"updates": list},
    Cmd.DECISION: {"decisions": list},
    Cmd.COMMIT: {"events": list},
    Cmd.SNAPSHOT_REQ: {},
    Cmd.SNAPSHOT: {"version": int, "state": dict},
    Cmd.HEAVY_REQ: {"key": str, "version": int},
    Cmd.HEAVY: {"key": str, "version": int, "dtype": str, "shape": list},
    Cmd.HELLO: {"role": str},
    Cmd.UNBLOCK: {"process": str},
    Cmd.BLOCKED: {"process": str, "reason": str},
    Cmd.UNBLOCKED: {"process": str},
    Cmd.STATUS_REQ: {},
    Cmd.STATUS: {"role": str},
    Cmd.DLQ_LIST: {},
    Cmd.DLQ_REQUEUE: {},
    Cmd.DLQ_PURGE: {},
    Cmd.DLQ: {"items": list, "affected": list, "total": int},
    Cmd.ERROR: {"code": str, "reason": str},
}

TASK_FIELDS: dict[str, type | tuple[type, ...]] = {"id": str, "process": str, "args": dict}


@dataclass(slots=True)
class Message:
    cmd: Cmd
    header: dict[str, Any]
    blobs: list[Any] = field(default_factory=list)


_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """msgpack-encode one value (bin type for bytes, str for text)."""
    data: bytes = _packer.pack(obj)
    return data


def unpack(data: bytes | memoryview) -> Any:
    """msgpack-decode one value with strict limits; raise DecodeError on any failure."""
    if len(data) > MAX_HEADER_BYTES:
        raise DecodeError("header-too-large")
    try:
        # unpackb bounds every str/bin/array/map length by the input's own size.
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise DecodeError("bad-msgpack") from exc


def encode(cmd: Cmd, header: dict[str, Any] | None = None, *blobs: Any) -> list[Any]:
    """Frames for one message (without any ROUTER envelope)."""
    return [_PREFIX[cmd], _packer.pack(header or {}), *blobs]


def encode_raw(cmd: Cmd, header_bytes: bytes, *blobs: Any) -> list[Any]:
    """Frames for a message whose header is already msgpack (e.g. produced by the engine)."""
    return [_PREFIX[cmd], header_bytes, *blobs]


def decode_prefix(frame: bytes | memoryview) -> Cmd:
    """Check frame 0 (version, command) and return the command."""
    if len(frame) != 2:
        raise DecodeError("bad-prefix")
    version, code = frame[0], frame[1]
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError("version")
    cmd = _CMDS.get(code)
    if cmd is None:
        raise DecodeError("unknown-command")
    return cmd


def decode(frames: list[Any]) -> Message:
    """Decode and validate one message (no envelope). Raises DecodeError(reason)."""
    if len(frames) < 2:
        raise DecodeError("too-few-frames")
    cmd = decode_prefix(_bytes(frames[0]))
    header = unpack(_bytes(frames[1]))
    if not isinstance(header, dict):
        raise DecodeError("header-not-map")
    check_fields(header, SCHEMA[cmd], "header")
    return Message(cmd, header, list(frames[2:]))


def check_fields(obj: dict[str, Any], schema: dict[str, Any], what: str) -> None:
    for name, typ in schema.items():
        value = obj.get(name)
        if value is None or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise DecodeError(f"{what}-field:{name}")


def check_task(task: Any) -> dict[str, Any]:
    """Validate one Task map from a SUBMIT; return it."""
    if not isinstance(task, dict):
        raise DecodeError("task-not-map")
    check_fields(task, TASK_FIELDS, "task")
    heavy = task.get("heavy")
    if heavy is not None and not isinstance(heavy, dict):
        raise DecodeError("task-field:heavy")
    return task


def pack_commit_index(ids: list[str], attempts: list[int], first_version: int) -> bytes:
    """Frame 2 of a DECISION or RESULT whose every decision is a plain commit (status
    `committed`, empty reason, nil rule and level, no error, not blocked), the versions
    being `first_version`, `first_version + 1`, ... in order: `[ids, attempts,
    first_version]`. It repeats what the header says, so a receiver can act on the commits
    without decoding the header (docs/PROTOCOL.md, "The commit index")."""
    return _packer.pack([ids, attempts, first_version])  # type: ignore[no-any-return]


def commit_index(frame: Any) -> tuple[list[str], list[int], int] | None:
    """The (ids, attempts, first version) of a commit index frame, or None when it is not
    a well-formed one (the receiver then decodes the header, which is authoritative)."""
    value = _triple(frame)
    if value is None:
        return None
    ids, attempts, first = value
    if (type(ids) is not list or type(attempts) is not list or type(first) is not int
            or not ids or len(ids) != len(attempts) or first < 1):
        return None
    for tid in ids:
        if type(tid) is not str:
            return None
    for attempt in attempts:
        if type(attempt) is not int:
            return None
    return ids, attempts, first


def pack_event_index(first_version: int, count: int, keys: list[str]) -> bytes:
    """Frame 2 of a COMMIT: `[first_version, count, keys]`, the message's events being
    versions `first_version` .. `first_version + count - 1` and `keys` naming every key
    they write (it may name more). A replica that keeps only some keys current can take
    the versions without decoding the header when none of its keys is named
    (docs/PROTOCOL.md, "The event index")."""
    return _packer.pack([first_version, count, keys])  # type: ignore[no-any-return]


def event_index(frame: Any) -> tuple[int, int, list[str]] | None:
    """The (first version, count, keys) of an event index frame, or None when it is not a
    well-formed one (the receiver then decodes the header, which is authoritative)."""
    value = _triple(frame)
    if value is None:
        return None
    first, count, keys = value
    if type(first) is not int or type(count) is not int or type(keys) is not list \
            or first < 1 or count < 1:
        return None
    for key in keys:
        if type(key) is not str:
            return None
    return first, count, keys


def _triple(frame: Any) -> list[Any] | None:
    """An index frame's msgpack array of three fields, or None."""
    try:
        value = unpack(_bytes(frame))
    except DecodeError:
        return None
    return value if type(value) is list and len(value) == 3 else None


def split_envelope(frames: list[Any]) -> tuple[bytes, list[Any]]:
    """Split a ROUTER-received message into (identity, frames)."""
    if len(frames) < 3:
        raise DecodeError("too-few-frames")
    ident = _bytes(frames[0])
    return (ident if isinstance(ident, bytes) else ident.tobytes()), frames[1:]


def error(code: str, reason: str) -> list[Any]:
    header = {"code": code, "reason": reason, "supported": list(SUPPORTED_VERSIONS)}
    return encode(Cmd.ERROR, header)


def _bytes(frame: Any) -> bytes | memoryview:
    # zmq.Frame exposes .bytes; plain bytes and memoryviews pass through (no copy).
    if isinstance(frame, bytes | memoryview):
        return frame
    data: bytes = frame.bytes
    return data
