"""`pipeline audit verify|tail`: check a journal's hash chain; show recent decisions.

`verify` is the engine's own check (checksums and the blake3 chain, record by record).
`tail` reads records in the byte format of docs/JOURNAL.md (formats 1 and 2) without
verifying them (run `verify` for that) and prints the latest decisions readably.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import protocol as proto
from pipeline.errors import DecodeError

MAGIC = b"PLJRNL01"
HEADER = struct.Struct("<III32s")  # len, !len, crc32, prev hash


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check or read the sink's journal")
    cmds = audit.add_subparsers(dest="audit_command", required=True)
    p = cmds.add_parser("verify", help="check checksums and the hash chain")
    p.add_argument("journal", help="the sink's journal directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
    p = cmds.add_parser("tail", help="show the latest decisions")
    p.add_argument("journal", help="the sink's journal directory")
    p.add_argument("-n", "--lines", type=int, default=20)
    p.add_argument("--task", action="append", default=None, metavar="ID",
                   help="only the decisions of this task id (repeatable): e.g. to see whether "
                        "a task dead-lettered by the de-duplication horizon had committed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tail)


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline._engine import verify_journal

    if not Path(args.journal).is_dir():
        print(f"no journal directory at {args.journal}", file=sys.stderr)
        return 2
    ok, bad, reason = verify_journal(args.journal)
    if args.json:
        print(json.dumps({"records_ok": ok, "first_bad": bad, "reason": reason}))
    elif bad is None:
        print(f"journal OK: {ok} records, hash chain intact")
    else:
        print(f"journal BROKEN at record {bad}: {reason} ({ok} records before it are sound)")
    return 0 if bad is None else 1


def read_records(journal: Path) -> Iterator[list[Any]]:
    """Payloads of every complete record, in order (no verification)."""
    for seg in sorted(journal.glob("*.seg")):
        data = seg.read_bytes()
        if not data.startswith(MAGIC):
            return
        pos = len(MAGIC)
        while pos + HEADER.size <= len(data):
            length, inv, _crc, _prev = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if length ^ 0xFFFFFFFF != inv or end > len(data):
                return
            try:
                yield proto.unpack(data[pos + HEADER.size:end])
            except DecodeError:
                return
            pos = end


def read_decisions(journal: Path) -> Iterator[dict[str, Any]]:
    """Every journalled decision, oldest first, as a readable row."""
    for payload in read_records(journal):
        if len(payload) == 10:  # format 1: one decision a record
            yield _row(payload[0], *payload[1:])
            continue
        ts_us, entries = payload[0], payload[1]
        for entry in entries:
            if len(entry) == 2:  # a plain commit: [version, update]
                yield _row(ts_us, "committed", entry[0], "", None, None, None, False, [],
                           entry[1])
            else:
                yield _row(ts_us, *entry)


def _row(ts_us: int, status: str, version: int, reason: str, rule: str | None,
         level: str | None, error: dict[str, Any] | None, blocked: bool, _notes: Any,
         update: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(ts_us / 1e6, UTC).isoformat(timespec="milliseconds"),
        "status": status, "version": version, "task": update.get("task"),
        "process": update.get("process"), "worker": update.get("worker"),
        "keys": sorted([*update.get("data", {}), *update.get("heavy", {})]),
        "rule": rule, "level": level, "blocked": blocked,
        "reason": reason or (f"{error['type']}: {error['message']}" if error else ""),
    }


def cmd_tail(args: argparse.Namespace) -> int:
    journal = Path(args.journal)
    if not journal.is_dir():
        print(f"no journal directory at {args.journal}", file=sys.stderr)
        return 2
    rows_in = read_decisions(journal)
    if args.task:
        wanted = set(args.task)
        rows_in = (r for r in rows_in if r["task"] in wanted)
    rows = list(deque(rows_in, maxlen=args.lines))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"last {len(rows)} decisions in {journal}")
    for col in ("time", "version", "status", "process", "task", "keys", "rule", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        colour = {"committed": "green", "rejected": "red", "failed": "yellow"}.get(r["status"])
        table.add_row(r["time"], str(r["version"] or ""), f"[{colour}]{r['status']}[/]",
                      r["process"], r["task"], ",".join(r["keys"]), r["rule"] or "",
                      r["reason"])
    Console().print(table)
    return 0
