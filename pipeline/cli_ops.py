"""Operator commands: config show, status, publish, tail, unblock, doctor, keys.

Output: tables and colour on a terminal (rich), plain aligned text when piped, and `--json`
where a script wants the figures. Each command is a short `cmd_*` function; rendering lives
in small helpers below it. Registered through `pipeline.cli.COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.config import Settings


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


# -- registration ------------------------------------------------------------------------------
def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration: show the effective settings")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="every setting, its value and where it came from")
    show.add_argument("--json", action="store_true")
    show.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE")
    show.set_defaults(func=cmd_config_show)
