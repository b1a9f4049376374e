"""`pipeline dlq`: inspect and act on the broker's dead-letter queue.

    pipeline dlq list                 every dead letter: id, process, attempt, age, reason
    pipeline dlq show ID              one dead letter in full (its task and arguments)
    pipeline dlq requeue ID... | --all   queue them again (attempt + 1)
    pipeline dlq purge ID... | --all     forget them

Talks DLQ_LIST / DLQ_REQUEUE / DLQ_PURGE to the broker's control socket (docs/PROTOCOL.md).
Tables on a terminal (rich), plain aligned text when piped, `--json` for scripts. Exit code
0 on success, 1 when the broker cannot be reached or refuses, 2 when an id is unknown.
Registered through `pipeline.cli.COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pipeline.cli_ops import client_context, emit_json, request, table
from pipeline.config import Settings
from pipeline.errors import DecodeError, PipelineError
from pipeline.protocol import Cmd

REASON_CHARS = 80


def ask(settings: Settings, cmd: Cmd, header: dict[str, Any], timeout_s: float
        ) -> dict[str, Any]:
    """One DLQ request to the broker's control socket; the DLQ reply's header."""
    with client_context(settings) as ctx:
        return request(ctx, settings.endpoints().control, cmd, header, timeout_s)


def _targets(args: argparse.Namespace) -> dict[str, Any]:
    if args.all:
        return {"all": True}
    if not args.ids:
        raise PipelineError("name the dead letters to act on, or pass --all")
    return {"ids": list(args.ids)}


# -- commands ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    reply = ask(args.settings, Cmd.DLQ_LIST, {}, args.timeout)
    if args.json:
        emit_json(reply)
        return 0
    now = time.time()
    rows = [(d["id"], d["process"], d["attempt"], _age(now - d["at"]), _short(d["reason"]))
            for d in reply["items"]]
    table(f"dead letters ({reply['total']})", ["id", "process", "attempt", "age", "reason"],
          rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    reply = ask(args.settings, Cmd.DLQ_LIST, {"ids": [args.id]}, args.timeout)
    if not reply["items"]:
        print(f"no dead letter {args.id!r}")
        return 2
    dead = reply["items"][0]
    if args.json:
        emit_json(dead)
        return 0
    task = dead.get("task", {})
    rows = [("id", dead["id"]), ("process", dead["process"]), ("attempt", dead["attempt"]),
            ("failures", dead.get("failures")), ("reason", dead["reason"]),
            ("dead since", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead["at"]))),
            ("args", task.get("args")), ("heavy", sorted(task.get("heavy") or {}) or None)]
    table(f"dead letter {dead['id']}", ["field", "value"], rows)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    reply = ask(args.settings, Cmd.DLQ_REQUEUE, _targets(args), args.timeout)
    return _report(args, reply, "requeued")


def cmd_purge(args: argparse.Namespace) -> int:
    reply = ask(args.settings, Cmd.DLQ_PURGE, _targets(args), args.timeout)
    return _report(args, reply, "purged")


def _report(args: argparse.Namespace, reply: dict[str, Any], verb: str) -> int:
    done = reply["affected"]
    missing = [] if args.all else [i for i in args.ids if i not in set(done)]
    if args.json:
        emit_json({verb: done, "missing": missing, "total": reply["total"]})
    else:
        print(f"{verb} {len(done)} dead letter(s); {reply['total']} left")
        for tid in missing:
            print(f"  not a dead letter: {tid}")
    return 2 if missing else 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _short(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def _run(func: Any) -> Any:
    """Wrap a command: a broker that cannot be reached or refuses is exit code 1."""
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (PipelineError, DecodeError) as exc:
            print(f"pipeline dlq: {exc}")
            return 1
    return wrapped


# -- parser ------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    from pipeline.cli import _endpoint_args

    p = sub.add_parser("dlq", help="dead-letter queue: list, show, requeue, purge")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    for name, func, help_text in (
            ("list", cmd_list, "every dead letter, oldest first"),
            ("show", cmd_show, "one dead letter in full"),
            ("requeue", cmd_requeue, "queue dead letters again (attempt + 1)"),
            ("purge", cmd_purge, "forget dead letters")):
        c = dsub.add_parser(name, help=help_text)
        _endpoint_args(c)
        c.add_argument("--json", action="store_true")
        c.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
        if name == "show":
            c.add_argument("id")
        elif name in ("requeue", "purge"):
            c.add_argument("ids", nargs="*", metavar="ID")
            c.add_argument("--all", action="store_true", help="every dead letter")
        c.set_defaults(func=_run(func))
