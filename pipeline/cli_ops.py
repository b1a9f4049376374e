"""Operator commands: config show, status, publish, tail, unblock, doctor, keys.

Output: tables and colour on a terminal (rich), plain aligned text when piped, and `--json`
where a script wants the figures. Each command is a short `cmd_*` function; rendering lives
in small helpers below it. Registered through `pipeline.cli.COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from pipeline import protocol as proto
from pipeline.config import Settings
from pipeline.errors import DecodeError, PipelineError, TaskTimeout
from pipeline.protocol import Cmd
from pipeline.security import client_context


# -- output ------------------------------------------------------------------------------------
def is_tty() -> bool:
    return sys.stdout.isatty()


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str), flush=True)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; tab-free aligned text when piped."""
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(_cell(v) for v in r))
        Console().print(t)
        return
    print(f"{title}:")
    print(plain_table(columns, rows), flush=True)


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(columns), *[[_cell(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join("  " + line for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# -- config show -------------------------------------------------------------------------------
def cmd_config_show(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    if args.json:
        emit_json(settings.to_json())
        return 0
    print(f"configuration file: {settings.path or '(none)'}")
    table("effective configuration", ["setting", "value", "source"],
          [(f"{s}.{k}", v, src) for s, k, v, src in settings.rows()])
    return 0


# -- talking to the broker and the sink --------------------------------------------------------
def request(ctx: zmq.Context[Any], endpoint: str, cmd: Cmd, header: dict[str, Any],
            timeout_s: float) -> dict[str, Any]:
    """One request on a fresh DEALER; the reply's header, or PipelineError on timeout."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(proto.encode(cmd, header))
        if not sock.poll(int(timeout_s * 1000)):
            raise TaskTimeout(f"no answer from {endpoint} within {timeout_s}s")
        msg = proto.decode(sock.recv_multipart())
    finally:
        sock.close()
    if msg.cmd is Cmd.ERROR:
        raise PipelineError(f"{endpoint} answered ERROR {msg.header.get('code')}: "
                            f"{msg.header.get('reason')}")
    return msg.header


def fetch_status(settings: Settings, timeout_s: float) -> dict[str, Any]:
    """STATUS from the broker (control) and the sink (sync); an unreachable one is an error."""
    ep = settings.endpoints()
    out: dict[str, Any] = {"time": time.time()}
    with client_context(settings) as ctx:
        for role, endpoint in (("broker", ep.control), ("sink", ep.sync)):
            try:
                out[role] = request(ctx, endpoint, Cmd.STATUS_REQ, {}, timeout_s)
            except (PipelineError, DecodeError) as exc:
                out[role] = {"role": role, "error": str(exc)}
    return out


# -- status ------------------------------------------------------------------------------------
RATE_COUNTERS = {"submitted/s": ("broker", "accepted"), "dispatched/s": ("broker", "dispatched"),
                 "committed/s": ("broker", "decided.committed"),
                 "updates/s": ("sink", "updates")}


def rates(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, float]:
    """Per-second rates of the main counters between two STATUS samples."""
    if before is None:
        return {}
    dt = now["time"] - before["time"]
    if dt <= 0:
        return {}
    out = {}
    for name, (role, counter) in RATE_COUNTERS.items():
        a = before.get(role, {}).get("counters", {}).get(counter, 0)
        b = now.get(role, {}).get("counters", {}).get(counter, 0)
        if "error" not in before[role] and "error" not in now[role]:
            out[name] = round((b - a) / dt, 1)
    return out


def status_lines(snap: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """The status view as tables: (title, columns, rows)."""
    b, s = snap["broker"], snap["sink"]
    overview = [["broker", b.get("error", "up")], ["sink", s.get("error", "up")]]
    if "error" not in b:
        overview += [["tasks held", b["tasks"]], ["in flight", b["in_flight"]],
                     ["delayed retries", b["delayed"]], ["parked", b["parked"]],
                     ["dead letters", b["dead_letters"]], ["workers", len(b["workers"])]]
    if "error" not in s:
        dedup = s.get("dedup", {})
        overview += [["state version", s["version"]],
                     ["journal bytes", s.get("journal_bytes", "-")],
                     ["dedup entries", dedup.get("entries", "-")],
                     ["dedup forgotten", dedup.get("forgotten", "-")]]
    overview += [[k, v] for k, v in snap.get("rates", {}).items()]
    tables: list[tuple[str, list[str], list[list[Any]]]] = [
        ("pipeline", ["what", "value"], overview)]
    if "error" not in b:
        tables += _broker_tables(b)
    return tables


def _broker_tables(b: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    queues = [[p, n] for p, n in sorted(b["queues"].items())]
    workers = [[w["name"], w["in_flight"], w["credit"], ",".join(w["processes"])]
               for w in b["workers"]]
    blocked = [[x["process"], x["reason"]] for x in b["blocked"]]
    return [("queues", ["process", "queued"], queues or [["(none)", 0]]),
            ("workers", ["worker", "in flight", "credit", "processes"], workers),
            ("blocked processes", ["process", "reason"], blocked or [["(none)", ""]])]


def cmd_status(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    snap = fetch_status(settings, args.timeout)
    if args.once:
        return _print_status(snap, args.json)
    return _live_status(settings, args, snap)


def _print_status(snap: dict[str, Any], as_json: bool) -> int:
    if as_json:
        emit_json(snap)
    else:
        for title, columns, rows in status_lines(snap):
            table(title, columns, rows)
    return 0 if all("error" not in snap[r] for r in ("broker", "sink")) else 1


def _live_status(settings: Settings, args: argparse.Namespace, snap: dict[str, Any]) -> int:
    """Refresh every --interval seconds until Ctrl-C (or --count refreshes)."""
    from pipeline.cli import stop_on_signals

    stop, shown, before = stop_on_signals(), 0, None
    while True:
        snap["rates"] = rates(before, snap)
        if is_tty() and not args.json:
            _render_live(snap)
        else:
            _print_status(snap, args.json)
        shown += 1
        if stop.wait(args.interval) or (args.count and shown >= args.count):
            return 0
        before, snap = snap, fetch_status(settings, args.timeout)


def _render_live(snap: dict[str, Any]) -> None:
    from rich.console import Console, Group
    from rich.table import Table

    parts = []
    for title, columns, rows in status_lines(snap):
        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(_cell(v) for v in r))
        parts.append(t)
    console = Console()
    console.clear()
    console.print(Group(*parts))
    console.print(f"[dim]{time.strftime('%H:%M:%S')}  Ctrl-C to stop[/dim]")


# -- publish -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    decisions: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def read_tasks(path: Path) -> list[dict[str, Any]]:
    """One task per line: {"process": str, "args": {...}, "id": optional str}."""
    tasks = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            tasks.append(_task_line(line, f"{path}:{n}"))
    return tasks


def _task_line(line: str, where: str) -> dict[str, Any]:
    try:
        task = json.loads(line)
    except ValueError as exc:
        raise PipelineError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(task, dict) or not isinstance(task.get("process"), str):
        raise PipelineError(f"{where}: want {{\"process\": str, \"args\": {{...}}}}")
    args = task.get("args", {})
    if not isinstance(args, dict):
        raise PipelineError(f"{where}: args must be an object")
    tid = task.get("id")
    if tid is not None and not isinstance(tid, str):
        raise PipelineError(f"{where}: id must be a string")
    return {"process": task["process"], "args": args, "id": tid}


def cmd_publish(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    try:
        tasks = read_tasks(Path(args.file))
    except (OSError, PipelineError) as exc:
        print(f"pipeline publish: {exc}", file=sys.stderr)
        return 2
    outcome = _publish(settings, tasks, args.timeout)
    _report_publish(outcome, args.json)
    return 1 if outcome.missing else 0


def _publish(settings: Settings, tasks: list[dict[str, Any]], timeout_s: float) -> Outcome:
    from pipeline.producer import Producer

    outcome = Outcome()
    with client_context(settings) as ctx, Producer(settings.endpoints().frontend,
                                                    ctx=ctx) as producer, _progress(
            len(tasks)) as advance:
        handles = [producer.submit(t["process"], task_id=t["id"], **t["args"]) for t in tasks]
        try:
            for d in producer.as_completed(handles, timeout=timeout_s):
                outcome.decisions.append(_decision_json(d))
                advance()
        except TaskTimeout:
            done = {d["task"] for d in outcome.decisions}
            outcome.missing = [h.id for h in handles if h.id not in done]
        except PipelineError as exc:
            print(f"pipeline publish: {exc}", file=sys.stderr)
            done = {d["task"] for d in outcome.decisions}
            outcome.missing = [h.id for h in handles if h.id not in done]
    return outcome


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar (on stderr) on a terminal; nothing when piped."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task("deciding", total=total)
        yield lambda: bar.advance(job)


def _decision_json(d: Any) -> dict[str, Any]:
    return {"task": d.task, "process": d.process, "status": str(d.status.value),
            "version": d.version, "reason": d.reason, "rule": d.rule, "level": d.level}


def _report_publish(outcome: Outcome, as_json: bool) -> None:
    counts: dict[tuple[str, str], int] = {}
    for d in outcome.decisions:
        key = (d["process"], d["status"])
        counts[key] = counts.get(key, 0) + 1
    if as_json:
        emit_json({"decided": len(outcome.decisions), "missing": outcome.missing,
                   "by_status": _by_status(outcome), "decisions": outcome.decisions})
        return
    rows = [[p, st, n] for (p, st), n in sorted(counts.items())]
    table("decisions", ["process", "status", "tasks"], rows)
    reasons = {(d["status"], d["reason"]) for d in outcome.decisions if d["reason"]}
    if reasons:
        table("reasons", ["status", "reason"], sorted(reasons)[:20])
    if outcome.missing:
        print(f"{len(outcome.missing)} tasks without a decision before the timeout",
              file=sys.stderr)


def _by_status(outcome: Outcome) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in outcome.decisions:
        out[d["status"]] = out.get(d["status"], 0) + 1
    return out


# -- tail --------------------------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    from pipeline.cli import stop_on_signals
    from pipeline.subscriber import Subscriber

    settings: Settings = args.settings
    ep, stop, seen = settings.endpoints(), stop_on_signals(), 0
    with client_context(settings) as ctx, Subscriber(ep.events, ep.sync, ctx=ctx) as sub:
        try:
            sub.wait_connected(timeout=args.timeout)
        except TaskTimeout:
            print(f"pipeline tail: the sink at {ep.sync} does not answer", file=sys.stderr)
            return 1
        print(f"tailing commits after version {sub.version}", file=sys.stderr, flush=True)
        while not stop.is_set() and not (args.count and seen >= args.count):
            try:
                change = sub.next(timeout=0.2)
            except TaskTimeout:
                continue
            _print_change(change, args.json)
            seen += 1
    return 0


def _print_change(change: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"version": change.version, "task": change.task,
                          "process": change.process, "values": change.values,
                          "resync": change.resync}, default=repr), flush=True)
        return
    values = " ".join(f"{k}={_short(v)}" for k, v in change.values.items())
    label = "resync" if change.resync else change.process
    print(f"v{change.version} {label} {change.task} {values}", flush=True)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- unblock -----------------------------------------------------------------------------------
def cmd_unblock(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    with client_context(settings) as ctx:
        try:
            reply = request(ctx, settings.endpoints().sync, Cmd.UNBLOCK,
                            {"process": args.process}, args.timeout)
        except (PipelineError, DecodeError) as exc:
            print(f"pipeline unblock: {exc}", file=sys.stderr)
            return 1
    was = bool(reply.get("unblocked"))
    if args.json:
        emit_json({"process": args.process, "unblocked": was})
    else:
        print(f"process {args.process} " + ("unblocked" if was else "was not blocked"))
    return 0


# -- doctor ------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.heavy.doctor import doctor

    settings: Settings = args.settings
    findings = doctor(min_bytes=settings.get("heavy", "min_shm_bytes"),
                      namespace=settings.get("heavy", "namespace"))
    failed = any(not f.ok for f in findings)
    if args.json:
        emit_json({"ok": not failed, "findings": [
            {"check": f.check, "level": f.level, "message": f.message, "fix": f.fix}
            for f in findings]})
    else:
        _print_findings(findings)
    return 1 if failed else 0


def _print_findings(findings: list[Any]) -> None:
    colour = {"ok": "green", "warn": "yellow", "error": "red"}
    if is_tty():
        from rich.console import Console

        console = Console()
        for f in findings:
            console.print(f"[{colour.get(f.level, 'white')}]{f.level:>5}[/] {f.check}: "
                          f"{f.message}", highlight=False)
            if f.fix and f.level != "ok":
                console.print(f"       fix: {f.fix}", highlight=False)
        return
    for f in findings:
        print(f"{f.level:>5} {f.check}: {f.message}")
        if f.fix and f.level != "ok":
            print(f"       fix: {f.fix}")


# -- keys --------------------------------------------------------------------------------------
def cmd_keys_generate(args: argparse.Namespace) -> int:
    from pipeline.security import generate_keys

    public, secret = generate_keys(args.dir, args.name)
    key = public.read_text().split('public-key = "')[1].split('"')[0]
    if args.json:
        emit_json({"name": args.name, "public": str(public), "secret": str(secret),
                   "public_key": key})
        return 0
    print(f"public key  {public}  (a client's goes into the servers' allow directory; "
          "the server's is every client's server_public)")
    print(f"secret key  {secret}  (mode 0600: stays on this machine)")
    print(f"z85         {key}")
    return 0


# -- registration ------------------------------------------------------------------------------
def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration: show the effective settings")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="every setting, its value and where it came from")
    show.add_argument("--json", action="store_true")
    show.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE")
    show.set_defaults(func=cmd_config_show)
    _register_ops(sub)


def _register_ops(sub: Any) -> None:
    from pipeline.cli import _endpoint_args

    p = sub.add_parser("status", help="live view of queues, workers, rates, blocked, journal")
    _endpoint_args(p)
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0: never)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("publish", help="publish tasks from a JSON-lines file")
    _endpoint_args(p)
    p.add_argument("file", help='one task a line: {"process": ..., "args": {...}}')
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for all decisions")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("tail", help="print committed changes as they happen")
    _endpoint_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to reach the sink")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("unblock", help="unblock a process the audit blocked")
    _endpoint_args(p)
    p.add_argument("process")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_unblock)

    p = sub.add_parser("keys", help="CurveZMQ keys for tcp:// deployments")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    g = ksub.add_parser("generate", help="write DIR/NAME.key and DIR/NAME.key_secret")
    g.add_argument("dir")
    g.add_argument("--name", default="server",
                   help="the key's name (the allow-list identity of a client)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("doctor", help="check /dev/shm for the heavy zone; exit 1 on a failure")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE")
    p.add_argument("--namespace", dest="heavy.namespace")
    p.add_argument("--min-shm-bytes", type=int, dest="heavy.min_shm_bytes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
